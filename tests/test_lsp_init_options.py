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


async def test_reload_after_a_settings_change_is_reported_with_progress(tiny_model_dir: Path, tmp_path: Path) -> None:
    import asyncio
    import shutil

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    client = await start_server(["--model", str(tiny_model_dir), "--device", "cpu"])
    try:
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codefill": {"modelPath": str(other)}}))
        token = "codefill/load-model-2"
        for _ in range(200):
            reports = client.progress_reports.get(token, [])
            if any(isinstance(r, types.WorkDoneProgressEnd) for r in reports):
                break
            await asyncio.sleep(0.1)
        kinds = [type(r).__name__ for r in client.progress_reports.get(token, [])]
        assert kinds[0] == "WorkDoneProgressBegin" and kinds[-1] == "WorkDoneProgressEnd"
    finally:
        await stop_server(client)


async def test_a_steps_change_takes_effect_with_the_next_fill_without_a_reload(tmp_path: Path) -> None:
    """`steps` goes with each fill: changing it reloads nothing (no second load reported) and the next fill, even
    one the server had kept (for the same text and cursor), is asked for with the new value."""
    import asyncio
    import json

    from lsp_fixtures.harness import FAKE_ENGINE, inline, open_doc

    calls = tmp_path / "calls.jsonl"
    client = await start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0"],
                                init_options={"steps": 6, "prefetch": False}, env={"CODEFILL_FAKE_LOG": str(calls)})
    try:
        uri = "file:///steps.py"
        open_doc(client, uri, '# codefill-fake: "return a + b"\ndef f(a, b):\n    \n')
        assert (await inline(client, uri, 2, 4)).items[0].insert_text == "return a + b"
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codefill": {"steps": 9, "prefetch": False}}))
        assert (await inline(client, uri, 2, 4)).items[0].insert_text == "return a + b"  # asked again, not reused
        asked = [json.loads(line)["steps"] for line in calls.read_text().splitlines()]
        assert asked == [6, 9], asked
        await asyncio.sleep(0.5)  # a reload would have been reported by now
        assert "codefill/load-model-2" not in client.progress_reports
    finally:
        await stop_server(client)
