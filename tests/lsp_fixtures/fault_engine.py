"""Engines that fail the way real ones do, built on the scripted fake engine (tests/lsp_fixtures/fake_engine.py).

make_gpu_oom_engine: every fill raises CUDA's out-of-memory error unless the engine was built for the CPU.
make_oom_engine: every fill runs out of memory, on any device.
make_budget_oom_engine: fills with a budget over 16 tokens run out of memory.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("_codefill_fake_engine_base", Path(__file__).with_name("fake_engine.py"))
assert _spec is not None and _spec.loader is not None
_fake = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _fake
_spec.loader.exec_module(_fake)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, with its message, without importing torch."""


class OomEngine(_fake.FakeEngine):
    def __init__(self, device: str, when: str) -> None:
        super().__init__()
        self.device = device
        self.when = when

    def fill(self, prefix: str, suffix: str, max_tokens: int = 32, **kwargs: Any) -> Any:
        if self.when == "always" or (self.when == "gpu" and self.device != "cpu") or \
                (self.when == "budget" and max_tokens > 16):
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total "
                                   "capacity; 78.50 GiB already allocated)")
        return super().fill(prefix, suffix, max_tokens, **kwargs)


def make_gpu_oom_engine(path: str | None = None, device: str = "auto", steps: int = 0) -> OomEngine:
    return OomEngine(device, "gpu")


def make_oom_engine(path: str | None = None, device: str = "auto", steps: int = 0) -> OomEngine:
    return OomEngine(device, "always")


def make_budget_oom_engine(path: str | None = None, device: str = "auto", steps: int = 0) -> OomEngine:
    return OomEngine(device, "budget")
