"""How the server reaches the engine: in this process, or a resident engine (`codefill serve`) over a local socket.

Nothing here imports torch: InProcessEngine imports it in load(), which the server calls from a background thread;
RemoteEngine (lsp_server/remote_engine.py) never does.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from engine import hosting, wire  # building an engine, and the engine server's protocol: no torch at import
from engine.errors import EngineError

log = logging.getLogger("codefill.engine_client")

MAX_CONTEXT_CHARS = 200_000  # prefix/suffix sent to a remote engine: far more than a 256-token window can read
RESTART_BACKOFF_S = (0.5, 30.0)  # first and longest wait between tries to bring a dead engine back

Notify = Callable[[int, str], None]  # (logging level, message): shown to the user once per kind of event


class EngineUnavailable(EngineError):
    """The engine process cannot be reached right now (starting, restarting or gone)."""


class EngineLoadFailed(EngineError):
    """The engine process could not load its model."""


class EngineOutOfMemory(EngineError):
    """The device ran out of memory and no fallback helped."""


@dataclass(frozen=True)
class FillResult:
    """What the server needs of an engine fill."""

    text: str
    forward_passes: int = 0
    seconds: float = 0.0


class EngineClient(Protocol):
    """The server's view of an engine: load once, then fill."""

    @property
    def ready(self) -> bool:
        """Whether fill() may be called now (loaded, and for a remote engine, connected)."""
        ...

    def load(self) -> None:
        """Load the model or reach the engine (blocking; the server calls it from a background thread)."""
        ...

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
        """Fill the span between prefix and suffix (blocking; raises engine errors). key: the document."""
        ...

    def close(self) -> None:
        """Let go of the engine (a shared engine process stays up for its other clients)."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """How the server reaches its engine."""

    mode: str = "inprocess"  # "inprocess", "auto", or an address: unix:/path, tcp:127.0.0.1:PORT
    token_file: str | None = None  # for a TCP address (default: the engine's default token file for the port)
    timeout_s: float = 30.0  # a fill that takes longer is answered null; an engine that then misses a health check
    # is treated as hung: dropped, and in auto mode killed and restarted
    idle_exit_minutes: float = wire.AUTO_IDLE_EXIT_MINUTES  # for an engine that auto mode starts


def parse_engine_mode(value: str) -> str:
    """'inprocess', 'auto' or a valid address; raises ValueError."""
    if value in ("inprocess", "auto"):
        return value
    wire.parse_address(value)
    return value


def make_engine_client(spec: EngineSpec, model_path: str | None, device: str,
                       factory: str | None = None, notify: Notify | None = None) -> EngineClient:
    """The engine client a spec asks for, with the engine's default steps: the language server sends its `steps`
    setting with each fill, so a change of it needs no reload, and windows with other steps share one engine."""
    if spec.mode == "inprocess":
        return InProcessEngine(model_path, device, 0, factory=factory, notify=notify)
    from lsp_server.remote_engine import RemoteEngine  # sockets and process management only when asked for

    return RemoteEngine(spec.mode, model_path, device, 0, factory=factory, token_file=spec.token_file,
                        idle_exit_minutes=spec.idle_exit_minutes, notify=notify, fill_timeout=spec.timeout_s)


class Keyed:
    """An engine client whose fills carry a document's key: a shared engine lets the newest fill per key win."""

    def __init__(self, engine: EngineClient, key: str) -> None:
        self.engine = engine
        self.key = key

    def fill(self, *args: Any, **kwargs: Any) -> FillResult:
        """engine.fill(..., key=self.key)."""
        return self.engine.fill(*args, key=self.key, **kwargs)


_load_factory = hosting.load_factory  # the old name


class _Notices:
    """Tell the user about each kind of event once; log the rest."""

    def __init__(self, notify: Notify | None) -> None:
        self.notify = notify
        self.seen: set[str] = set()

    def __call__(self, kind: str, level: int, message: str) -> None:
        log.log(level, "%s", message)
        if kind in self.seen or self.notify is None:
            return
        self.seen.add(kind)
        try:
            self.notify(level, message)
        except Exception:
            log.exception("could not show a message")


# -- in this process -----------------------------------------------------------------------------------------------


class InProcessEngine:
    """The engine in this process. Torch and the model are imported in load(), never at start-up."""

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "auto",
        steps: int = 0,
        factory: str | None = None,
        notify: Notify | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = device
        self.steps = steps
        self.factory = factory  # "module:callable" taking (path, device, steps); tests and other engines
        self.notices = _Notices(notify)
        self._engine: Any = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def load(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            self._engine = hosting.build_engine(self.model_path, self.device, self.steps, self.factory)
            log.info("engine loaded: %s", self.model_path or "built-in model")

    def close(self) -> None:
        self._engine = None

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
        engine = self._engine
        if engine is None:
            raise RuntimeError("engine is not loaded")
        call = {"single_line": single_line, "steps": steps or None, "temperature": temperature, "seed": seed,
                "cancel": cancel}
        try:
            out = engine.fill(prefix, suffix, max_tokens, **call)
        except Exception as exc:
            if not hosting.is_out_of_memory(exc):
                raise
            out = self._fill_after_out_of_memory(exc, prefix, suffix, max_tokens, call)
        return FillResult(text=out.text, forward_passes=getattr(out, "forward_passes", 0),
                          seconds=getattr(out, "seconds", 0.0))

    def _fill_after_out_of_memory(self, exc: Exception, prefix: str, suffix: str, max_tokens: int,
                                  call: dict[str, Any]) -> Any:
        """Out of memory: retry with half the budget; then move the model to the CPU; then give up."""
        hosting.free_device_memory()
        budget = max_tokens // 2
        if budget >= 4:
            try:
                out = self._engine.fill(prefix, suffix, budget, **call)
            except Exception as again:
                if not hosting.is_out_of_memory(again):
                    raise
                exc = again
            else:
                self.notices("smaller", 30, f"out of memory ({_short(exc)}); fills use a smaller budget when "
                             "memory runs short")
                return out
        device = hosting.engine_device(self._engine, self.device)
        if device.startswith("cpu"):
            self.notices("oom-cpu", 40, f"out of memory on the CPU ({_short(exc)}): no fill until memory frees up")
            raise EngineOutOfMemory(f"out of memory on {device}: {_short(exc)}") from exc
        with self._lock:
            if hosting.engine_device(self._engine, self.device) == device:  # not moved meanwhile
                log.warning("out of memory on %s (%s): loading the model on the CPU", device, _short(exc))
                self._engine = None
                hosting.free_device_memory()
                self._engine = hosting.build_engine(self.model_path, "cpu", self.steps, self.factory)
                self.device = "cpu"
        self.notices("cpu", 30, f"the GPU ran out of memory ({_short(exc)}); the model now runs on the CPU, "
                     "slower. Restart the language server to use the GPU again.")
        try:
            return self._engine.fill(prefix, suffix, max_tokens, **call)
        except Exception as last:
            if hosting.is_out_of_memory(last):
                raise EngineOutOfMemory(f"out of memory on the CPU too: {_short(last)}") from last
            raise


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
