"""The server's client of a resident engine (`codefill serve`) over a local socket: connect or start it, fill,
cancel, and bring it back with backoff when it dies. Imports no torch."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from engine import wire  # the engine server's protocol and addresses; no torch
from engine.errors import EngineError, FillCancelled
from lsp_server.engine_client import (
    MAX_CONTEXT_CHARS,
    RESTART_BACKOFF_S,
    EngineLoadFailed,
    EngineOutOfMemory,
    EngineUnavailable,
    FillResult,
    Notify,
    _Notices,
)

log = logging.getLogger("codefill.engine_client")

LOST_NOTICE_AFTER_TRIES = 3  # a lost engine not back after this many tries is shown to the user (once)


class _Connection:
    """One socket to an engine: requests go out as JSON lines, a reader thread matches answers to futures."""

    def __init__(self, sock: socket.socket, address: wire.Address,
                 on_lost: Callable[[_Connection, str], None]) -> None:
        self.sock = sock
        self.address = address
        self.alive = True
        self._on_lost = on_lost
        self._ids = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        threading.Thread(target=self._read, name="codefill-engine-reader", daemon=True).start()

    @classmethod
    def open(cls, address: wire.Address, token: str | None,
             on_lost: Callable[[_Connection, str], None]) -> _Connection:
        """Connect (and authenticate on TCP); raises OSError when nobody listens, EngineError when refused."""
        conn = cls(wire.connect(address, timeout=5.0), address, on_lost)
        if token is not None:
            try:
                conn.call("auth", {"token": token}, timeout=10)
            except EngineError:
                conn.close()
                raise
        return conn

    def request(self, method: str, params: dict[str, Any]) -> tuple[int, Future]:
        """Send a request; its answer (the whole message) arrives in the future."""
        msg_id = next(self._ids)
        future: Future = Future()
        with self._lock:
            if not self.alive:
                raise EngineUnavailable(f"the connection to the engine at {self.address} is closed")
            self._pending[msg_id] = future
        try:
            self.send({"id": msg_id, "method": method, "params": params})
        except OSError as exc:
            self._lost(f"send failed: {exc}")
            raise EngineUnavailable(f"the engine at {self.address} went away ({exc})") from None
        return msg_id, future

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """Request and wait for the result; raises EngineError (the engine's answer) or EngineUnavailable."""
        msg_id, future = self.request(method, params or {})
        try:
            msg = future.result(timeout)
        except FutureTimeout:
            self.forget(msg_id)
            raise EngineUnavailable(f"no answer to {method} from {self.address} in {timeout:g} s") from None
        return _result(msg)

    def send(self, msg: dict[str, Any]) -> None:
        data = wire.encode_line(msg)
        with self._send_lock:
            self.sock.sendall(data)

    def forget(self, msg_id: int) -> None:
        with self._lock:
            self._pending.pop(msg_id, None)

    def close(self) -> None:
        """Close without telling on_lost (a deliberate close)."""
        self._on_lost = lambda conn, reason: None
        self._lost("closed")

    def abandon(self, reason: str) -> None:
        """Close as if the engine had gone away (on_lost is told)."""
        self._lost(reason)

    def _read(self) -> None:
        stream = self.sock.makefile("rb")
        reason = "the engine closed the connection"
        try:
            for raw in stream:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    log.warning("unreadable line from the engine: %r", raw[:200])
                    continue
                if not isinstance(msg, dict):
                    continue
                with self._lock:
                    future = self._pending.pop(msg.get("id"), None) if isinstance(msg.get("id"), int) else None
                if future is not None:
                    _settle(future, result=msg)
        except OSError as exc:
            reason = f"connection error: {exc}"
        finally:
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        with self._lock:
            if not self.alive:
                return
            self.alive = False
            pending = list(self._pending.values())
            self._pending.clear()
        for future in pending:
            _settle(future, error=EngineUnavailable(f"the engine at {self.address} went away ({reason})"))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._on_lost(self, reason)


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _result(msg: dict[str, Any]) -> Any:
    """The result of an answer, or the engine error it carries."""
    err = msg.get("error")
    if err is None:
        return msg.get("result")
    code = err.get("code") if isinstance(err, dict) else None
    message = str(err.get("message", "")) if isinstance(err, dict) else str(err)
    if code == wire.CANCELLED:
        raise FillCancelled(message)
    if code == wire.OUT_OF_MEMORY:
        raise EngineOutOfMemory(message)
    if code == wire.NOT_READY:
        raise EngineUnavailable(message)
    if code == wire.LOAD_FAILED:
        raise EngineLoadFailed(message)
    if code == wire.UNAUTHORIZED:
        raise EngineError(f"the engine refused the connection: {message}")
    raise EngineError(f"{message} (engine error {code})")


class RemoteEngine:
    """A resident engine (`codefill serve`) over a Unix socket or loopback TCP.

    In auto mode the engine's default socket for these settings is joined, or the engine is started there (detached,
    so that it outlives this server and other editor windows share it). When the engine dies, or cannot be reached
    at start-up, fills are refused at once (the server answers null) while a background thread brings it back with
    exponential backoff. Only a model that cannot load (EngineLoadFailed) is final.
    """

    def __init__(
        self,
        address: str = "auto",
        model_path: str | None = None,
        device: str = "auto",
        steps: int = 0,
        factory: str | None = None,
        token_file: str | None = None,
        idle_exit_minutes: float = wire.AUTO_IDLE_EXIT_MINUTES,
        notify: Notify | None = None,
        fill_timeout: float = 30.0,
        load_timeout: float = 900.0,
        start_timeout: float = 60.0,
    ) -> None:
        self.auto = address == "auto"
        self._address = None if self.auto else wire.parse_address(address)
        self.model_path = _absolute_model(model_path) if self.auto else model_path
        self.device = device
        self.steps = steps
        self.factory = _absolute_factory(factory)
        self.token_file = token_file
        self.idle_exit_minutes = idle_exit_minutes
        self.notices = _Notices(notify)
        self.fill_timeout = fill_timeout
        self.load_timeout = load_timeout
        self.start_timeout = start_timeout
        self.state = "new"  # new, ready, restarting, failed, closed
        self.restarts = 0
        self.engine_pid: int | None = None
        self.process: subprocess.Popen | None = None  # the engine this client started, if any
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._device_seen: str | None = None

    @property
    def address(self) -> wire.Address:
        """Where the engine listens (in auto mode: the default socket for this model, device and steps)."""
        if self._address is None:
            path = wire.default_socket_path(self.model_path, self.device, self.steps, self.factory)
            self._address = wire.Address("unix", path=str(path))
        return self._address

    @property
    def ready(self) -> bool:
        """Connected to an engine whose model is loaded (False while it restarts)."""
        conn = self._conn
        return self.state == "ready" and conn is not None and conn.alive

    def load(self) -> None:
        """Reach the engine (starting it in auto mode) and wait for its model; raises EngineError.

        EngineUnavailable (nobody listens yet, a hung or dying engine) is raised for the caller to tell the user, and
        the engine is then tried again in the background, as after losing it.
        """
        try:
            address = self.address
            problem = wire.unix_path_problem(address.path) if address.kind == "unix" else None
            if problem:
                raise EngineError(problem)
            self._connect_and_wait()
        except wire.ServeError as exc:  # the runtime directory is not ours: trying again will not help
            raise EngineError(str(exc)) from None
        except EngineUnavailable:
            self._restart(startup=True)
            raise

    def close(self) -> None:
        """Disconnect and stop restarting; the engine stays up for its other clients (or idles out)."""
        self._closed.set()
        self.state = "closed"
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """The engine's health answer; raises EngineUnavailable when it is not connected."""
        conn = self._conn
        if conn is None or not conn.alive:
            raise EngineUnavailable("the engine is not connected")
        return conn.call("health", timeout=timeout)

    def fill(
        self,
        prefix: str,
        suffix: str,
        max_tokens: int,
        single_line: bool,
        *,
        steps: int | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        cancel: threading.Event | None = None,
        key: str | None = None,
    ) -> FillResult:
        conn = self._conn
        if self.state != "ready" or conn is None or not conn.alive:
            raise EngineUnavailable(f"the engine is not connected ({self.state})")
        params: dict[str, Any] = {"prefix": _tail(prefix), "suffix": _head(suffix), "max_tokens": max_tokens,
                                  "single_line": single_line, "temperature": temperature}
        if steps:
            params["steps"] = steps
        if seed is not None:
            params["seed"] = seed
        if key is not None:
            params["key"] = key
        msg_id, future = conn.request("fill", params)
        deadline = time.monotonic() + self.fill_timeout
        while True:
            try:
                msg = future.result(timeout=0.01)
                break
            except FutureTimeout:
                pass
            stop = "cancelled" if cancel is not None and cancel.is_set() else None
            if stop is None and time.monotonic() > deadline:
                stop = f"no answer from the engine in {self.fill_timeout:g} s"
            if stop is not None:
                conn.forget(msg_id)
                try:
                    conn.send({"method": "cancel", "params": {"id": msg_id}})
                except OSError:
                    pass
                if stop == "cancelled":
                    raise FillCancelled(stop)
                self._check_alive(conn)
                raise EngineError(stop)
        try:
            result = _result(msg)
        except EngineOutOfMemory as exc:
            self.notices("oom", 40, f"the engine ran out of memory: {exc}")
            raise
        self._note_device(result.get("device"))
        return FillResult(text=str(result.get("text", "")), forward_passes=int(result.get("forward_passes", 0)),
                          seconds=float(result.get("seconds", 0.0)))

    def _check_alive(self, conn: _Connection) -> None:
        """After a slow fill: an engine that still answers health is slow; one that does not is hung."""
        try:
            conn.call("health", timeout=5)
            return
        except EngineError:
            pass
        pid = self.engine_pid
        if self.auto and pid:
            log.error("the engine (pid %s) at %s does not answer: killing it; it will be restarted", pid,
                      conn.address)
            try:
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            except OSError:
                pass
        else:
            log.error("the engine at %s does not answer: reconnecting", conn.address)
        conn.abandon("no answer")

    # -- connecting ------------------------------------------------------------------------------------------------

    def _connect_and_wait(self) -> None:
        address = self.address
        before = self.process
        conn = self._open(address)
        try:
            health = self._wait_loaded(conn)
        except EngineUnavailable as exc:
            conn.close()
            process = self.process if self.process is not before else None  # started by this call
            if process is not None and process.poll() is not None:  # the engine we started died while loading
                log_path = Path(address.path).with_suffix(".log")
                raise EngineUnavailable(f"the engine exited with status {process.returncode} while loading: "
                                        f"{_last_line(log_path)} (log: {log_path})") from exc
            raise
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if self._closed.is_set():
                conn.close()
                raise EngineUnavailable("closed")
            self._conn = conn
            self.state = "ready"
        self.engine_pid = health.get("pid")
        self._device_seen = health.get("device")
        log.info("engine at %s: pid %s, model %s on %s, up %.0f s, %s other client(s)", address, health.get("pid"),
                 health.get("model") or "(built-in)", health.get("device"), health.get("uptime_s", 0),
                 health.get("clients"))
        if not self.auto and self.model_path and health.get("model") and \
                Path(self.model_path).expanduser().resolve() != Path(str(health["model"])).resolve():
            log.warning("the engine at %s serves %s, not --model %s", address, health["model"], self.model_path)

    def _wait_loaded(self, conn: _Connection) -> dict[str, Any]:
        deadline = time.monotonic() + self.load_timeout
        while True:
            health = conn.call("health", timeout=10)
            if not isinstance(health, dict):
                raise EngineError(f"the engine at {conn.address} answered health with {health!r}")
            if health.get("protocol") != wire.PROTOCOL_VERSION:
                raise EngineLoadFailed(f"the engine at {conn.address} (pid {health.get('pid')}) speaks protocol "
                                       f"{health.get('protocol')}, this server {wire.PROTOCOL_VERSION}: stop it with "
                                       f"`codefill serve --stop {_flag(conn.address)}` (or update it)")
            if health.get("state") == "ready":
                return health
            if health.get("state") == "error":
                raise EngineLoadFailed(f"{health.get('error')} (engine at {conn.address})")
            if time.monotonic() > deadline or self._closed.is_set():
                raise EngineUnavailable(f"the engine at {conn.address} was still loading after "
                                        f"{self.load_timeout:g} s")
            time.sleep(0.1)

    def _open(self, address: wire.Address) -> _Connection:
        try:
            return _Connection.open(address, self._token(address), self._lost)
        except OSError as exc:
            if not self.auto:
                raise EngineUnavailable(f"no engine at {address} ({wire.os_reason(exc)}); start one with "
                                        f"`codefill serve`") from None
        with _spawn_lock(Path(address.path + ".lock")):
            try:  # another editor window may have started it while we waited for the lock
                return _Connection.open(address, None, self._lost)
            except OSError:
                pass
            process, log_path = self._spawn(address)
            deadline = time.monotonic() + self.start_timeout
            while True:
                try:
                    return _Connection.open(address, None, self._lost)
                except OSError:
                    pass
                status = process.poll()
                if status is not None:
                    raise EngineUnavailable(f"the engine exited with status {status} before it listened: "
                                            f"{_last_line(log_path)} (log: {log_path})")
                if time.monotonic() > deadline:
                    raise EngineUnavailable(f"the engine did not listen on {address} within "
                                            f"{self.start_timeout:g} s (log: {log_path})")
                time.sleep(0.05)

    def _token(self, address: wire.Address) -> str | None:
        if address.kind != "tcp":
            return None
        path = Path(self.token_file).expanduser() if self.token_file else wire.default_token_path(address.port)
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise EngineUnavailable(f"no token file {path}: is an engine running there? (`codefill serve --tcp "
                                    f"{address.host}:{address.port}` writes one when it starts)") from None
        except OSError as exc:
            raise EngineUnavailable(f"cannot read the engine token {path}: {wire.os_reason(exc)}") from None

    def _spawn(self, address: wire.Address) -> tuple[subprocess.Popen, Path]:
        """Start `codefill serve` on the socket, detached; its output goes to a log file beside the socket."""
        cmd = [sys.executable, "-m", "engine.cli", "serve", "--unix", address.path, "--device", self.device,
               "--idle-exit-minutes", f"{self.idle_exit_minutes:g}"]
        if self.model_path:
            cmd += ["--model", self.model_path]
        if self.steps:
            cmd += ["--steps", str(self.steps)]
        if self.factory:
            cmd += ["--engine-factory", self.factory]
        log_path = Path(address.path).with_suffix(".log")
        try:
            if log_path.stat().st_size > 1_000_000:
                log_path.replace(log_path.with_suffix(".log.1"))
        except OSError:
            pass
        package_root = str(Path(wire.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        if self.process is not None:
            self.process.poll()  # reap the one that died
        with open(log_path, "ab") as out:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       cwd=str(Path(address.path).parent), env=env, start_new_session=True,
                                       close_fds=True)
        self.process = process
        log.info("started the engine (pid %d) on %s; its log: %s", process.pid, address, log_path)
        return process, log_path

    def _lost(self, conn: _Connection, reason: str) -> None:
        with self._lock:
            if conn is not self._conn or self._closed.is_set():
                return
            self._conn = None
        log.warning("the engine at %s went away (%s); fills are off until it is back", conn.address, reason)
        self._restart(startup=False)

    def _restart(self, startup: bool) -> None:
        """Go to "restarting" and bring the engine back in a background thread (unless closed or already at it).

        startup: load() could not reach it, and its caller tells the user; else the engine was lost.
        """
        with self._lock:
            if self._closed.is_set() or self.state == "restarting":
                return
            self.state = "restarting"
        threading.Thread(target=self._bring_back, args=(startup,), name="codefill-engine-restart",
                         daemon=True).start()

    def _bring_back(self, startup: bool) -> None:
        """Reconnect (in auto mode: restart the engine) with exponential backoff, until it works or we close.

        A lost engine is tried at once, and shown to the user (once) when it is not back after
        LOST_NOTICE_AFTER_TRIES tries; after a failed start-up (already shown) the first try waits.
        """
        delay, longest = RESTART_BACKOFF_S
        tries = 0
        if startup and self._closed.wait(delay):
            return
        while not self._closed.is_set():
            tries += 1
            try:
                self._connect_and_wait()
            except EngineLoadFailed as exc:
                self.state = "failed"
                self.notices("restart-failed", 40, f"the engine could not load its model: {exc}")
                return
            except Exception as exc:
                if not startup and tries == LOST_NOTICE_AFTER_TRIES:
                    self.notices("lost", 30, f"the engine at {self.address} went away and is not back after {tries} "
                                 f"tries ({exc}); fills are off until it is (it is tried again in the background)")
                else:
                    log.warning("the engine is not back (try %d: %s); next try in %.1f s", tries, exc, delay)
                if self._closed.wait(delay):
                    return
                delay = min(delay * 2, longest)
            else:
                self.restarts += 1
                log.info("the engine is back at %s after %d tr%s", self.address, tries, "y" if tries == 1 else "ies")
                return

    def _note_device(self, device: Any) -> None:
        if isinstance(device, str) and self._device_seen and device != self._device_seen:
            if device.startswith("cpu") and not self._device_seen.startswith("cpu"):
                self.notices("cpu", 30, f"the engine ran out of memory on {self._device_seen} and now runs on the "
                             "CPU, slower. Stop it (or let it idle out) to use the GPU again.")
        if isinstance(device, str):
            self._device_seen = device


def _absolute_model(model: str | None) -> str | None:
    """A model directory as an absolute path (the engine process runs elsewhere); a built-in name as it is."""
    if model and Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    return model


def _absolute_factory(factory: str | None) -> str | None:
    """A file.py:name factory with an absolute path (the engine process runs elsewhere)."""
    if not factory:
        return factory
    target, sep, name = factory.rpartition(":")
    if target.endswith(".py"):
        return f"{Path(target).resolve()}{sep}{name}"
    return factory


@contextmanager
def _spawn_lock(path: Path) -> Iterator[None]:
    """One editor window at a time starts an engine on a socket."""
    import fcntl  # POSIX only, like the Unix socket itself; the in-process mode never needs it

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _flag(address: wire.Address) -> str:
    """The `codefill serve` option that names an address."""
    return f"--unix {address.path}" if address.kind == "unix" else f"--tcp {address.host}:{address.port}"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"


def _tail(text: str) -> str:
    return text if len(text) <= MAX_CONTEXT_CHARS else text[-MAX_CONTEXT_CHARS:]


def _head(text: str) -> str:
    return text if len(text) <= MAX_CONTEXT_CHARS else text[:MAX_CONTEXT_CHARS]
