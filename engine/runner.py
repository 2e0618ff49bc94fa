"""Owns the device: lays requests out in one batch, runs the denoising steps with a context key/value cache."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.model import DiffusionLM, KVCache
from engine.sampler import SampleResult, SamplerConfig, denoise
from engine.tokenizer import CodeTokenizer
from engine.window import Window

LENGTH_BUCKET = 16  # window lengths are rounded up to a multiple of this, so shapes repeat


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA; fp32 on the CPU (bf16 measured no faster there, see README)."""
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32 or bfloat16")
    return table[name]


def pick_threads(requested: int, num_parameters: int) -> int:
    """CPU threads: as requested, else one for small models and up to four for larger ones.

    Small models gain little from more threads, and when another process keeps a core busy (an editor, a
    compiler, a training run) several OpenMP threads waiting on each other made a fill 20x slower in our
    measurements, while one thread was unaffected.
    """
    if requested > 0:
        return requested
    if num_parameters < 50_000_000:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class Layout:
    """A batch of windows aligned so every span starts at the same index."""

    ids: Tensor  # [B, T]
    positions: Tensor  # [B, T]
    key_mask: Tensor  # [B, T] bool
    span_start: int
    span_len: int  # K: the longest span of the batch; shorter spans are padded with end ids


def lay_out(windows: list[Window], mask_id: int, pad_id: int, device: torch.device) -> Layout:
    """Left-pad prefixes to a common span start, pad spans with end ids to a common length, right-pad the rest."""
    s0 = max(len(w.prefix_ids) for w in windows)
    k = max(w.span_len for w in windows)
    t = s0 + k + max(len(w.suffix_ids) for w in windows)
    t = -(-t // LENGTH_BUCKET) * LENGTH_BUCKET
    b = len(windows)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    positions = torch.zeros((b, t), dtype=torch.long)
    key_mask = torch.zeros((b, t), dtype=torch.bool)
    for i, w in enumerate(windows):
        p = len(w.prefix_ids)
        row = w.prefix_ids + [mask_id] * w.span_len + [pad_id] * (k - w.span_len) + w.suffix_ids
        lo = s0 - p
        ids[i, lo : lo + len(row)] = torch.tensor(row, dtype=torch.long)
        # Real tokens get consecutive positions; the span's padding is skipped so the suffix sits right after it.
        real = torch.ones(len(row), dtype=torch.bool)
        real[p + w.span_len : p + k] = False
        key_mask[i, lo : lo + len(row)] = real
        pos = torch.cumsum(real.long(), 0) - 1
        positions[i, lo : lo + len(row)] = pos.clamp_min(0)
    return Layout(ids.to(device), positions.to(device), key_mask.to(device), s0, k)


class Runner:
    """Runs a model over laid-out batches; thread-safe (one batch on the device at a time)."""

    def __init__(self, model: DiffusionLM, tok: CodeTokenizer, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tok = tok
        self.device = device
        self.dtype = dtype
        self.lock = threading.Lock()
        self.shift = model.cfg.logits_shift

    @torch.inference_mode()
    def run(self, windows: list[Window], cfg: SamplerConfig, stop_ids: list[int], cache: bool = True,
            refresh_every: int = 4, cancel: threading.Event | None = None) -> tuple[SampleResult, float]:
        """Denoise every window's span; returns the result and the seconds spent on the device."""
        tok = self.tok
        lay = lay_out(windows, tok.mask_id, tok.pad_id, self.device)
        s0, k = lay.span_start, lay.span_len
        ids = lay.ids
        # Block recomputed each cached step: the span, plus one position before it for shifted (Dream) logits.
        lo = s0 - self.shift
        state: dict[str, KVCache | None] = {"cache": None}

        def predict(span: Tensor, step: int) -> Tensor:
            ids[:, s0 : s0 + k] = span
            if not cache or step % max(1, refresh_every) == 0 or state["cache"] is None:
                hidden, kv = self.model(ids, positions=lay.positions, key_mask=lay.key_mask, fill_cache=cache,
                                        hidden_only=True)  # [B, T, H]
                state["cache"] = kv
                return self.model.lm_head(hidden[:, lo : lo + k])  # [B, K, V]: the only rows the sampler reads
            hidden, _ = self.model(ids[:, lo : s0 + k], positions=lay.positions[:, lo : s0 + k],
                                   key_mask=lay.key_mask, cache=state["cache"], start=lo,
                                   hidden_only=True)  # [B, K+shift, H]
            return self.model.lm_head(hidden[:, :k])  # [B, K, V]

        span = ids[:, s0 : s0 + k].clone()
        stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        with self.lock:
            t0 = time.perf_counter()
            result = denoise(predict, span, tok.mask_id, stop, tok.end_id, cfg, cancel)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
        return result, seconds
