"""`codefill serve`: the engine as a resident process that several editor windows share, over a local socket.

The protocol is JSON lines. A request is one object per line, {"id", "method", "params"}; the answer is
{"id", "result"} or {"id", "error": {"code", "message"}}. Methods:

  fill      params mirror engine.api.FillRequest (prefix, suffix, max_tokens, single_line, steps, temperature,
            seed) plus "key" (the document uri): the newest fill per key wins, across every connection.
  cancel    params {"id": <the fill's id>}: stop that fill (it is answered with the "cancelled" error).
  health    the model, device, uptime, clients and requests served; "state" is loading, ready or error.
  shutdown  answer, then exit.
  auth      params {"token"}: the first message on a TCP connection, which is refused without it.

A line that is not JSON, or not a request, gets an error answer (id null where none could be read); the
connection lives on. Only a line longer than MAX_LINE_BYTES closes it. This module imports no torch until the
model loads, so the socket is listening before the import starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import importlib
import importlib.util
import ipaddress
import json
import logging
import os
import queue
import secrets
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("codefill.serve")

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 32 * 1024 * 1024  # one request line (a fill carries its context); longer closes the connection
MAX_INFLIGHT = 64  # fills one connection may have waiting at once
AUTO_IDLE_EXIT_MINUTES = 10.0  # an engine that an editor started goes away this long after its last client
LOAD_ERROR_GRACE_S = 3.0  # a model that failed to load is reported this long to clients that come, then we exit

# Error codes: JSON-RPC's for malformed requests, small positive numbers for what the engine says.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
CANCELLED = 1  # superseded by a newer fill for the same key, or cancelled
NOT_READY = 2  # the model is still loading
LOAD_FAILED = 3  # the model could not be loaded; it will not be
OUT_OF_MEMORY = 4  # out of memory even after the fallbacks
ENGINE_ERROR = 5  # the engine refused the request (EngineError)
UNAUTHORIZED = 6  # no token, or the wrong one
BUSY = 7  # too many fills waiting on this connection

FILL_PARAMS = {"prefix", "suffix", "max_tokens", "single_line", "steps", "temperature", "seed", "key"}


class ServeError(Exception):
    """A problem starting the engine server: printed as one line."""


# -- addresses -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where an engine listens: a Unix socket path, or a TCP host and port."""

    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(spec: str) -> Address:
    """unix:/path or tcp:HOST:PORT (a bare /path is a Unix socket); raises ValueError."""
    if spec.startswith("unix:") or spec.startswith("/"):
        path = spec[5:] if spec.startswith("unix:") else spec
        if not path:
            raise ValueError(f"{spec!r}: expected unix:/path/to/socket")
        return Address("unix", path=path)
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"{spec!r}: expected tcp:HOST:PORT")
        return Address("tcp", host=host.strip("[]") or "127.0.0.1", port=int(port))
    raise ValueError(f"{spec!r}: expected unix:/path/to/socket or tcp:HOST:PORT")


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def runtime_dir() -> Path:
    """A private directory for sockets, tokens and logs: $XDG_RUNTIME_DIR/codefill or /tmp/codefill-$UID (0700)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        base = Path(xdg) / "codefill"
    else:
        base = Path(tempfile.gettempdir()) / f"codefill-{os.getuid()}"
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = base.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ServeError(f"{base}: not a directory of ours; refusing to use it for the engine socket")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(base, 0o700)
    return base


def engine_key(model: str | None = None, device: str = "auto", steps: int = 0, factory: str | None = None) -> str:
    """'' for the default engine (built-in model, auto device), else a short digest of what it serves."""
    if model is None and device == "auto" and not steps and factory is None:
        return ""
    if model and Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())
    what = [model, device, steps, factory]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:10]


def default_socket_path(model: str | None = None, device: str = "auto", steps: int = 0,
                        factory: str | None = None) -> Path:
    """The socket an engine with these settings listens on by default: engine.sock for the default engine."""
    key = engine_key(model, device, steps, factory)
    return runtime_dir() / (f"engine-{key}.sock" if key else "engine.sock")


def default_token_path(port: int) -> Path:
    """Where a TCP engine on this port writes its token by default."""
    return runtime_dir() / f"engine-tcp-{port}.token"


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (0600), replacing what was there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def connect(address: Address, timeout: float = 5.0) -> socket.socket:
    """A connected socket to an engine; raises OSError."""
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address.path)
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def request_once(address: Address, method: str, params: Any = None, token: str | None = None,
                 timeout: float = 10.0) -> Any:
    """One request on a fresh connection (for scripts and tests); raises RuntimeError on an error answer."""
    with connect(address, timeout) as sock:
        sock.settimeout(timeout)
        stream = sock.makefile("rwb")
        if token is not None:
            stream.write(_line({"id": "auth", "method": "auth", "params": {"token": token}}))
        stream.write(_line({"id": 1, "method": method, "params": params or {}}))
        stream.flush()
        while True:
            raw = stream.readline()
            if not raw:
                raise ConnectionError(f"{address}: closed the connection")
            msg = json.loads(raw)
            if "error" in msg:
                raise RuntimeError(f"{msg['error'].get('code')}: {msg['error'].get('message')}")
            if msg.get("id") == 1:
                return msg.get("result")


def _line(obj: Any) -> bytes:
    # ensure_ascii: lone surrogates (which JSON allows and editors send) survive the round trip.
    return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"


# -- engines -------------------------------------------------------------------------------------------------------


def load_factory(spec: str) -> Callable[..., Any]:
    """A callable from "package.module:name" or "path/to/file.py:name" (an engine factory)."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ValueError(f"engine factory {spec!r} should look like module:name or file.py:name")
    if target.endswith(".py"):
        path = Path(target)
        module_spec = importlib.util.spec_from_file_location(f"_codefill_engine_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot import {target}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up here
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, name)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory (torch.cuda.OutOfMemoryError and its messages)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def free_device_memory() -> None:
    """Give cached GPU memory back after an out-of-memory error (nothing when torch is not loaded)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def engine_device(engine: Any, requested: str) -> str:
    """The device an engine runs on: the real one for engine.api.Engine, the requested one otherwise."""
    device = getattr(getattr(engine, "runner", None), "device", None)
    return str(device) if device is not None else requested


def build_engine(model: str | None, device: str, steps: int, factory: str | None = None) -> Any:
    """engine.api.Engine.from_pretrained, or a factory's engine (tests, other engines)."""
    if factory:
        return load_factory(factory)(path=model, device=device, steps=steps)
    from engine.api import Engine  # imports torch

    return Engine.from_pretrained(path=model, device=device, steps=steps)


class _SingleFills:
    """fill_batch for an engine that only has fill (a factory's engine), one request after another."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def fill_batch(self, requests: list[Any]) -> list[Any]:
        return [self.engine.fill(r.prefix, r.suffix, r.max_tokens, single_line=r.single_line, steps=r.steps,
                                 temperature=r.temperature, seed=r.seed, cancel=r.cancel) for r in requests]


class EngineHost:
    """The model behind a Scheduler: loaded in the background, with counts for health and out-of-memory fallbacks."""

    def __init__(self, model: str | None = None, device: str = "auto", steps: int = 0, factory: str | None = None,
                 max_batch: int = 8) -> None:
        self.model = model
        self.device = device
        self.steps = steps
        self.factory = factory
        self.max_batch = max_batch
        self.state = "loading"
        self.error: str | None = None
        self.model_path: str | None = model
        self.started = time.monotonic()
        self.requests_served = 0
        self.fills_completed = 0
        self.fallbacks: list[str] = []
        self.loaded = threading.Event()
        self._scheduler: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model (blocking); failures are kept in state/error, never raised."""
        started = time.monotonic()
        try:
            self._scheduler = self._make_scheduler(self.device)
        except BaseException as exc:  # CheckpointError, ImportError, MemoryError: reported to every client
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "error"
            log.error("the model could not be loaded: %s", self.error)
        else:
            self.state = "ready"
            log.info("model %s ready on %s in %.1f s", self.model_path or "(built-in)", self.device,
                     time.monotonic() - started)
        finally:
            self.loaded.set()

    def _make_scheduler(self, device: str) -> Any:
        engine = build_engine(self.model, device, self.steps, self.factory)
        from engine.scheduler import Scheduler  # imports torch (after a model that cannot load has said so)

        self.device = engine_device(engine, device)
        path = getattr(engine, "path", None)
        if path is not None:
            self.model_path = str(path)
        return Scheduler(engine if hasattr(engine, "fill_batch") else _SingleFills(engine), self.max_batch)

    def health(self) -> dict[str, Any]:
        """What `health` answers (the server adds its clients)."""
        return {"state": self.state, "error": self.error, "model": self.model_path, "device": self.device,
                "steps": self.steps, "uptime_s": round(time.monotonic() - self.started, 3),
                "requests_served": self.requests_served, "fills_completed": self.fills_completed,
                "fallbacks": list(self.fallbacks), "queued": self._scheduler.pending() if self._scheduler else 0}

    def count(self, name: str) -> None:
        """Add one to a counter that health reports (from any thread)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _after_out_of_memory(self, scheduler: Any, exc: BaseException) -> bool:
        """One fill per batch first; then, on a GPU, the model moves to the CPU. False: nothing left to try."""
        free_device_memory()
        with self._lock:
            if scheduler is not self._scheduler:
                return True  # another request fell back meanwhile: retry on what it made
            if scheduler.max_batch > 1:
                scheduler.max_batch = 1
                self.fallbacks.append("batch 1")
                log.warning("out of memory (%s); one fill per batch from now on", exc)
                return True
            if self.device.startswith("cpu"):
                return False
            log.warning("out of memory on %s (%s); moving the model to the CPU", self.device, exc)
            self._scheduler = self._make_scheduler("cpu")
            self.fallbacks.append("cpu")
        threading.Thread(target=scheduler.close, daemon=True).start()
        return True

    def close(self) -> None:
        """Stop the scheduler."""
        if self._scheduler is not None:
            self._scheduler.close()


class FillJob:
    """One client's fill on its way through the scheduler: answered once, by callback, with no thread of its own.

    Out of memory: retried with one fill per batch, then (on a GPU) with the model moved to the CPU.
    """

    def __init__(self, host: EngineHost, request: Any, key: str | None,
                 done: Callable[[Any, BaseException | None], None]) -> None:
        self.host = host
        self.request = request
        self.key = key
        self.done = done
        self.tries = 0
        self.cancelled = False
        self.answered = False
        self._attempt: Any = None
        self._future: Any = None
        self._scheduler: Any = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Submit to the scheduler (newest per key wins)."""
        scheduler = self.host._scheduler
        attempt = dataclasses.replace(self.request, cancel=None)
        try:
            future = scheduler.submit(attempt, self.key)  # sets attempt.cancel to the job's own event
        except RuntimeError as exc:  # the scheduler closed: the server is stopping
            self._answer(None, exc)
            return
        with self._lock:
            self._attempt, self._future, self._scheduler = attempt, future, scheduler
            cancelled = self.cancelled
        if cancelled:
            attempt.cancel.set()
            future.cancel()
        future.add_done_callback(self._finished)

    def cancel(self) -> None:
        """Stop the fill and answer it as cancelled now."""
        from engine.errors import FillCancelled

        with self._lock:
            self.cancelled = True
            attempt, future = self._attempt, self._future
        if attempt is not None:
            attempt.cancel.set()
            future.cancel()
        self._answer(None, FillCancelled("cancelled by the client"))

    def _finished(self, future: Any) -> None:
        from engine.errors import FillCancelled

        if future.cancelled():
            self._answer(None, FillCancelled("cancelled"))
            return
        exc = future.exception()
        if exc is None:
            self.host.count("fills_completed")
            self._answer(future.result(), None)
        elif is_out_of_memory(exc) and self.tries < 3 and not self.cancelled:
            self.tries += 1
            threading.Thread(target=self._after_out_of_memory, args=(exc,), name="codefill-oom", daemon=True).start()
        else:
            self._answer(None, exc)

    def _after_out_of_memory(self, exc: BaseException) -> None:
        try:
            again = self.host._after_out_of_memory(self._scheduler, exc)
        except Exception as fallback_failed:  # the CPU load itself failed
            self._answer(None, fallback_failed)
            return
        if again:
            self.start()
        else:
            self._answer(None, exc)

    def _answer(self, result: Any, exc: BaseException | None) -> None:
        with self._lock:
            if self.answered:
                return
            self.answered = True
        self.done(result, exc)


# -- the socket server ---------------------------------------------------------------------------------------------


class _Reply(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Connection:
    """One client: a reader thread that dispatches requests, a writer thread that sends answers."""

    def __init__(self, server: EngineServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.authenticated = server.token is None
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        self.fills: dict[Any, FillJob] = {}
        self.lock = threading.Lock()
        self.closed = False

    def start(self) -> None:
        threading.Thread(target=self._write_loop, name=f"codefill-out-{self.peer}", daemon=True).start()
        threading.Thread(target=self._read_loop, name=f"codefill-in-{self.peer}", daemon=True).start()

    def send(self, msg: dict[str, Any]) -> None:
        if not self.closed:
            self.outbox.put(_line(msg))

    def reply(self, msg_id: Any, result: Any = None, error: tuple[int, str] | None = None) -> None:
        if error is not None:
            self.send({"id": msg_id, "error": {"code": error[0], "message": error[1]}})
        else:
            self.send({"id": msg_id, "result": result})

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            jobs = list(self.fills.values())
        for job in jobs:
            job.cancel()
        self.outbox.put(None)  # the writer sends what is queued, then shuts the socket
        self.server.disconnected(self)

    def _write_loop(self) -> None:
        try:
            while True:
                data = self.outbox.get()
                if data is None:
                    break
                self.sock.sendall(data)
        except OSError:
            pass
        finally:
            self.close()
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def _read_loop(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            while not self.closed:
                raw = stream.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    self.reply(None, error=(INVALID_REQUEST, f"line longer than {MAX_LINE_BYTES} bytes"))
                    break
                if not raw.strip():
                    continue
                self._dispatch(raw)
        except OSError:
            pass
        finally:
            self.close()

    def _dispatch(self, raw: bytes) -> None:
        try:
            msg = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self.reply(None, error=(PARSE_ERROR, f"parse error: not UTF-8 (byte {exc.start})"))
            return
        except ValueError as exc:
            self.reply(None, error=(PARSE_ERROR, f"parse error: {exc}"))
            return
        if not isinstance(msg, dict):
            self.reply(None, error=(INVALID_REQUEST, "a request is a JSON object"))
            return
        msg_id = msg.get("id")
        if not isinstance(msg_id, (int, str, type(None))) or isinstance(msg_id, bool):
            msg_id = None
        method, params = msg.get("method"), msg.get("params")
        params = {} if params is None else params
        answer = "id" in msg
        try:
            if not isinstance(method, str):
                raise _Reply(INVALID_REQUEST, "a request needs a string method")
            if not isinstance(params, dict):
                raise _Reply(INVALID_PARAMS, "params must be an object")
            if not self.authenticated:
                self._authenticate(method, params)
                if answer:
                    self.reply(msg_id, {"ok": True})
                return
            handler = getattr(self, f"_on_{method}", None) if method.isidentifier() else None
            if handler is None:
                raise _Reply(METHOD_NOT_FOUND, f"unknown method {method!r}")
            result = handler(msg_id, params, answer)
            if result is not None and answer:
                self.reply(msg_id, result)
        except _Reply as exc:
            self.reply(msg_id, error=(exc.code, exc.message))
            if exc.code == UNAUTHORIZED:
                self.close()

    def _authenticate(self, method: str, params: dict[str, Any]) -> None:
        token = params.get("token")
        if method != "auth" or not isinstance(token, str):
            log.warning("%s: refused, no token", self.peer)
            raise _Reply(UNAUTHORIZED, "this engine needs a token: send auth first")
        assert self.server.token is not None
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            log.warning("%s: refused, wrong token", self.peer)
            raise _Reply(UNAUTHORIZED, "wrong token")
        self.authenticated = True

    # -- methods ---------------------------------------------------------------------------------------------------

    def _on_auth(self, msg_id: Any, params: dict[str, Any], answer: bool) -> dict[str, Any]:
        return {"ok": True}

    def _on_health(self, msg_id: Any, params: dict[str, Any], answer: bool) -> dict[str, Any]:
        return self.server.health()

    def _on_shutdown(self, msg_id: Any, params: dict[str, Any], answer: bool) -> dict[str, Any]:
        log.info("%s asked the engine to shut down", self.peer)
        threading.Timer(0.2, self.server.stop).start()  # let the answer go out first
        return {"ok": True}

    def _on_cancel(self, msg_id: Any, params: dict[str, Any], answer: bool) -> dict[str, Any]:
        target = params.get("id")
        with self.lock:
            job = self.fills.get(target) if isinstance(target, (int, str)) else None
        if job is not None:
            job.cancel()
        return {"cancelled": job is not None}

    def _on_fill(self, msg_id: Any, params: dict[str, Any], answer: bool) -> None:
        if not answer or msg_id is None:
            raise _Reply(INVALID_REQUEST, "fill needs an id")
        request, key = _fill_request(params)
        host = self.server.host
        if host.state == "loading":
            raise _Reply(NOT_READY, "the model is still loading")
        if host.state == "error":
            raise _Reply(LOAD_FAILED, f"the model could not be loaded: {host.error}")
        job = FillJob(host, request, key, lambda fill, exc: self._answer_fill(msg_id, fill, exc))
        with self.lock:
            if len(self.fills) >= MAX_INFLIGHT:
                raise _Reply(BUSY, f"more than {MAX_INFLIGHT} fills waiting on this connection")
            if msg_id in self.fills:
                raise _Reply(INVALID_REQUEST, f"a fill with id {msg_id!r} is already running")
            self.fills[msg_id] = job
        job.start()

    def _answer_fill(self, msg_id: Any, fill: Any, exc: BaseException | None) -> None:
        """A FillJob's answer (called on the scheduler's thread, or the reader's for a cancel)."""
        from engine.errors import EngineError, FillCancelled

        host = self.server.host
        with self.lock:
            self.fills.pop(msg_id, None)
        host.count("requests_served")
        if exc is None:
            self.reply(msg_id, {"text": fill.text, "tokens": list(getattr(fill, "tokens", [])),
                                "forward_passes": getattr(fill, "forward_passes", 0),
                                "seconds": getattr(fill, "seconds", 0.0), "span_len": getattr(fill, "span_len", 0),
                                "device": host.device})
        elif isinstance(exc, FillCancelled):
            self.reply(msg_id, error=(CANCELLED, str(exc) or "cancelled"))
        elif is_out_of_memory(exc):
            self.reply(msg_id, error=(OUT_OF_MEMORY, f"out of memory on {host.device}: {exc}"))
        elif isinstance(exc, EngineError):
            self.reply(msg_id, error=(ENGINE_ERROR, f"{type(exc).__name__}: {exc}"))
        elif isinstance(exc, (ValueError, TypeError, UnicodeError)):
            self.reply(msg_id, error=(INVALID_PARAMS, f"{type(exc).__name__}: {exc}"))
        else:
            log.error("fill failed: %s: %s", type(exc).__name__, exc)
            self.reply(msg_id, error=(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"))


def _fill_request(params: dict[str, Any]) -> tuple[Any, str | None]:
    """A FillRequest and its key from fill params; raises _Reply(INVALID_PARAMS)."""
    unknown = sorted(set(params) - FILL_PARAMS)
    if unknown:
        raise _Reply(INVALID_PARAMS, f"unknown fill params: {', '.join(unknown)}")

    def get(name: str, kinds: tuple[type, ...], default: Any, check: Callable[[Any], bool] = lambda v: True) -> Any:
        value = params.get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds) or not check(value):
            raise _Reply(INVALID_PARAMS, f"bad {name}: {value!r}")
        return value

    prefix = get("prefix", (str,), None)
    suffix = get("suffix", (str,), "")
    if prefix is None:
        raise _Reply(INVALID_PARAMS, "fill needs a prefix (string)")
    from engine.api import FillRequest  # torch is loaded by now: fills are refused until the model is

    request = FillRequest(
        prefix=prefix, suffix=suffix,
        max_tokens=get("max_tokens", (int,), 32, lambda v: 1 <= v <= 4096),
        single_line=get("single_line", (bool,), False),
        steps=get("steps", (int,), None, lambda v: 1 <= v <= 4096),
        temperature=float(get("temperature", (int, float), 0.0, lambda v: 0 <= v <= 100)),
        seed=get("seed", (int,), None),
    )
    return request, get("key", (str,), None)


class EngineServer:
    """Accepts connections on a Unix socket (0600) or loopback TCP (with a token) and serves an EngineHost."""

    def __init__(self, host: EngineHost, address: Address, token: str | None = None,
                 idle_exit_s: float = 0.0, allow_remote: bool = False) -> None:
        if address.kind == "tcp":
            if token is None:
                raise ServeError("a TCP engine needs a token")
            if not allow_remote and not is_loopback(address.host):
                raise ServeError(f"{address.host} is not a loopback address; pass --allow-remote to listen there")
        self.host = host
        self.address = address
        self.token = token
        self.idle_exit_s = idle_exit_s
        self.clients: set[Connection] = set()
        self.clients_total = 0
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._idle_since = time.monotonic()
        self._listener: socket.socket | None = None
        self._socket_inode: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def bind(self) -> Address:
        """Listen; returns the address (with the real port when 0 was asked). Raises ServeError."""
        if self.address.kind == "unix":
            self._listener = self._bind_unix(Path(self.address.path))
        else:
            family = socket.AF_INET6 if ":" in self.address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.address.host, self.address.port))
            except OSError as exc:
                sock.close()
                raise ServeError(f"cannot listen on {self.address}: {exc.strerror}") from None
            sock.listen(16)
            self._listener = sock
            self.address = Address("tcp", host=self.address.host, port=sock.getsockname()[1])
        return self.address

    def _bind_unix(self, path: Path) -> socket.socket:
        if path.exists() or path.is_symlink():
            st = path.lstat()
            if not stat.S_ISSOCK(st.st_mode):
                raise ServeError(f"{path} exists and is not a socket; not touching it")
            try:
                connect(Address("unix", path=str(path)), timeout=2).close()
            except OSError:
                path.unlink()  # a socket nobody listens on: left by an engine that died
            else:
                raise ServeError(f"an engine already listens on {path}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise ServeError(f"cannot listen on {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._socket_inode = path.stat().st_ino
        sock.listen(16)
        return sock

    def serve_forever(self) -> None:
        """Accept clients until stop(); watch for idleness."""
        assert self._listener is not None, "bind() first"
        threading.Thread(target=self._watch, name="codefill-idle", daemon=True).start()
        listener = self._listener
        while not self.stopped.is_set():
            try:
                sock, peer = listener.accept()
            except OSError:
                if self.stopped.is_set():
                    break
                time.sleep(0.05)
                continue
            self._accept(sock, peer)
        self._cleanup()

    def start(self) -> threading.Thread:
        """bind() if needed, then serve in a background thread (tests and embedding)."""
        if self._listener is None:
            self.bind()
        thread = threading.Thread(target=self.serve_forever, name="codefill-serve", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop accepting, close every connection and the scheduler."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        listener = self._listener
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for conn in list(self.clients):
            conn.close()
        self.host.close()
        self._cleanup()

    def _cleanup(self) -> None:
        if self.address.kind == "unix" and self._socket_inode is not None:
            path = Path(self.address.path)
            try:
                if path.lstat().st_ino == self._socket_inode:  # not a newer engine's socket
                    path.unlink()
            except OSError:
                pass
            self._socket_inode = None

    def _accept(self, sock: socket.socket, peer: Any) -> None:
        if self.address.kind == "unix":
            uid = _peer_uid(sock)
            if uid is not None and uid != os.getuid():
                log.warning("refused a connection from uid %d", uid)
                sock.close()
                return
            name = f"client{self.clients_total + 1}"
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = f"{peer[0]}:{peer[1]}"
        try:  # a client that stops reading cannot hold a writer thread forever
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 30, 0))
        except (OSError, AttributeError):
            pass
        conn = Connection(self, sock, name)
        with self._lock:
            self.clients.add(conn)
            self.clients_total += 1
        log.debug("%s connected (%d clients)", name, len(self.clients))
        conn.start()

    def disconnected(self, conn: Connection) -> None:
        """A connection closed."""
        with self._lock:
            if conn not in self.clients:
                return
            self.clients.discard(conn)
            if not self.clients:
                self._idle_since = time.monotonic()
        log.debug("%s disconnected (%d clients)", conn.peer, len(self.clients))

    def _watch(self) -> None:
        """Exit when idle too long, or when the model failed and nobody is left to tell."""
        while not self.stopped.wait(0.25):
            with self._lock:
                idle = time.monotonic() - self._idle_since if not self.clients else 0.0
            if self.host.state == "error" and idle >= LOAD_ERROR_GRACE_S:
                log.info("the model could not be loaded and no client is connected: exiting")
                self.stop()
            elif self.idle_exit_s and idle >= self.idle_exit_s:
                log.info("no clients for %.0f s: exiting", idle)
                self.stop()

    def health(self) -> dict[str, Any]:
        """The host's health plus this server's view."""
        with self._lock:
            clients = len(self.clients)
        return {**self.host.health(), "clients": clients, "clients_total": self.clients_total,
                "pid": os.getpid(), "address": str(self.address), "protocol": PROTOCOL_VERSION}


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (Linux), or None."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i")))
    except OSError:
        return None
    return uid


# -- command line --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of `codefill serve`."""
    p = argparse.ArgumentParser(prog="codefill serve",
                                description="Run the engine as a resident process that several editors share.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--unix", metavar="PATH", help="Unix socket path (default: engine.sock in "
                       "$XDG_RUNTIME_DIR/codefill or /tmp/codefill-$UID)")
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead (loopback only; needs a token)")
    p.add_argument("--token-file", metavar="PATH", help="where the TCP token is written (default: in the "
                   "runtime directory, engine-tcp-PORT.token)")
    p.add_argument("--allow-remote", action="store_true", help="allow --tcp on a non-loopback address")
    p.add_argument("--model", default=None, help="model directory (default: the built-in model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--steps", type=int, default=0, help="denoising steps per fill (0: the engine's default)")
    p.add_argument("--max-batch", type=int, default=8, help="fills that may share one batch")
    p.add_argument("--idle-exit-minutes", type=float, default=0.0,
                   help=f"exit after this long with no clients (0: never; editors that start the engine "
                        f"ask for {AUTO_IDLE_EXIT_MINUTES:g})")
    p.add_argument("--log-file", metavar="PATH", help="also write logs to this file")
    p.add_argument("--status", action="store_true", help="print the health of the engine at this address, and exit")
    p.add_argument("--stop", action="store_true", help="ask the engine at this address to exit")
    p.add_argument("--engine-factory", metavar="MODULE:NAME", help=argparse.SUPPRESS)  # tests: a scripted engine
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _setup_logging(log_file: str | None, verbose: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    problem = None
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            problem = f"cannot write the log file {log_file}: {exc.strerror}; logging to stderr only"
    fmt = logging.Formatter("%(asctime)s codefill-serve[%(process)d] %(levelname)s: %(message)s")
    for h in handlers:
        h.setFormatter(fmt)
    root = logging.getLogger("codefill")
    root.handlers[:] = handlers
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    if problem:
        log.warning(problem)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `codefill serve`."""
    args = build_parser().parse_args(argv)
    if args.status or args.stop:
        return _control(args)
    _setup_logging(args.log_file, args.verbose)
    token_path: Path | None = None
    try:
        if args.tcp:
            address = parse_address("tcp:" + args.tcp)
            token: str | None = secrets.token_urlsafe(32)
        else:
            path = args.unix or str(default_socket_path(args.model, args.device, args.steps, args.engine_factory))
            address, token = Address("unix", path=path), None
        host = EngineHost(args.model, args.device, max(args.steps, 0), args.engine_factory, max(args.max_batch, 1))
        server = EngineServer(host, address, token, idle_exit_s=max(args.idle_exit_minutes, 0) * 60,
                              allow_remote=args.allow_remote)
        address = server.bind()
        if token is not None:
            token_path = Path(args.token_file) if args.token_file else default_token_path(address.port)
            write_private(token_path, token + "\n")
    except (ServeError, ValueError, OSError) as exc:
        print(f"codefill serve: {exc}", file=sys.stderr)
        return 1

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    log.info("listening on %s%s (pid %d)", address, f", token in {token_path}" if token_path else "", os.getpid())
    threading.Thread(target=host.load, name="codefill-load", daemon=True).start()
    try:
        server.serve_forever()
    finally:
        server.stop()
        if token_path is not None:
            try:
                token_path.unlink()
            except OSError:
                pass
    return 1 if host.state == "error" else 0


def _control(args: argparse.Namespace) -> int:
    """--status and --stop: talk to a running engine."""
    try:
        if args.tcp:
            address = parse_address("tcp:" + args.tcp)
            token_file = Path(args.token_file) if args.token_file else default_token_path(address.port)
            token: str | None = token_file.read_text().strip()
        else:
            path = args.unix or str(default_socket_path(args.model, args.device, args.steps, args.engine_factory))
            address, token = Address("unix", path=path), None
        result = request_once(address, "shutdown" if args.stop else "health", token=token)
    except (OSError, ValueError, RuntimeError, ServeError) as exc:
        print(f"codefill serve: no engine answers at {args.tcp or args.unix or 'the default socket'}: {exc}",
              file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
