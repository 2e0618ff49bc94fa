"""Start-up, model loading, settings, logs, debounce, and raw protocol abuse, each on a fresh server process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

from lsp_fixtures.harness import (
    FAKE_ENGINE,
    PROGRESS_TOKEN,
    REPO,
    change_doc,
    fill_command,
    inline,
    open_doc,
    rng,
    server_env,
    start_server,
    stop_server,
    wait_for_progress_end,
)

FAKE = ["--engine-factory", FAKE_ENGINE]


def test_server_modules_do_not_import_torch() -> None:
    code = "import sys, lsp_server.cli, lsp_server.server; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=server_env(), cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr


async def test_initialize_is_fast_and_requests_before_the_model_are_null() -> None:
    client = await start_server(FAKE + ["--debounce-ms", "0"], env={"CODEFILL_FAKE_LOAD_SECONDS": "2"},
                                wait_ready=False)
    try:
        # From spawning the interpreter to the answer: ~0.6 s of it is importing lsprotocol, none is torch
        # (loading torch and the model first would take several seconds more). The bound leaves room for a
        # loaded CI machine; the start-up figure itself is measured by `codefill bench lsp`.
        assert client.init_seconds < 5.0
        uri = "file:///early.py"
        open_doc(client, uri, '# codefill-fake: "1"\nx = \n')
        started = time.monotonic()
        assert await inline(client, uri, 1, 4) is None
        assert time.monotonic() - started < 0.5  # answered at once, not after the load
        end = await wait_for_progress_end(client)
        reports = client.progress_reports[PROGRESS_TOKEN]
        assert isinstance(reports[0], types.WorkDoneProgressBegin) and end.message == "model ready"
        result = await inline(client, uri, 1, 4)
        assert result is not None and result.items[0].insert_text == "1"
    finally:
        await stop_server(client)


async def test_a_fill_command_during_the_load_waits_for_the_model() -> None:
    """Ghost text is answered null while the model loads; a fill asked for by hand waits for it instead."""
    client = await start_server(FAKE + ["--debounce-ms", "0"], env={"CODEFILL_FAKE_LOAD_SECONDS": "1.5"},
                                wait_ready=False)
    try:
        uri = "file:///waiting.py"
        open_doc(client, uri, '# codefill-fake: "a * b"\ndef mul(a, b):\n    return a + b\n')
        result = await fill_command(client, uri, (2, 11), (2, 16))
        assert result == {"applied": True, "text": "a * b"}
    finally:
        await stop_server(client)


async def test_broken_model_is_one_error_message_and_the_server_lives() -> None:
    client = await start_server(FAKE + ["--model", "/nowhere/broken-model"])
    try:
        errors = [m for m in client.messages if m.type == types.MessageType.Error]
        assert len(errors) == 1 and "CheckpointError" in errors[0].message
        uri = "file:///nomodel.py"
        open_doc(client, uri, '# codefill-fake: "1"\nx = \n')
        assert await inline(client, uri, 1, 4) is None
        assert len([m for m in client.messages if m.type == types.MessageType.Error]) == 1
        result = await fill_command(client, uri, (1, 0), (1, 3))
        assert result["applied"] is False and "CheckpointError" in result["reason"]  # says why, not "no fill"
    finally:
        await stop_server(client)


async def test_bad_settings_get_one_message_and_the_defaults(tmp_path: Path) -> None:
    client = await start_server(
        FAKE, init_options={"debounceMs": "soon", "steps": -3, "maxTokens": 8, "enabled": True},
    )
    try:
        warnings = [m for m in client.messages if m.type == types.MessageType.Warning]
        assert len(warnings) == 1
        assert "debounceMs='soon'" in warnings[0].message and "steps=-3" in warnings[0].message
        uri = "file:///settings.py"
        open_doc(client, uri, '# codefill-fake: "1"\nx = \n')
        assert (await inline(client, uri, 1, 4)).items[0].insert_text == "1"

        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"codefill": {"enabled": "nope", "languages": ["go"]}})
        )
        await asyncio.sleep(0.3)
        assert len([m for m in client.messages if m.type == types.MessageType.Warning]) == 2
        assert await inline(client, uri, 1, 4) is None  # languages: only go now
        result = await fill_command(client, uri, (1, 0), (1, 1))
        assert result == {"applied": False, "reason": "codefill does not fill python documents (codefill.languages)"}

        log_path = tmp_path / "no" / "such" / "dir" / "codefill.log"
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"languages": None, "logFile": str(log_path)})
        )
        await asyncio.sleep(0.3)
        assert any(str(log_path) in m.message and m.type == types.MessageType.Warning for m in client.log_messages)
        assert (await inline(client, uri, 1, 4)).items[0].insert_text == "1"
    finally:
        await stop_server(client)


async def test_a_setting_the_client_stops_sending_goes_back(tmp_path: Path) -> None:
    """didChangeConfiguration replaces the last one whole; the same bad value is reported once, not per change."""
    client = await start_server(FAKE, init_options={"candidates": 2})
    try:
        uri = "file:///revert.py"
        open_doc(client, uri, '# codefill-fake: "1"\nx = \n')

        def change(settings) -> None:
            client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=settings))

        change({"codefill": {"enabled": False, "maxTokens": "lots"}})
        await asyncio.sleep(0.3)
        assert await inline(client, uri, 1, 4) is None
        change({"codefill": {"maxTokens": "lots"}})  # enabled no longer sent: back to true
        await asyncio.sleep(0.3)
        assert (await inline(client, uri, 1, 4)).items[0].insert_text == "1"
        change({"codefill": {"enabled": False}})
        change(None)
        await asyncio.sleep(0.3)
        assert (await inline(client, uri, 1, 4)).items[0].insert_text == "1"
        warnings = [m.message for m in client.messages if m.type == types.MessageType.Warning]
        assert len(warnings) == 1 and "maxTokens='lots'" in warnings[0], warnings
    finally:
        await stop_server(client)


async def test_log_file_from_the_command_line(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    client = await start_server(FAKE + ["--log-file", str(log_path), "-v"])
    try:
        uri = "file:///logged.py"
        open_doc(client, uri, '# codefill-fake: "1"\nx = \n')
        await inline(client, uri, 1, 4)
    finally:
        await stop_server(client)
    text = log_path.read_text()
    assert "model ready" in text and "fill file:///logged.py" in text


async def test_stale_request_never_reaches_the_engine(tmp_path: Path) -> None:
    calls = tmp_path / "calls.jsonl"
    client = await start_server(FAKE + ["--debounce-ms", "400"], env={"CODEFILL_FAKE_LOG": str(calls)})
    try:
        uri = "file:///stale.py"
        open_doc(client, uri, '# codefill-fake: "1"\nx = \n')
        request = asyncio.ensure_future(inline(client, uri, 1, 4))
        await asyncio.sleep(0.1)
        change_doc(client, uri, 2, rng((1, 4), (1, 4)), "2")  # the user typed during the debounce
        assert await request is None
        assert not calls.exists()
        result = await inline(client, uri, 1, 5)  # after the pause: a fill
        assert result is not None and calls.exists()
    finally:
        await stop_server(client)


def _frame(message: dict | bytes) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _read_message(stream) -> dict:
    length = 0
    while True:
        line = stream.readline()
        if not line:
            raise EOFError("the server closed its output")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line in (b"\r\n", b"\n") and length:
            return json.loads(stream.read(length))


def _responses(stream, wanted: set) -> dict:
    got: dict = {}
    while not wanted <= set(got):
        msg = _read_message(stream)
        if "method" not in msg:
            got[msg.get("id")] = msg
    return got


@contextlib.contextmanager
def _stdio_server(stderr: Any = subprocess.DEVNULL) -> Iterator[tuple[subprocess.Popen, Callable[[Any], None]]]:
    """`python -m lsp_server` over pipes, a function that sends it a framed message, and the process killed after
    the test if it is still running."""
    proc = subprocess.Popen([sys.executable, "-m", "lsp_server", *FAKE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, env=server_env(), cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def send(data: Any) -> None:
        stdin.write(_frame(data))
        stdin.flush()

    try:
        yield proc, send
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_malformed_json_rpc_on_stdin_is_answered_and_survived() -> None:
    with _stdio_server() as (proc, send):
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
        assert "capabilities" in _responses(proc.stdout, {1})[1]["result"]
        send(b'{"jsonrpc": "2.0", "id": 2, "method": ')  # cut short
        send(b"\xff\xfe not even utf-8")
        send({"jsonrpc": "2.0", "id": 3, "method": "textDocument/inlineCompletion", "params": {"bad": 1}})
        send({"jsonrpc": "2.0", "id": 4, "method": "codefill/noSuchMethod", "params": {}})
        send({"jsonrpc": "2.0", "id": 5, "method": "textDocument/inlineCompletion",
              "params": {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 0, "character": 0},
                         "context": {"triggerKind": 1}}})
        send({"jsonrpc": "2.0", "id": 6, "method": "shutdown"})
        got = _responses(proc.stdout, {None, 3, 4, 5, 6})
        assert got[None]["error"]["code"] == -32700  # parse error, id null
        assert got[3]["error"]["code"] == -32602  # invalid params, saying which
        assert "required field missing @ $.params.position" in got[3]["error"]["message"]
        assert got[4]["error"]["code"] == -32601  # method not found
        assert got[5]["result"] is None  # unknown document
        assert got[6]["result"] is None and proc.poll() is None
        send({"jsonrpc": "2.0", "id": 7, "method": "textDocument/inlineCompletion",
              "params": {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 0, "character": 0},
                         "context": {"triggerKind": 1}}})
        send({"jsonrpc": "2.0", "id": 8, "method": "shutdown"})
        got = _responses(proc.stdout, {7, 8})
        assert got[7]["error"]["code"] == got[8]["error"]["code"] == -32600  # after shutdown: InvalidRequest
        send({"jsonrpc": "2.0", "method": "exit"})
        assert proc.wait(timeout=10) == 0


def test_bad_commands_are_answered_and_logged_as_the_clients_mistake(tmp_path: Path) -> None:
    """workspace/executeCommand with wrong arguments or an unknown command: an InvalidParams answer, and on stderr
    one warning line each, no ERROR and no traceback (nothing went wrong in the server)."""
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err, _stdio_server(err) as (proc, send):
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
        bad = [["file:///x.py", "not a range"], [1], "oops"]
        for n, arguments in enumerate(bad, start=2):
            send({"jsonrpc": "2.0", "id": n, "method": "workspace/executeCommand",
                  "params": {"command": "codefill.fill", "arguments": arguments}})
        send({"jsonrpc": "2.0", "id": 5, "method": "workspace/executeCommand",
              "params": {"command": "codefill.noSuchCommand", "arguments": []}})
        send({"jsonrpc": "2.0", "id": 6, "method": "shutdown"})
        got = _responses(proc.stdout, {1, 2, 3, 4, 5, 6})
        assert all(got[n]["error"]["code"] == -32602 for n in (2, 3, 4, 5)), got
        assert "not a range" in got[2]["error"]["message"] and "noSuchCommand" in got[5]["error"]["message"]
        assert "the string 'oops' instead of a list" in got[4]["error"]["message"], got[4]
        send({"jsonrpc": "2.0", "method": "exit"})
        assert proc.wait(timeout=10) == 0
    log = stderr.read_text()
    assert log.count("WARNING codefill.server: bad request from the client") == 4, log
    assert "ERROR" not in log and "Traceback" not in log, log


def test_exit_without_shutdown_is_an_error_exit() -> None:
    with _stdio_server() as (proc, send):
        send({"jsonrpc": "2.0", "id": 0, "method": "codefill/documentText", "params": {"uri": "file:///x.py"}})
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}})
        got = _responses(proc.stdout, {0, 1})
        assert got[0]["error"]["code"] == -32002  # ServerNotInitialized, not an internal error
        assert "capabilities" in got[1]["result"]
        send({"jsonrpc": "2.0", "method": "exit"})
        assert proc.wait(timeout=10) == 1


def _tcp_server() -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lsp_server", *FAKE, "--tcp", f"127.0.0.1:{port}"],
                            stderr=subprocess.DEVNULL, env=server_env(), cwd=REPO)
    return proc, port


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 15
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_tcp_transport() -> None:
    """One client at a time, framed as on stdio: a second connection meanwhile is closed (it took the first one's
    output), an oversized Content-Length is answered as unreadable, and the server ends when its client goes, even
    by a reset in the middle of a message."""
    proc, port = _tcp_server()
    try:
        with _connect(port) as conn:
            stream = conn.makefile("rwb")
            stream.write(_frame({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}}))
            stream.flush()
            result = _responses(stream, {1})[1]["result"]
            assert result["serverInfo"]["name"] == "codefill"
            assert result["capabilities"]["inlineCompletionProvider"] is not None

            with socket.create_connection(("127.0.0.1", port), timeout=10) as intruder:
                assert intruder.recv(100) == b""  # closed at once, nothing sent to it

            stream.write(b"Content-Length: 99999999999999999999\r\n\r\n")
            stream.write(_frame({"jsonrpc": "2.0", "id": 2, "method": "codefill/serverState", "params": {}}))
            stream.flush()
            answers = _responses(stream, {None, 2})
            assert answers[None]["error"]["code"] == -32700 and "openDocuments" in json.dumps(answers[2]["result"])

            stream.write(b"Content-Length: 500\r\n\r\n{")  # the client goes in the middle of a message, by a reset
            stream.flush()
            stream.close()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("argv", [["--tcp", "nonsense"], ["--device", "tpu"]])
def test_bad_command_line_is_a_usage_error(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "lsp_server", *argv], capture_output=True, text=True,
                         env=server_env(), cwd=REPO, timeout=30)
    assert out.returncode == 2 and "usage: codefill-lsp" in out.stderr


def test_initialize_comes_first_and_once() -> None:
    """LSP's order: a request before initialize gets ServerNotInitialized (a notification is dropped), a second
    initialize is refused; requests whose params are left out (JSON-RPC allows it) are answered as with none."""
    with _stdio_server() as (proc, send):
        send({"jsonrpc": "2.0", "id": 1, "method": "codefill/serverState"})
        send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///early.py", "languageId": "python", "version": 1, "text": "x = 1\n"}}})
        send({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"capabilities": {}}})
        send({"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {"capabilities": {}}})
        send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        send({"jsonrpc": "2.0", "id": 4, "method": "codefill/serverState"})
        send({"jsonrpc": "2.0", "id": 5, "method": "codefill/documentText"})
        send({"jsonrpc": "2.0", "id": 6, "method": "codefill/documentText", "params": {"uri": "file:///early.py"}})
        send({"jsonrpc": "2.0", "id": 7, "method": "shutdown"})
        got = _responses(proc.stdout, {1, 2, 3, 4, 5, 6, 7})
        assert got[1]["error"]["code"] == -32002, got[1]
        assert "capabilities" in got[2]["result"]
        assert got[3]["error"]["code"] == -32600 and "already initialized" in got[3]["error"]["message"], got[3]
        assert "result" in got[4] and isinstance(got[4]["result"], dict), got[4]
        assert got[5]["result"] is None, got[5]  # no uri: no document
        assert got[6]["result"] is None, got[6]  # the didOpen before initialize was dropped
        send({"jsonrpc": "2.0", "method": "exit"})
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("answer", [None, "yes", {}, [True]])
def test_an_answer_to_apply_edit_that_is_not_one_fails_the_command_at_once(answer: Any) -> None:
    """The fill command's workspace/applyEdit answered with what is not an ApplyWorkspaceEditResult: the command
    says so at once (it waited out its 30 s timeout) and no pending request is left behind."""
    text = '# codefill-fake: "b = 2"\na = 1\n'
    with _stdio_server() as (proc, send):
        assert proc.stdout is not None
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"capabilities": {"workspace": {"applyEdit": True}}}})
        send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///ae.py", "languageId": "python", "version": 1, "text": text}}})
        _responses(proc.stdout, {1})
        started = time.monotonic()
        send({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand", "params": {
            "command": "codefill.fill", "arguments": ["file:///ae.py", {
                "start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 5}}]}})
        while True:
            msg = _read_message(proc.stdout)
            if msg.get("method") == "workspace/applyEdit":
                send({"jsonrpc": "2.0", "id": msg["id"], "result": answer})
            elif msg.get("id") == 2:
                break
        assert time.monotonic() - started < 10
        assert msg["result"]["applied"] is False and "applyEdit failed" in msg["result"]["reason"], msg
        send({"jsonrpc": "2.0", "id": 3, "method": "codefill/serverState"})
        state = _responses(proc.stdout, {3})[3]["result"]
        assert state["pendingRequests"] == 0, state
        send({"jsonrpc": "2.0", "id": 4, "method": "shutdown"})
        _responses(proc.stdout, {4})
        send({"jsonrpc": "2.0", "method": "exit"})
        assert proc.wait(timeout=10) == 0
