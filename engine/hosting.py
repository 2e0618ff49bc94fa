"""Building and holding an engine: the built-in model or a factory's engine, loaded in the background, with the
out-of-memory fallbacks. Imports no torch until a model loads (engine.api and engine.scheduler import it then)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("codefill.serve")  # the engine server's log: EngineHost reports loading and fallbacks there


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
        self.scheduler: Any = None  # where fills go: None until loaded, replaced by the fallback to the CPU
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model (blocking); failures are kept in state/error, never raised."""
        started = time.monotonic()
        try:
            self.scheduler = self._make_scheduler(self.device)
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
                "fallbacks": list(self.fallbacks), "queued": self.scheduler.pending() if self.scheduler else 0}

    def count(self, name: str) -> None:
        """Add one to a counter that health reports (from any thread)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def after_out_of_memory(self, scheduler: Any, exc: BaseException) -> bool:
        """One fill per batch first; then, on a GPU, the model moves to the CPU. False: nothing left to try."""
        free_device_memory()
        with self._lock:
            if scheduler is not self.scheduler:
                return True  # another request fell back meanwhile: retry on what it made
            if scheduler.max_batch > 1:
                scheduler.max_batch = 1
                self.fallbacks.append("batch 1")
                log.warning("out of memory (%s); one fill per batch from now on", exc)
                return True
            if self.device.startswith("cpu"):
                return False
            log.warning("out of memory on %s (%s); moving the model to the CPU", self.device, exc)
            self.scheduler = self._make_scheduler("cpu")
            self.fallbacks.append("cpu")
        threading.Thread(target=scheduler.close, daemon=True).start()
        return True

    def close(self) -> None:
        """Stop the scheduler."""
        if self.scheduler is not None:
            self.scheduler.close()
