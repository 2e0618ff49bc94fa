"""The language server's client of a shared engine (lsp_server/remote_engine.py): an engine that is not there at
start-up is waited for, a lost one is brought back and, if it stays away, shown to the user once.

The engines are engine.serve.EngineServer in this process (real sockets, a scripted engine), except in the last
test, which runs `python -m lsp_server` and `python -m engine.cli serve` themselves.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from lsp_fixtures.harness import FAKE_ENGINE, REPO, inline, open_doc, server_env, start_server, stop_server
from lsprotocol import types

from engine.hosting import EngineHost
from engine.serve import EngineServer
from engine.wire import Address
from lsp_server import remote_engine
from lsp_server.engine_client import EngineLoadFailed, EngineUnavailable
from lsp_server.remote_engine import RemoteEngine

FILL = ('# codefill-fake: "ok"\nx = ', "\n", 8, False)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch) -> None:
    monkeypatch.setattr(remote_engine, "RESTART_BACKOFF_S", (0.05, 0.2))


def serve_at(path: Path, model: str | None = None, load: bool = True) -> EngineServer:
    host = EngineHost(model=model, factory=FAKE_ENGINE)
    if load:
        host.load()
    server = EngineServer(host, Address("unix", path=str(path)))
    server.start()
    return server


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)
    return value


def test_an_engine_that_is_not_there_at_start_up_is_joined_when_it_comes(tmp_path) -> None:
    notices: list[str] = []
    remote = RemoteEngine(f"unix:{tmp_path / 'e.sock'}", notify=lambda level, message: notices.append(message))
    server = None
    try:
        with pytest.raises(EngineUnavailable, match="no engine at"):
            remote.load()  # the caller shows this one
        assert not remote.ready and remote.state == "restarting"
        time.sleep(0.5)  # a few tries with nobody there
        server = serve_at(tmp_path / "e.sock")
        wait_for(lambda: remote.ready, 10, "the client to find the engine")
        assert remote.fill(*FILL).text == "ok"
        assert notices == []  # nothing beyond the caller's one message
    finally:
        remote.close()
        if server is not None:
            server.stop()


def test_a_model_that_cannot_load_is_not_retried(tmp_path) -> None:
    server = serve_at(tmp_path / "e.sock", model="/nowhere/broken-model")
    remote = RemoteEngine(f"unix:{tmp_path / 'e.sock'}")
    try:
        with pytest.raises(EngineLoadFailed):
            remote.load()
        assert remote.state == "new"  # final: no background tries
    finally:
        remote.close()
        server.stop()


def test_a_lost_engine_that_stays_away_is_shown_once(tmp_path) -> None:
    notices: list[tuple[int, str]] = []
    server = serve_at(tmp_path / "e.sock")
    remote = RemoteEngine(f"unix:{tmp_path / 'e.sock'}", notify=lambda *notice: notices.append(notice))
    try:
        remote.load()
        server.stop()  # what `kill -9` of an engine you started looks like from here
        wait_for(lambda: notices, 10, "a message about the lost engine")
        time.sleep(1)  # more tries (0.2 s apart), no more messages
        assert len(notices) == 1 and "went away" in notices[0][1] and "not back" in notices[0][1]
        server = serve_at(tmp_path / "e.sock")
        wait_for(lambda: remote.ready, 10, "the engine back")
        assert remote.fill(*FILL).text == "ok" and len(notices) == 1
    finally:
        remote.close()
        server.stop()


def test_a_slow_load_is_not_blamed_on_an_engine_that_exited_earlier(tmp_path) -> None:
    """The engine this client once started has exited; the one it reaches now is another: no "exited with status"."""
    server = serve_at(tmp_path / "e.sock", load=False)  # stays "loading"
    remote = RemoteEngine(f"unix:{tmp_path / 'e.sock'}", load_timeout=0.3)
    remote.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(9)"])
    remote.process.wait()
    try:
        with pytest.raises(EngineUnavailable) as caught:
            remote.load()
        assert "still loading" in str(caught.value) and "exited" not in str(caught.value)
    finally:
        remote.close()
        server.stop()


async def test_a_window_started_before_its_engine_fills_once_the_engine_is_up(tmp_path) -> None:
    """`codefill-lsp --engine unix:PATH` before `codefill serve --unix PATH`: one message, then fills."""
    sock = tmp_path / "later.sock"
    client = await start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0", "--engine", f"unix:{sock}"])
    engine = None
    try:
        errors = [m.message for m in client.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1 and "cannot be reached" in errors[0] and "codefill serve" in errors[0], errors
        engine = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--unix", str(sock),
                                   "--engine-factory", FAKE_ENGINE], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=server_env(), cwd=REPO)
        uri = "file:///later.py"
        open_doc(client, uri, '# codefill-fake: "later"\nx = \n')
        deadline = time.monotonic() + 60  # the window's backoff: 0.5 s doubling, 30 s at most
        while (result := await inline(client, uri, 1, 4)) is None:
            assert time.monotonic() < deadline, "no fill after the engine started"
            await asyncio.sleep(0.2)
        assert result.items[0].insert_text == "later"
        assert len([m for m in client.messages if m.type == types.MessageType.Error]) == 1
    finally:
        await stop_server(client)
        if engine is not None:
            engine.terminate()
            engine.wait(10)
