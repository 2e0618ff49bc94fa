"""Owns the device: lays requests out in one batch, runs the denoising steps with a context key/value cache."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from engine import quantize
from engine.errors import DeviceError
from engine.graphs import GraphCache, GraphUnavailable
from engine.model import DiffusionLM, KVCache
from engine.sampler import SamplerConfig, SampleResult, denoise
from engine.tokenizer import CodeTokenizer
from engine.window import Window

LENGTH_BUCKET = 16  # window lengths are rounded up to a multiple of this, so shapes repeat
GRAPH_WIDTH_BUCKET = 128  # coarser with CUDA graphs: one captured graph per shape
END_CHECK_EVERY = 4  # on a GPU, steps between checks that every fill has ended (engine.sampler.denoise)

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else the CPU; 'cpu', 'cuda', 'cuda:N' or 'mps' as asked, when present.

    Raises DeviceError for any other name and for a device this machine lacks, before anything is loaded there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:[0-9]+)?", name):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise DeviceError(f"device {name}: no CUDA device is available")
        if device.index is not None and device.index >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise DeviceError(f"device {name}: no such CUDA device (this machine has {have})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name}: no MPS (Apple GPU) device is available")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA; fp32 on the CPU (bf16 measured no faster there, see README). 'int8' computes in
    fp32 around int8 weights (see wants_int8)."""
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "int8": torch.float32}
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}: use auto, float32, bfloat16, float16 or int8")
    return table[name]


def wants_int8(name: str, device: torch.device) -> bool:
    """Whether the transformer layers get int8 weights: 'int8' asks for them (CPU only); 'auto' takes them on the
    CPU where torch's int8 kernels run (engine.quantize); any other dtype keeps float weights."""
    if name == "int8":
        if device.type != "cpu":
            raise ValueError("dtype int8 is for the CPU; on a GPU use auto or bfloat16")
        if not quantize.available():
            log.warning("int8 matmuls are not available in this torch on this CPU: the engine runs in float32")
        return quantize.available()
    return name == "auto" and device.type == "cpu" and quantize.available()


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


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed buffers of up to 32 MiB in the process instead of giving them back to the OS.

    A CPU forward pass allocates and frees the same activation buffers every step; by default glibc serves large
    ones with fresh mmap()s, so each step pays page faults on memory it just released. Keeping them cut a one-line
    fill (32 tokens) from 328 to 304 ms median on our 2-core CPU (README, Speed). Returns whether the setting took
    (False off glibc, where nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 128 << 20))


@dataclass
class Layout:
    """A batch of windows laid out span first (see lay_out)."""

    ids: Tensor  # [B, T]
    positions: Tensor  # [B, T]
    key_mask: Tensor  # [B, T] bool
    span_start: int  # where the span sits in every row: `shift` (0, or 1 for models with shifted logits)
    span_len: int  # K: the longest span of the batch; shorter spans are padded with pad ids


def lay_out(windows: list[Window], mask_id: int, pad_id: int, device: torch.device, shift: int = 0,
            bucket: int = LENGTH_BUCKET) -> Layout:
    """Rows of [shift tokens][span][prefix][suffix][padding], each token carrying its place in the text.

    The transformer has no causal mask and reads order only from the positions it is given, so where a token sits
    in a row does not matter; putting the span first gives every batch the same span start whatever its prefixes,
    which keeps the shapes of a denoising step few (a CUDA graph per shape, see engine.graphs). With shifted logits
    (shift 1) the prefix's last token, whose output predicts the span's first token, comes just before the span.
    Rows are right-padded to a multiple of `bucket`; padding (and a shorter span's unused slots) are masked out.
    """
    k = max(w.span_len for w in windows)
    rows = []
    for w in windows:
        p = len(w.prefix_ids)
        span_pos = list(range(p, p + w.span_len)) + [p + w.span_len - 1] * (k - w.span_len)
        suffix_pos = list(range(p + w.span_len, p + w.span_len + len(w.suffix_ids)))
        lead = w.prefix_ids[p - shift :] if shift else []
        lead_pos = list(range(p - len(lead), p))
        head_ids = [pad_id] * (shift - len(lead)) + lead
        head_pos = [0] * (shift - len(lead)) + lead_pos
        head_real = [False] * (shift - len(lead)) + [True] * len(lead)
        rest = w.prefix_ids[: p - len(lead)]
        ids = head_ids + [mask_id] * w.span_len + [pad_id] * (k - w.span_len) + rest + w.suffix_ids
        pos = head_pos + span_pos + list(range(len(rest))) + suffix_pos
        real = head_real + [True] * w.span_len + [False] * (k - w.span_len) + [True] * (len(rest) + len(w.suffix_ids))
        rows.append((ids, pos, real))
    t = max(len(r[0]) for r in rows)
    t = -(-t // bucket) * bucket
    b = len(windows)
    ids_t = torch.full((b, t), pad_id, dtype=torch.long)
    pos_t = torch.zeros((b, t), dtype=torch.long)
    mask_t = torch.zeros((b, t), dtype=torch.bool)
    for i, (ids, pos, real) in enumerate(rows):
        n = len(ids)
        ids_t[i, :n] = torch.tensor(ids, dtype=torch.long)
        pos_t[i, :n] = torch.tensor(pos, dtype=torch.long)
        mask_t[i, :n] = torch.tensor(real, dtype=torch.bool)
    return Layout(ids_t.to(device), pos_t.to(device), mask_t.to(device), shift, k)


class Runner:
    """Runs a model over laid-out batches; thread-safe (one batch on the device at a time)."""

    def __init__(self, model: DiffusionLM, tok: CodeTokenizer, device: torch.device, dtype: torch.dtype,
                 cuda_graphs: bool = False, int8: bool = False, compile_steps: bool = False) -> None:
        """cuda_graphs: on a CUDA device, replay each step shape as a captured graph (engine.graphs); with
        compile_steps, each is compiled (torch.compile, inductor) before it is captured.
        int8: on the CPU, int8 weights in the transformer layers (engine.quantize)."""
        self.model = model.to(device=device, dtype=dtype).eval().fuse_projections()
        self.int8 = bool(int8 and quantize.quantize_blocks(self.model.layers))
        if self.int8:
            quantize.quantize_head(self.model)
        self.tok = tok
        self.device = device
        self.dtype = dtype
        self.lock = threading.Lock()
        self.shift = model.cfg.logits_shift
        self.graphs: GraphCache | None = None
        if cuda_graphs and device.type == "cuda":
            self.graphs = GraphCache(self.model, capture=True, compile_backend="inductor" if compile_steps else None)

    @property
    def precision(self) -> str:
        """What the weights are stored in: 'int8' or the float dtype's name."""
        return "int8" if self.int8 else str(self.dtype).replace("torch.", "")

    @torch.inference_mode()
    def run(self, windows: list[Window], cfg: SamplerConfig, stop_ids: list[int], cache: bool = True,
            refresh_every: int = 4, cancel: threading.Event | None = None,
            first_allowed: Tensor | None = None) -> tuple[SampleResult, float]:
        """Denoise every window's span; returns the result and the seconds spent on the device.

        first_allowed: [B, V] bool, the ids each span's first position may hold (healed prefixes; see denoise).
        """
        stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=self.device)
        allowed = None if first_allowed is None else first_allowed.to(self.device)
        with self.lock:
            t0 = time.perf_counter()
            if self.graphs is not None:
                try:
                    result = self._denoise(windows, cfg, stop, allowed, cache, refresh_every, cancel, self.graphs)
                except GraphUnavailable as exc:  # a capture that fails or disagrees: eager from now on, this fill included
                    log.warning("CUDA graphs turned off, the engine runs eagerly: %s", exc)
                    self.graphs = None
                    torch.cuda.synchronize(self.device)
            if self.graphs is None:
                result = self._denoise(windows, cfg, stop, allowed, cache, refresh_every, cancel, None)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
        return result, seconds

    def _denoise(self, windows: list[Window], cfg: SamplerConfig, stop: Tensor, allowed: Tensor | None, cache: bool,
                 refresh_every: int, cancel: threading.Event | None, graphs: GraphCache | None) -> SampleResult:
        tok = self.tok
        bucket = GRAPH_WIDTH_BUCKET if graphs is not None else LENGTH_BUCKET
        lay = lay_out(windows, tok.mask_id, tok.pad_id, self.device, self.shift, bucket)
        s0, k = lay.span_start, lay.span_len
        refresh = max(1, refresh_every)
        span = lay.ids[:, s0 : s0 + k].clone()
        check = END_CHECK_EVERY if self.device.type == "cuda" else 1  # a host sync per check on a GPU
        if graphs is not None:
            steps = graphs.get(lay.ids.shape[0], lay.ids.shape[1], k, self.shift, cache)
            static_ids = steps.load(lay.ids, lay.positions, lay.key_mask)

            def predict_static(span: Tensor, step: int) -> Tensor:
                static_ids[:, s0 : s0 + k] = span
                return steps.step(full=step % refresh == 0)

            return denoise(predict_static, span, tok.mask_id, stop, tok.end_id, cfg, cancel, allowed, check)

        ids = lay.ids
        state: dict[str, KVCache | None] = {"cache": None}

        def predict(span: Tensor, step: int) -> Tensor:
            # Span first: rows 0..K-1 predict the span (row 0 is the prefix's last token with shifted logits).
            ids[:, s0 : s0 + k] = span
            if not cache or step % refresh == 0 or state["cache"] is None:
                hidden, kv = self.model(ids, positions=lay.positions, key_mask=lay.key_mask, fill_cache=cache,
                                        hidden_only=True, cancel=cancel)  # [B, T, H]
                state["cache"] = kv
                return self.model.lm_head(hidden[:, :k])  # [B, K, V]: the only rows the sampler reads
            hidden, _ = self.model(ids[:, : s0 + k], positions=lay.positions[:, : s0 + k], key_mask=lay.key_mask,
                                   cache=state["cache"], start=0, hidden_only=True, cancel=cancel)  # [B, K+shift, H]
            return self.model.lm_head(hidden[:, :k])  # [B, K, V]

        return denoise(predict, span, tok.mask_id, stop, tok.end_id, cfg, cancel, allowed, check)
