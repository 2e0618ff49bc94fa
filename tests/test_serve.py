"""`codefill serve`: the resident engine's socket protocol, its sharing between clients, and its locks.

Most tests run engine.serve.EngineServer in this process (the socket is real, the threads are the server's own);
two start `python -m engine.cli serve` itself, to check the command line, the files it makes and idle exit.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_fixtures.harness import FAKE_ENGINE, REPO, server_env

from engine import serve, wire
from engine.hosting import EngineHost
from engine.serve import EngineServer
from engine.wire import Address, ServeError

FAULTS = f"{REPO / 'tests' / 'lsp_fixtures' / 'fault_engine.py'}"


class LineClient:
    """A JSON-lines client for tests: send what you like, read what comes back."""

    def __init__(self, address: Address, token: str | None = None) -> None:
        self.sock = wire.connect(address)
        self.sock.settimeout(20)
        self.stream = self.sock.makefile("rwb")
        self.next_id = 0
        if token is not None:
            assert "result" in self.call("auth", {"token": token})

    def send(self, msg: dict[str, Any] | bytes) -> None:
        self.stream.write(msg if isinstance(msg, bytes) else json.dumps(msg).encode() + b"\n")
        self.stream.flush()

    def recv(self) -> dict[str, Any]:
        raw = self.stream.readline()
        if not raw:
            raise EOFError("the engine closed the connection")
        return json.loads(raw)

    def request(self, method: str, params: Any = None) -> int:
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params if params is not None else {}})
        return self.next_id

    def call(self, method: str, params: Any = None) -> dict[str, Any]:
        msg_id = self.request(method, params)
        msg = self.recv()
        assert msg["id"] == msg_id, msg
        return msg

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def start(tmp: Path, host: EngineHost, **kwargs: Any) -> EngineServer:
    host.load()
    server = EngineServer(host, Address("unix", path=str(tmp / "e.sock")), **kwargs)
    server.start()
    return server


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("s"), EngineHost(factory=FAKE_ENGINE))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_model_dir):
    server = start(tmp_path_factory.mktemp("t"), EngineHost(str(tiny_model_dir), device="cpu"))
    yield server
    server.stop()


SLOW = "# codefill-fake-sleep: 20\n# codefill-fake: \"slow\"\n"


def test_fill_and_health_with_a_real_model(tiny_server, tiny_model_dir) -> None:
    client = LineClient(tiny_server.address)
    try:
        before = client.call("health")["result"]["requests_served"]
        msg = client.call("fill", {"prefix": "def add(a, b):\n    return ", "suffix": "\n", "max_tokens": 8,
                                   "single_line": True, "key": "file:///a.py"})
        fill = msg["result"]
        assert isinstance(fill["text"], str) and "\n" not in fill["text"]
        assert fill["forward_passes"] >= 1 and 1 <= len(fill["tokens"]) <= 8 and fill["device"] == "cpu"
        health = client.call("health")["result"]
        assert health["state"] == "ready" and health["error"] is None
        assert Path(health["model"]) == Path(tiny_model_dir) and health["device"] == "cpu"
        assert health["requests_served"] == before + 1 and health["uptime_s"] > 0 and health["pid"] == os.getpid()
        # lone surrogates and non-ASCII text survive the trip and do not break the engine's answer
        msg = client.call("fill", {"prefix": "s = 'h\u00e9llo \ud83d\ude0b \ud800'\nx = ", "suffix": "", "max_tokens": 4})
        assert "result" in msg or msg["error"]["code"] in (wire.INVALID_PARAMS, wire.INTERNAL_ERROR)
        assert "result" in client.call("health")
    finally:
        client.close()


@pytest.mark.parametrize("line, code, msg_id", [
    (b"this is not json\n", wire.PARSE_ERROR, None),
    (b'{"id": 2, "method": "fill", "params": \n', wire.PARSE_ERROR, None),
    (b"\xff\xfe\x00 not utf-8\n", wire.PARSE_ERROR, None),
    (b"[1, 2, 3]\n", wire.INVALID_REQUEST, None),
    (b'{"id": 3}\n', wire.INVALID_REQUEST, 3),
    (b'{"id": 4, "method": "no_such_method"}\n', wire.METHOD_NOT_FOUND, 4),
    (b'{"id": 5, "method": "fill", "params": [1]}\n', wire.INVALID_PARAMS, 5),
    (b'{"id": 6, "method": "fill", "params": {"suffix": "x"}}\n', wire.INVALID_PARAMS, 6),
    (b'{"id": 7, "method": "fill", "params": {"prefix": "x", "max_tokens": 0}}\n', wire.INVALID_PARAMS, 7),
    (b'{"id": 8, "method": "fill", "params": {"prefix": "x", "single_line": "yes"}}\n', wire.INVALID_PARAMS, 8),
    (b'{"id": 9, "method": "fill", "params": {"prefix": "x", "colour": "blue"}}\n', wire.INVALID_PARAMS, 9),
    (b'{"id": {"a": 1}, "method": "health"}\n', None, None),
    (b'{"method": "fill", "params": {"prefix": "x"}}\n', wire.INVALID_REQUEST, None),
    (b"[" * 200_000 + b"\n", wire.PARSE_ERROR, None),  # nested too deep for json: a RecursionError
])
def test_malformed_lines_get_an_error_and_the_connection_lives(fake_server, line, code, msg_id) -> None:
    client = LineClient(fake_server.address)
    try:
        client.send(line)
        msg = client.recv()
        assert msg["id"] == msg_id
        if code is None:
            assert msg["result"]["state"] == "ready"  # an id that cannot be echoed is answered as null
        else:
            assert msg["error"]["code"] == code and msg["error"]["message"]
        assert client.call("health")["result"]["state"] == "ready"
    finally:
        client.close()


def test_two_clients_share_one_engine(fake_server) -> None:
    first, second = LineClient(fake_server.address), LineClient(fake_server.address)
    try:
        before = first.call("health")["result"]
        answers: dict[str, Any] = {}

        def fill(name: str, client: LineClient) -> None:
            answers[name] = client.call("fill", {"prefix": f'# codefill-fake: "{name}"\nx = ', "suffix": "\n",
                                                "key": f"file:///{name}.py"})

        threads = [threading.Thread(target=fill, args=(n, c)) for n, c in (("one", first), ("two", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert answers["one"]["result"]["text"] == "one" and answers["two"]["result"]["text"] == "two"
        health = second.call("health")["result"]
        assert health["clients"] >= 1 and health["clients_total"] >= 2  # both connections (the asker is not
        # counted in clients), one engine
        assert health["requests_served"] == before["requests_served"] + 2
        assert health["pid"] == before["pid"]
    finally:
        first.close()
        second.close()


def test_newest_fill_per_key_wins_across_connections(fake_server) -> None:
    first, second = LineClient(fake_server.address), LineClient(fake_server.address)
    try:
        started = time.monotonic()
        first.request("fill", {"prefix": SLOW + "x = ", "key": "file:///shared.py"})
        time.sleep(0.3)  # the slow fill is running
        newer = second.call("fill", {"prefix": '# codefill-fake: "new"\nx = ', "key": "file:///shared.py"})
        older = first.recv()
        assert older["error"]["code"] == wire.CANCELLED
        assert newer["result"]["text"] == "new"
        assert time.monotonic() - started < 10  # the slow one (20 s) was stopped, not waited for
    finally:
        first.close()
        second.close()


def test_cancel_stops_a_running_fill(fake_server) -> None:
    client = LineClient(fake_server.address)
    try:
        msg_id = client.request("fill", {"prefix": SLOW + "y = ", "key": "file:///cancelled.py"})
        time.sleep(0.2)
        started = time.monotonic()
        client.send({"method": "cancel", "params": {"id": msg_id}})  # no id: no answer to the cancel itself
        msg = client.recv()
        assert msg["id"] == msg_id and msg["error"]["code"] == wire.CANCELLED
        assert time.monotonic() - started < 2
        assert client.call("cancel", {"id": 12345})["result"] == {"cancelled": False}
    finally:
        client.close()


def test_a_client_that_goes_away_mid_fill_does_not_hurt_the_others(fake_server) -> None:
    gone = LineClient(fake_server.address)
    gone.request("fill", {"prefix": SLOW + "z = ", "key": "file:///gone.py"})
    time.sleep(0.2)
    gone.close()
    client = LineClient(fake_server.address)
    try:
        started = time.monotonic()
        msg = client.call("fill", {"prefix": '# codefill-fake: "ok"\nz = ', "key": "file:///other.py"})
        assert msg["result"]["text"] == "ok" and time.monotonic() - started < 5
    finally:
        client.close()


def test_tcp_needs_the_token(tmp_path) -> None:
    host = EngineHost(factory=FAKE_ENGINE)
    host.load()
    server = EngineServer(host, Address("tcp", host="127.0.0.1", port=0), token="s3cret-token")
    server.start()
    try:
        nobody = LineClient(server.address)
        msg = nobody.call("health")
        assert msg["error"]["code"] == wire.UNAUTHORIZED
        with pytest.raises((EOFError, OSError)):
            nobody.call("health")  # and the connection is closed
        wrong = LineClient(server.address)
        assert wrong.call("auth", {"token": "guess"})["error"]["code"] == wire.UNAUTHORIZED
        with pytest.raises((EOFError, OSError)):
            wrong.recv()
        right = LineClient(server.address, token="s3cret-token")
        assert right.call("health")["result"]["state"] == "ready"
        assert right.call("fill", {"prefix": '# codefill-fake: "t"\nx = '})["result"]["text"] == "t"
        right.close()
    finally:
        server.stop()


def test_only_loopback_without_allow_remote() -> None:
    host = EngineHost(factory=FAKE_ENGINE)
    with pytest.raises(ServeError, match="allow-remote"):
        EngineServer(host, Address("tcp", host="0.0.0.0", port=0), token="t")
    with pytest.raises(ServeError, match="token"):
        EngineServer(host, Address("tcp", host="127.0.0.1", port=0), token=None)
    assert wire.is_loopback("127.0.0.1") and wire.is_loopback("::1") and wire.is_loopback("localhost")
    assert not wire.is_loopback("0.0.0.0") and not wire.is_loopback("192.168.1.2")


def test_out_of_memory_on_the_gpu_falls_back_to_the_cpu(tmp_path) -> None:
    server = start(tmp_path, EngineHost(device="cuda", factory=f"{FAULTS}:make_gpu_oom_engine"))
    client = LineClient(server.address)
    try:
        msg = client.call("fill", {"prefix": '# codefill-fake: "cpu"\nx = '})
        assert msg["result"]["text"] == "cpu" and msg["result"]["device"] == "cpu"
        assert client.call("health")["result"]["fallbacks"] == ["batch 1", "cpu"]
    finally:
        client.close()
        server.stop()


def test_out_of_memory_everywhere_is_an_error_answer(tmp_path) -> None:
    server = start(tmp_path, EngineHost(device="cpu", factory=f"{FAULTS}:make_oom_engine"))
    client = LineClient(server.address)
    try:
        msg = client.call("fill", {"prefix": "x = "})
        assert msg["error"]["code"] == wire.OUT_OF_MEMORY and "out of memory" in msg["error"]["message"]
        assert client.call("health")["result"]["state"] == "ready"
    finally:
        client.close()
        server.stop()


def test_a_model_that_fails_to_load_is_reported(tmp_path) -> None:
    server = start(tmp_path, EngineHost(model="/nowhere/broken-model", factory=FAKE_ENGINE))
    client = LineClient(server.address)
    try:
        health = client.call("health")["result"]
        assert health["state"] == "error" and "CheckpointError" in health["error"]
        msg = client.call("fill", {"prefix": "x = "})
        assert msg["error"]["code"] == wire.LOAD_FAILED and "broken-model" in msg["error"]["message"]
    finally:
        client.close()
        server.stop()


def test_runtime_dir_and_default_socket(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = wire.default_socket_path()
    assert path == tmp_path / "codefill" / "engine.sock"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    other = wire.default_socket_path(str(tmp_path), "cpu")
    assert other.parent == path.parent and other != path
    assert other == wire.default_socket_path(str(tmp_path), "cpu")  # stable: every window finds the same engine
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert wire.runtime_dir().name == f"codefill-{os.getuid()}"
    for spec, want in [("unix:/a/b.sock", Address("unix", path="/a/b.sock")),
                       ("tcp:127.0.0.1:7000", Address("tcp", host="127.0.0.1", port=7000)),
                       ("tcp:[::1]:7000", Address("tcp", host="::1", port=7000))]:
        assert wire.parse_address(spec) == want
    for bad in ["tcp:localhost", "http://x", "unix:", "tcp:1.2.3.4:99999"]:
        with pytest.raises(ValueError):
            wire.parse_address(bad)


def test_an_unwritable_runtime_dir_is_passed_over_and_a_broken_one_is_a_clear_error(tmp_path, monkeypatch) -> None:
    # A stale $XDG_RUNTIME_DIR (another user's after su, read-only) surfaced as a PermissionError from loading the
    # model. os.access stands in for the permission check (the tests may run as root, who passes every check).
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(xdg) else real_access(p, mode))
    assert wire.runtime_dir().name == f"codefill-{os.getuid()}"
    assert not (xdg / "codefill").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ServeError, match="cannot make a private directory.*codefill serve --unix"):
        wire._private_dir(tmp_path / "file" / "codefill")


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path) -> None:
    path = tmp_path / "e.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed engine leaves
    first = start(tmp_path, EngineHost(factory=FAKE_ENGINE))
    try:
        with pytest.raises(ServeError, match="already listens"):
            EngineServer(EngineHost(factory=FAKE_ENGINE), Address("unix", path=str(path))).bind()
        (tmp_path / "plain").write_text("not a socket")
        with pytest.raises(ServeError, match="not a socket"):
            EngineServer(EngineHost(factory=FAKE_ENGINE), Address("unix", path=str(tmp_path / "plain"))).bind()
        assert (tmp_path / "plain").read_text() == "not a socket"
    finally:
        first.stop()
    assert not path.exists()  # removed on the way out


def _wait_for(predicate, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def test_command_line_unix_socket_is_private_and_idle_exit(tmp_path, tiny_model_dir) -> None:
    sock = tmp_path / "run" / "engine.sock"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--unix", str(sock), "--model",
                             str(tiny_model_dir), "--device", "cpu", "--idle-exit-minutes", "0.02"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=server_env(), cwd=REPO)
    try:
        _wait_for(sock.exists, what="the socket")
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
        client = LineClient(Address("unix", path=str(sock)))
        health = _wait_for(lambda: (h := client.call("health")["result"])["state"] != "loading" and h, what="load")
        assert health["state"] == "ready" and health["pid"] == proc.pid
        assert "result" in client.call("fill", {"prefix": "x = ", "max_tokens": 4})
        client.close()
        assert proc.wait(timeout=30) == 0  # 1.2 s with no client: gone
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def test_command_line_tcp_writes_a_private_token_and_checks_it(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token_file = tmp_path / "token"
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--engine-factory", FAKE_ENGINE, "--token-file",
           str(token_file)]
    refused = subprocess.run(cmd + ["--tcp", f"0.0.0.0:{port}"], capture_output=True, text=True, env=server_env(),
                             cwd=REPO, timeout=60, check=False)
    assert refused.returncode == 1 and "--allow-remote" in refused.stderr and not token_file.exists()
    proc = subprocess.Popen(cmd + ["--tcp", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=server_env(), cwd=REPO)
    try:
        _wait_for(token_file.exists, what="the token file")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        address = Address("tcp", host="127.0.0.1", port=port)
        with pytest.raises(RuntimeError, match="^6:"):
            wire.request_once(address, "health", token="wrong")
        with pytest.raises(RuntimeError, match="^6:"):
            wire.request_once(address, "health")
        assert wire.request_once(address, "health", token=token)["address"] == f"tcp:127.0.0.1:{port}"
        wire.request_once(address, "shutdown", token=token)
        proc.wait(timeout=30)
        assert not token_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_two_editor_windows_start_one_engine(tmp_path_factory) -> None:
    """Two language servers with --engine auto, started at once, share one engine process."""
    import asyncio
    import shutil
    import tempfile

    from lsp_fixtures.harness import inline, open_doc, start_server, stop_server

    runtime = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp"))
    args = ["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0", "--engine", "auto"]
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    quiet = {"prefetch": False}  # the count below is of the fills asked for, not those made ahead
    windows = await asyncio.gather(start_server(args, env=env, init_options=quiet),
                                   start_server(args, env=env, init_options=quiet))
    try:
        (sock,) = (runtime / "codefill").glob("*.sock")  # one engine, whichever window started it
        for n, client in enumerate(windows):
            open_doc(client, "file:///shared.py", f'# codefill-fake: "{n}"\nx = \n')
            result = await inline(client, "file:///shared.py", 1, 4)
            assert result is not None and result.items[0].insert_text == str(n)
        health = wire.request_once(Address("unix", path=str(sock)), "health")
        assert health["clients"] == 2 and health["requests_served"] == 2  # two windows (not this request)
    finally:
        for client in windows:
            await stop_server(client)
        for left in (runtime / "codefill").glob("*.sock"):
            try:
                wire.request_once(Address("unix", path=str(left)), "shutdown", timeout=5)
            except (OSError, RuntimeError):
                pass
        shutil.rmtree(runtime, ignore_errors=True)


# -- hardening: clients that misbehave, on purpose or not ---------------------------------------------------------


def start_tcp(token: str = "s3cret-token", **kwargs: Any) -> EngineServer:
    host = EngineHost(factory=FAKE_ENGINE)
    host.load()
    server = EngineServer(host, Address("tcp", host="127.0.0.1", port=0), token=token, **kwargs)
    server.start()
    return server


def closed_by_the_engine(client: LineClient) -> bool:
    """Whether the engine closes this connection within 5 s (what is still queued is read first)."""
    client.sock.settimeout(5)
    try:
        while True:
            client.recv()
    except (EOFError, ConnectionError):
        return True
    except TimeoutError:
        return False


def test_before_its_token_a_tcp_connection_may_only_authenticate(monkeypatch) -> None:
    monkeypatch.setattr(serve, "AUTH_TIMEOUT_S", 0.5)
    server = start_tcp()
    try:
        for line in [b"x" * (wire.AUTH_LINE_BYTES + 10) + b"\n",  # far below MAX_LINE_BYTES, but no token yet
                     b"this is not json\n", b"[" * 1000 + b"\n",
                     b'{"id": 1, "method": "auth", "params": {"token": "\\ud800"}}\n']:  # a lone surrogate
            client = LineClient(server.address)
            client.send(line)
            msg = client.recv()
            assert msg["error"]["code"] in (wire.INVALID_REQUEST, wire.PARSE_ERROR, wire.UNAUTHORIZED), msg
            assert closed_by_the_engine(client), line[:40]
            client.close()
        silent = LineClient(server.address)  # says nothing: shown out after AUTH_TIMEOUT_S
        started = time.monotonic()
        assert silent.recv()["error"]["code"] == wire.UNAUTHORIZED
        assert closed_by_the_engine(silent) and time.monotonic() - started < 5
        silent.close()
        right = LineClient(server.address, token="s3cret-token")
        time.sleep(1)  # past the deadline: an authenticated connection stays
        assert right.call("health")["result"]["state"] == "ready"
        right.close()
    finally:
        server.stop()


def test_only_authenticated_connections_are_clients() -> None:
    server = start_tcp(idle_exit_s=0.5)
    lurkers = [LineClient(server.address) for _ in range(3)]  # connected, no token
    try:
        first, second = (LineClient(server.address, token="s3cret-token") for _ in range(2))
        health = first.call("health")["result"]
        assert health["clients"] == 1 and health["clients_total"] == 2  # the other window; not the asker, no lurker
        first.close()
        second.close()
        assert server.stopped.wait(3)  # idle exit: the lurkers do not keep the engine up
    finally:
        for lurker in lurkers:
            lurker.close()
        server.stop()


def test_connections_are_capped(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(serve, "MAX_CONNECTIONS", 3)
    server = start(tmp_path, EngineHost(factory=FAKE_ENGINE))
    clients = [LineClient(server.address) for _ in range(3)]
    try:
        extra = LineClient(server.address)
        msg = extra.recv()
        assert msg["id"] is None and msg["error"]["code"] == wire.BUSY
        assert closed_by_the_engine(extra)
        extra.close()
        assert clients[0].call("health")["result"]["clients"] == 2
        clients.pop().close()
        _wait_for(lambda: len(server.connections) == 2, 5, "the engine to see the close")
        clients.append(LineClient(server.address))
        assert clients[-1].call("health")["result"]["state"] == "ready"
    finally:
        for client in clients:
            client.close()
        server.stop()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_half_closed_connection_gets_its_answers(fake_server, kind) -> None:
    server = fake_server if kind == "unix" else start_tcp()
    token = None if kind == "unix" else "s3cret-token"
    client = LineClient(server.address, token=token)
    try:
        fill = client.request("fill", {"prefix": '# codefill-fake-sleep: 0.5\n# codefill-fake: "late"\nx = ',
                                       "key": f"file:///half-{kind}.py"})
        health = client.request("health")
        client.sock.shutdown(socket.SHUT_WR)  # `printf '...' | nc -N`: the request, then end of input
        answers = {msg["id"]: msg for msg in (client.recv(), client.recv())}
        assert answers[fill]["result"]["text"] == "late" and answers[health]["result"]["state"] == "ready"
        with pytest.raises(EOFError):
            client.recv()  # and then the engine closes
    finally:
        client.close()
        if server is not fake_server:
            server.stop()


def test_a_request_that_breaks_the_engine_is_answered_and_logged_once(fake_server, monkeypatch, caplog) -> None:
    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyError("oops")

    monkeypatch.setattr(fake_server, "health", broken)
    client = LineClient(fake_server.address)
    try:
        with caplog.at_level("ERROR", logger="codefill.serve"):
            for _ in range(2):
                msg = client.call("health")
                assert msg["error"]["code"] == wire.INTERNAL_ERROR and "KeyError" in msg["error"]["message"]
        monkeypatch.undo()
        assert client.call("health")["result"]["state"] == "ready"  # the connection lives
        records = [r for r in caplog.records if "internal error" in r.getMessage()]
        assert len(records) == 2 and records[0].exc_info and not records[1].exc_info  # one traceback
    finally:
        client.close()


def test_a_duplicate_fill_id_is_refused_without_taking_the_id(fake_server) -> None:
    client = LineClient(fake_server.address)
    try:
        params = {"prefix": SLOW + "d = ", "key": "file:///duplicate.py"}
        client.send({"id": 7, "method": "fill", "params": params})
        client.send({"id": 7, "method": "fill", "params": {**params, "key": "file:///duplicate2.py"}})
        refused = client.recv()
        assert refused["id"] is None and refused["error"]["code"] == wire.INVALID_REQUEST
        assert "7" in refused["error"]["message"]
        client.send({"method": "cancel", "params": {"id": 7}})
        first = client.recv()
        assert first["id"] == 7 and first["error"]["code"] == wire.CANCELLED  # the running fill's own answer
    finally:
        client.close()


def test_a_client_that_does_not_read_is_dropped(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(serve, "MAX_OUTBOX", 20)
    server = start(tmp_path, EngineHost(factory=FAKE_ENGINE))
    client = LineClient(server.address)
    try:
        with caplog.at_level("WARNING", logger="codefill.serve"):
            try:
                client.send(b'{"id": 1, "method": "health"}\n' * 20_000)  # some MB of answers, none read
            except OSError:
                pass  # the engine shut the connection while we wrote
            _wait_for(lambda: not server.connections, 10, "the connection to be dropped")
        assert any("does not read its answers" in r.getMessage() for r in caplog.records)
        assert closed_by_the_engine(client)
        other = LineClient(server.address)
        assert other.call("health")["result"]["state"] == "ready"
        other.close()
    finally:
        client.close()
        server.stop()


def test_a_socket_path_too_long_is_a_clear_error(tmp_path, monkeypatch) -> None:
    long_dir = tmp_path / ("d" * 120)
    long_dir.mkdir()
    with pytest.raises(ServeError, match="bytes long.*at most"):
        EngineServer(EngineHost(factory=FAKE_ENGINE), Address("unix", path=str(long_dir / "e.sock"))).bind()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(long_dir))
    path = wire.default_socket_path()
    assert path == Path(tempfile.gettempdir()) / f"codefill-{os.getuid()}" / "engine.sock"  # the short fallback
    assert wire.unix_path_problem(path) is None and not (long_dir / "codefill").exists()
    assert wire.runtime_dir() == long_dir / "codefill"  # tokens and logs have no such limit


def test_stop_returns_once_the_engine_has_stopped(tmp_path, capsys) -> None:
    sock = tmp_path / "engine.sock"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--unix", str(sock), "--engine-factory",
                             FAKE_ENGINE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env(),
                            cwd=REPO)
    try:
        _wait_for(sock.exists, what="the socket")
        assert serve.main(["--stop", "--unix", str(sock)]) == 0
        assert json.loads(capsys.readouterr().out)["pid"] == proc.pid
        assert proc.poll() is not None  # exited (not reaped until now: a zombie counts as gone)
        with pytest.raises(OSError):
            wire.connect(Address("unix", path=str(sock)), timeout=1)
        again = EngineServer(EngineHost(factory=FAKE_ENGINE), Address("unix", path=str(sock)))
        again.bind()  # no "an engine already listens"
        again.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
