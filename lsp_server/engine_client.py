"""How the server reaches the engine. In-process for now; a resident engine over a socket slots in later."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

log = logging.getLogger("codefill.engine_client")


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
        """Whether load() has finished and fill() may be called."""
        ...

    def load(self) -> None:
        """Load the model (blocking; the server calls it from a background thread)."""
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
    ) -> FillResult:
        """Fill the span between prefix and suffix (blocking; raises engine errors)."""
        ...


def _load_factory(spec: str) -> Callable[..., Any]:
    """A callable from "package.module:name" or "path/to/file.py:name"."""
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


class InProcessEngine:
    """The engine in this process. Torch and the model are imported in load(), never at start-up."""

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "auto",
        steps: int = 0,
        factory: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = device
        self.steps = steps
        self.factory = factory  # "module:callable" taking (path, device, steps); tests and other engines
        self._engine: Any = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def load(self) -> None:
        with self._lock:
            if self._engine is not None:
                return
            if self.factory:
                make = _load_factory(self.factory)
                self._engine = make(path=self.model_path, device=self.device, steps=self.steps)
            else:
                from engine.api import Engine  # imports torch: only here, in the loader thread

                self._engine = Engine.from_pretrained(path=self.model_path, device=self.device, steps=self.steps)
            log.info("engine loaded: %s", self.model_path or "built-in model")

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
    ) -> FillResult:
        engine = self._engine
        if engine is None:
            raise RuntimeError("engine is not loaded")
        out = engine.fill(
            prefix,
            suffix,
            max_tokens,
            single_line=single_line,
            steps=steps or None,
            temperature=temperature,
            seed=seed,
            cancel=cancel,
        )
        return FillResult(text=out.text, forward_passes=getattr(out, "forward_passes", 0),
                          seconds=getattr(out, "seconds", 0.0))
