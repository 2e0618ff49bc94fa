"""`codefill serve`: the engine as a resident process that several editor windows share, over a local socket.

The protocol and the addresses are in engine/wire.py, the engine itself in engine/hosting.py. This module imports no
torch until the model loads, so the socket is listening before the import starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import logging
import os
import queue
import secrets
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from engine.cli import non_negative_int, positive_int
from engine.hosting import EngineHost, is_out_of_memory
from engine.wire import (
    AUTH_LINE_BYTES,
    AUTH_TIMEOUT_S,
    AUTO_IDLE_EXIT_MINUTES,
    BUSY,
    CANCELLED,
    ENGINE_ERROR,
    FILL_PARAMS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LOAD_ERROR_GRACE_S,
    LOAD_FAILED,
    MAX_CONNECTIONS,
    MAX_INFLIGHT,
    MAX_LINE_BYTES,
    METHOD_NOT_FOUND,
    NOT_READY,
    OUT_OF_MEMORY,
    PARSE_ERROR,
    PROTOCOL_VERSION,
    UNAUTHORIZED,
    Address,
    ServeError,
    connect,
    default_socket_path,
    default_token_path,
    encode_line,
    is_loopback,
    os_reason,
    parse_address,
    request_once,
    unix_path_problem,
    write_private,
)

log = logging.getLogger("codefill.serve")


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
        scheduler = self.host.scheduler
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
            again = self.host.after_out_of_memory(self._scheduler, exc)
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


MAX_OUTBOX = 1024  # answers waiting for a client that does not read them; one more closes the connection


class Connection:
    """One client: a reader thread that dispatches requests, a writer thread that sends answers.

    A request never kills the connection: whatever goes wrong is answered. Before a TCP client has sent its token,
    though, any line but a right `auth` closes it (EngineServer closes one that is too slow to send it). At the end
    of the client's input (it closed, or only shut its sending side) nothing more is read; the fills in flight are
    still answered, then the connection closes. A client whose Unix socket is closed altogether has its fills
    cancelled at once; on TCP that looks like a half-close, so they run on until answered (or superseded).
    """

    def __init__(self, server: EngineServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.authenticated = server.token is None
        self.opened = time.monotonic()
        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        self.fills: dict[Any, FillJob] = {}
        self.lock = threading.Lock()
        self.reading = True
        self.closed = False

    def start(self) -> None:
        threading.Thread(target=self._write_loop, name=f"codefill-out-{self.peer}", daemon=True).start()
        threading.Thread(target=self._read_loop, name=f"codefill-in-{self.peer}", daemon=True).start()

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        if self.outbox.qsize() >= MAX_OUTBOX:
            log.warning("%s does not read its answers (%d waiting): closing the connection", self.peer, MAX_OUTBOX)
            self.close(abort=True)
            return
        self.outbox.put(encode_line(msg))

    def reply(self, msg_id: Any, result: Any = None, error: tuple[int, str] | None = None) -> None:
        if error is not None:
            self.send({"id": msg_id, "error": {"code": error[0], "message": error[1]}})
        else:
            self.send({"id": msg_id, "result": result})

    def close(self, abort: bool = False) -> None:
        """Cancel the fills in flight; the writer sends what is queued, then shuts the socket (abort: at once)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            jobs = list(self.fills.values())
        for job in jobs:
            job.cancel()
        self.outbox.put(None)
        if abort:  # the writer may be stuck sending to a client that does not read
            _shut(self.sock)
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
            _shut(self.sock)
            self.sock.close()

    def _read_loop(self) -> None:
        stream = self.sock.makefile("rb")
        try:
            while not self.closed:
                limit = MAX_LINE_BYTES if self.authenticated else AUTH_LINE_BYTES
                raw = stream.readline(limit + 1)
                if not raw:
                    break
                if len(raw) > limit and not raw.endswith(b"\n"):
                    self.reply(None, error=(INVALID_REQUEST, f"line longer than {limit} bytes"))
                    self.close()
                    break
                if not raw.strip():
                    continue
                self._dispatch(raw)
        except OSError:
            pass
        finally:
            self._end_of_input()

    def _end_of_input(self) -> None:
        """Nothing more comes from the client: close now, or once its fills in flight are answered."""
        with self.lock:
            self.reading = False
            waiting = len(self.fills)
        if waiting and not self.closed and not _peer_gone(self.sock):
            log.debug("%s ended its input; answering its %d fill(s) in flight first", self.peer, waiting)
            return
        self.close()

    def _dispatch(self, raw: bytes) -> None:
        """Handle one line and answer it; before the token, anything that is not a right `auth` closes."""
        msg_id = None
        try:
            msg = _parse_request(raw)
            msg_id = msg.get("id")
            if not isinstance(msg_id, (int, str, type(None))) or isinstance(msg_id, bool):
                msg_id = None
            self._handle(msg, msg_id)
        except _Reply as exc:
            self.reply(msg_id, error=(exc.code, exc.message))
        except Exception as exc:  # a bug of ours: answered, and the connection lives on
            self.server.internal_error(exc)
            self.reply(msg_id, error=(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}"))
        else:
            return
        if not self.authenticated:
            self.close()

    def _handle(self, msg: dict[str, Any], msg_id: Any) -> None:
        """Run a request's method (only `auth` before the token) and answer its result; raises _Reply."""
        method, params = msg.get("method"), msg.get("params")
        params = {} if params is None else params
        answer = "id" in msg
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

    def _authenticate(self, method: str, params: dict[str, Any]) -> None:
        token = params.get("token")
        if method != "auth" or not isinstance(token, str):
            log.warning("%s: refused, no token", self.peer)
            raise _Reply(UNAUTHORIZED, "this engine needs a token: send auth first")
        assert self.server.token is not None
        # surrogatepass: JSON may carry a lone surrogate, which plain UTF-8 cannot encode
        if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self.server.token.encode()):
            log.warning("%s: refused, wrong token", self.peer)
            raise _Reply(UNAUTHORIZED, "wrong token")
        self.authenticated = True
        self.server.joined(self)

    # -- methods ---------------------------------------------------------------------------------------------------

    def _on_auth(self, msg_id: Any, params: dict[str, Any], answer: bool) -> dict[str, Any]:
        return {"ok": True}

    def _on_health(self, msg_id: Any, params: dict[str, Any], answer: bool) -> dict[str, Any]:
        return self.server.health(asking=self)

    def _on_shutdown(self, msg_id: Any, params: dict[str, Any], answer: bool) -> dict[str, Any]:
        log.info("%s asked the engine to shut down", self.peer)
        threading.Timer(0.2, self.server.stop).start()  # let the answer go out first
        return {"ok": True, "pid": os.getpid()}

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
            duplicate = msg_id in self.fills
            if not duplicate and len(self.fills) >= MAX_INFLIGHT:
                raise _Reply(BUSY, f"more than {MAX_INFLIGHT} fills waiting on this connection")
            if not duplicate:
                self.fills[msg_id] = job
        if duplicate:  # answered with id null: an answer with this id would be taken for the running fill's
            message = f"a fill with id {msg_id!r} is already running on this connection; this one was not started"
            self.reply(None, error=(INVALID_REQUEST, message))
            return
        job.start()

    def _answer_fill(self, msg_id: Any, fill: Any, exc: BaseException | None) -> None:
        """A FillJob's answer (called on the scheduler's thread, or the reader's for a cancel)."""
        from engine.errors import EngineError, FillCancelled

        host = self.server.host
        with self.lock:
            self.fills.pop(msg_id, None)
            last = not self.reading and not self.fills  # the client ended its input: this was the last answer
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
        if last:
            self.close()


def _parse_request(raw: bytes) -> dict[str, Any]:
    """A request line as a JSON object; raises _Reply(PARSE_ERROR or INVALID_REQUEST)."""
    try:
        msg = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Reply(PARSE_ERROR, f"parse error: not UTF-8 (byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep ("[" * 100000)
        raise _Reply(PARSE_ERROR, f"parse error: {exc}") from None
    if not isinstance(msg, dict):
        raise _Reply(INVALID_REQUEST, "a request is a JSON object")
    return msg


def _shut(sock: socket.socket) -> None:
    """Shut both ways (which wakes a thread blocked reading or writing it); a closed socket is fine."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the other end closed its socket altogether, not only its sending side.

    A Unix socket tells (POLLHUP); on TCP both look the same until a write fails, so False there.
    """
    try:
        poller = select.poll()
        poller.register(sock, 0)
        return any(events & (select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))
    except (OSError, ValueError):  # closed meanwhile
        return True


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
    """Accepts connections on a Unix socket (0600) or loopback TCP (with a token) and serves an EngineHost.

    At most MAX_CONNECTIONS at once. A client is a connection that has authenticated (on a Unix socket, at once);
    only clients count in health and keep the engine from exiting idle.
    """

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
        self.connections: set[Connection] = set()  # every open one
        self.clients: set[Connection] = set()  # the authenticated ones
        self.clients_total = 0
        self.connections_total = 0
        self._refusing = False  # at MAX_CONNECTIONS (logged once until a connection closes)
        self._errors_seen: set[str] = set()  # internal errors logged with their traceback
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
                raise ServeError(f"cannot listen on {self.address}: {os_reason(exc)}") from None
            sock.listen(16)
            self._listener = sock
            self.address = Address("tcp", host=self.address.host, port=sock.getsockname()[1])
        return self.address

    def _bind_unix(self, path: Path) -> socket.socket:
        problem = unix_path_problem(path)
        if problem:
            raise ServeError(problem)
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
            raise ServeError(f"cannot listen on {path}: {os_reason(exc)}") from None
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
        for conn in list(self.connections):
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
            name = f"client{self.connections_total + 1}"
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            name = f"{peer[0]}:{peer[1]}"
        try:  # a client that stops reading cannot hold a writer thread forever
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 30, 0))
        except (OSError, AttributeError):
            pass
        conn = Connection(self, sock, name)
        with self._lock:
            full = len(self.connections) >= MAX_CONNECTIONS
            first_refusal = full and not self._refusing
            self._refusing = full
            if not full:
                self.connections.add(conn)
                self.connections_total += 1
        if full:
            if first_refusal:
                log.warning("%d connections already: refusing more until one closes", MAX_CONNECTIONS)
            _refuse(sock, BUSY, f"the engine has {MAX_CONNECTIONS} connections already; try again later")
            return
        if conn.authenticated:
            self.joined(conn)
        conn.start()

    def joined(self, conn: Connection) -> None:
        """A connection became a client (it authenticated, or needs not)."""
        with self._lock:
            if conn not in self.connections:  # closed meanwhile
                return
            self.clients.add(conn)
            self.clients_total += 1
            count = len(self.clients)
        log.debug("%s connected (%d clients)", conn.peer, count)

    def disconnected(self, conn: Connection) -> None:
        """A connection closed."""
        with self._lock:
            if conn not in self.connections:
                return
            self.connections.discard(conn)
            self._refusing = False
            if conn not in self.clients:
                return
            self.clients.discard(conn)
            if not self.clients:
                self._idle_since = time.monotonic()
            count = len(self.clients)
        log.debug("%s disconnected (%d clients)", conn.peer, count)

    def internal_error(self, exc: BaseException) -> None:
        """Log a bug met while answering a request: with its traceback the first time, in one line after."""
        kind = type(exc).__name__
        with self._lock:
            first = kind not in self._errors_seen
            self._errors_seen.add(kind)
        log.error("internal error answering a request: %s: %s", kind, exc, exc_info=exc if first else None)

    def _watch(self) -> None:
        """Close connections too slow to authenticate; exit when idle too long, or when the model failed and nobody
        is left to tell."""
        while not self.stopped.wait(0.25):
            now = time.monotonic()
            with self._lock:
                idle = now - self._idle_since if not self.clients else 0.0
                late = [c for c in self.connections if not c.authenticated and now - c.opened > AUTH_TIMEOUT_S]
            for conn in late:
                log.info("%s: no token within %g s: closing the connection", conn.peer, AUTH_TIMEOUT_S)
                conn.reply(None, error=(UNAUTHORIZED, f"no token within {AUTH_TIMEOUT_S:g} s"))
                conn.close()
            if self.host.state == "error" and idle >= LOAD_ERROR_GRACE_S:
                log.info("the model could not be loaded and no client is connected: exiting")
                self.stop()
            elif self.idle_exit_s and idle >= self.idle_exit_s:
                log.info("no clients for %.0f s: exiting", idle)
                self.stop()

    def health(self, asking: Connection | None = None) -> dict[str, Any]:
        """The host's health plus this server's view; "clients" counts the clients other than the one asking."""
        with self._lock:
            clients = len(self.clients - {asking})
        return {**self.host.health(), "clients": clients, "clients_total": self.clients_total,
                "pid": os.getpid(), "address": str(self.address), "protocol": PROTOCOL_VERSION}


def _refuse(sock: socket.socket, code: int, message: str) -> None:
    """Answer a connection that is not taken with one error line (if it fits the socket's buffer), and close it."""
    try:
        sock.setblocking(False)
        sock.send(encode_line({"id": None, "error": {"code": code, "message": message}}))
    except OSError:
        pass
    sock.close()


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
    p.add_argument("--steps", type=non_negative_int, default=0,
                   help="denoising steps per fill (0: the engine's default)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="fills that may share one batch")
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
            problem = f"cannot write the log file {log_file}: {os_reason(exc)}; logging to stderr only"
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
        host = EngineHost(args.model, args.device, args.steps, args.engine_factory, args.max_batch)
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
    """--status and --stop: talk to a running engine (--stop returns once it has stopped listening)."""
    where = args.tcp or args.unix or "the default socket"
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
        print(f"codefill serve: no engine answers at {where}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    if args.stop and not _wait_stopped(address, result.get("pid") if isinstance(result, dict) else None):
        print(f"codefill serve: the engine at {where} still runs {STOP_WAIT_S:g} s after it was asked to stop",
              file=sys.stderr)
        return 1
    return 0


STOP_WAIT_S = 10.0  # how long --stop waits for the engine to go


def _wait_stopped(address: Address, pid: Any, timeout: float = STOP_WAIT_S) -> bool:
    """Wait until the engine refuses connections and, when it runs on this machine, its process has exited."""
    local = address.kind == "unix" or is_loopback(address.host)
    pid = pid if local and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None
    deadline = time.monotonic() + timeout
    while True:
        if not _listening(address) and (pid is None or _exited(pid)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _listening(address: Address) -> bool:
    try:
        connect(address, timeout=1).close()
    except OSError:
        return False
    return True


def _exited(pid: int) -> bool:
    """Whether a process is gone (a zombie, exited but not yet reaped by its parent, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # not ours to signal: it exists
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (OSError, IndexError):  # gone meanwhile, or no /proc (not Linux): the closed socket is all we can see
        return True
    # The main thread shows as a zombie while the process's other threads are still being torn down, and
    # waitpid() cannot reap it until they are gone: only a zombie with no other threads has exited.
    return state in ("Z", "X") and threads <= 1


if __name__ == "__main__":
    sys.exit(main())
