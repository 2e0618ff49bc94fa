"""The engine server's wire protocol and addresses, shared by `codefill serve` (engine/serve.py) and its clients
(lsp_server/remote_engine.py, scripts, tests). Imports no torch: the language server imports it at start-up.

The protocol is JSON lines. A request is one object per line, {"id", "method", "params"}; the answer is
{"id", "result"} or {"id", "error": {"code", "message"}}. Methods:

  fill      params mirror engine.api.FillRequest (prefix, suffix, max_tokens, single_line, steps, temperature,
            seed) plus "key" (the document uri): the newest fill per key wins, across every connection.
  cancel    params {"id": <the fill's id>}: stop that fill (it is answered with the "cancelled" error).
  health    the model, device, uptime, clients (other than the one asking) and requests served; "state" is
            loading, ready or error.
  shutdown  answer (with the engine's pid), then exit.
  auth      params {"token"}: the first message on a TCP connection, which is refused without it.

A line that is not JSON, or not a request, gets an error answer (id null where none could be read); the connection
lives on. Only a line longer than MAX_LINE_BYTES closes it (and a client that leaves its answers unread for too
long). A fill whose id is already in flight on the connection is not started: it is answered with an error whose id
is null (that id's answer belongs to the running fill). A client that ends its input (shutdown(SHUT_WR)) still gets
the answers to its fills in flight.

On TCP, until `auth` succeeds, a line may be at most AUTH_LINE_BYTES, anything but a right `auth` is answered with an
error and closes the connection, and a connection that has not authenticated within AUTH_TIMEOUT_S is closed. An
engine keeps at most MAX_CONNECTIONS connections; one more is answered with a BUSY error (id null) and closed. Only
authenticated connections are clients (counted in health, and keeping the engine from exiting idle).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 32 * 1024 * 1024  # one request line (a fill carries its context); longer closes the connection
MAX_INFLIGHT = 64  # fills one connection may have waiting at once
MAX_CONNECTIONS = 64  # connections one engine keeps open at once; more are refused
AUTH_LINE_BYTES = 4096  # the longest line a TCP connection may send before its token
AUTH_TIMEOUT_S = 5.0  # a TCP connection without its token after this long is closed
# The longest Unix socket path: sun_path holds 108 bytes with the final NUL on Linux, 104 on macOS and the BSDs.
MAX_UNIX_PATH_BYTES = 107 if sys.platform.startswith("linux") else 103
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
BUSY = 7  # too many fills waiting on this connection, or too many connections

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
    return _private_dir(_runtime_base())


def _runtime_base() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    # A stale or foreign $XDG_RUNTIME_DIR (another user's after `su`, read-only) is passed over, as a missing one is.
    usable = xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK)
    return Path(xdg) / "codefill" if usable else _tmp_runtime_dir()


def _tmp_runtime_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"codefill-{os.getuid()}"


def _private_dir(base: Path) -> Path:
    """base, made if need be and checked to be ours and 0700; raises ServeError."""
    try:
        try:
            base.mkdir(mode=0o700)
        except FileExistsError:
            pass
        st = base.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise ServeError(f"{base}: not a directory of ours; refusing to use it for the engine socket")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(base, 0o700)
    except OSError as exc:
        raise ServeError(f"{base}: cannot make a private directory for the engine socket "
                         f"({exc.strerror or exc}); set TMPDIR to a directory you can write, or name a socket: "
                         f"codefill serve --unix PATH, codefill-lsp --engine unix:PATH") from None
    return base


def unix_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a Unix socket cannot live at this path (it is too long), or None."""
    size = len(os.fsencode(path))
    if size <= MAX_UNIX_PATH_BYTES:
        return None
    return (f"the socket path {os.fspath(path)} is {size} bytes long; a Unix socket's path may have at most "
            f"{MAX_UNIX_PATH_BYTES}: choose a shorter one")


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
    """The socket an engine with these settings listens on by default: engine.sock for the default engine.

    In /tmp/codefill-$UID when the path under $XDG_RUNTIME_DIR would be too long for a socket.
    """
    key = engine_key(model, device, steps, factory)
    name = f"engine-{key}.sock" if key else "engine.sock"
    base = _runtime_base()
    if unix_path_problem(base / name):
        base = _tmp_runtime_dir()
    return _private_dir(base) / name


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
            stream.write(encode_line({"id": "auth", "method": "auth", "params": {"token": token}}))
        stream.write(encode_line({"id": 1, "method": method, "params": params or {}}))
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


def os_reason(exc: OSError) -> str:
    """What went wrong, in words (some OSErrors, such as a too long socket path, have no strerror)."""
    return exc.strerror or str(exc)


def encode_line(obj: Any) -> bytes:
    """One message as a protocol line: compact JSON and a newline."""
    # ensure_ascii: lone surrogates (which JSON allows and editors send) survive the round trip.
    return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"
