"""Honest timing: warm-up runs left out, device synchronised, median and p95 of the rest; the hardware named."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Stats:
    """Latency statistics of repeated runs, in milliseconds."""

    runs: int
    median_ms: float
    p95_ms: float
    min_ms: float
    mean_ms: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(seconds: list[float]) -> Stats:
    """Stats of a list of durations in seconds."""
    ms = [s * 1000.0 for s in seconds]
    return Stats(len(ms), statistics.median(ms), percentile(ms, 95), min(ms), statistics.fmean(ms))


def make_sync(device: Any) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def time_runs(fn: Callable[[], Any], reps: int, warmup: int, sync: Callable[[], None] = lambda: None,
              deadline: float | None = None) -> list[float]:
    """Run fn warmup times untimed, then up to reps times timed (fewer when the deadline, a perf_counter value,
    passes; at least one timed run); returns the timed durations in seconds."""
    for _ in range(warmup):
        fn()
    sync()
    out: list[float] = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
        if deadline is not None and time.perf_counter() > deadline:
            break
    return out


def time_interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int,
                     sync: Callable[[], None] = lambda: None, deadline: float | None = None) -> dict[str, list[float]]:
    """Time several variants round-robin (one run of each per round), so that a change in the machine's load
    during the measurement hits every variant alike; warm-up rounds are left out."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, reps)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - t0)
        if deadline is not None and time.perf_counter() > deadline:
            break
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's vector extensions that matter for matmuls (AVX2, AVX-512 bf16, AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16",
                                                           "amx_tile", "avx512_fp16"})
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine makes figures noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def hardware() -> dict[str, Any]:
    """Where the figures come from: CPU, cores, threads, torch, GPU, load."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE: idle OpenMP threads sleep, not spin
        "gpu": None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


def describe_hardware(info: dict[str, Any]) -> str:
    """One line naming the hardware."""
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    load = f", load average {info['load_average'][0]}" if info.get("load_average") else ""
    if info.get("omp_wait_policy"):
        load += f", OMP_WAIT_POLICY={info['omp_wait_policy']}"
    return (f"{info['cpu']} ({info['cores']} cores){gpu}; "
            f"torch {info['torch']}, transformers {info.get('transformers') or 'absent'}{load}")
