"""Settings sent in initializationOptions decide the first model load, not only later ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol import types

from lsp_fixtures.harness import start_server, stop_server

pytestmark = pytest.mark.asyncio


async def test_model_path_from_initialization_options_is_loaded(tiny_model_dir: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    # The command line names a directory that does not exist; the client's setting must win.
    client = await start_server(
        ["--model", str(tmp_path / "missing"), "--device", "cpu", "-v", "--log-file", str(log_file)],
        init_options={"modelPath": str(tiny_model_dir)},
    )
    try:
        errors = [m.message for m in client.messages if m.type == types.MessageType.Error]
        assert not errors
        assert f"engine loaded: {tiny_model_dir}" in log_file.read_text()
    finally:
        await stop_server(client)
