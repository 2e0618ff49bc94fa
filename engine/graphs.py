"""A denoising step's forward passes with fixed shapes, captured once per shape as CUDA graphs and replayed.

On a GPU a small model's step is bound by kernel launches, not by arithmetic: a captured graph replays all of a
step's kernels in one launch (the H100 measurements in the README: 3.7 ms a step instead of 16 for a 0.5B model).
A graph replays fixed memory with fixed shapes, so `StepGraphs` owns static buffers for one batch shape (rows,
window width, span length, shift): the window's ids, positions and key mask, every layer's keys and values, and
the span's logits. engine.runner lays every batch out span first and rounds its width, so few shapes occur, and
keeps the last few `StepGraphs` it built.

Capturing checks itself: the first replay of each graph is compared with the same step run eagerly on the same
input, and a mismatch raises GraphUnavailable (the runner then runs eagerly from there on). Without CUDA, `capture=False` runs the
same static-buffer code eagerly, which is how the tests check it on the CPU.

With `compile_backend` ("inductor"), each step is handed to torch.compile (whole graph, static shapes) before it is
captured: a graph removes launch gaps but not kernels, and compiling fuses the small elementwise ones (norms, rotary
embedding, activations, residual adds) that dominate a small-batch step. The first step of each shape waits for the
compile; a compile that fails raises GraphUnavailable like a failed capture.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from engine.model import DiffusionLM, KVCache


class GraphUnavailable(RuntimeError):
    """Capturing a step failed, or its graph's output differed from the eager step's."""


class StepGraphs:
    """The whole-window step and the span (block) step of one batch shape, on static buffers."""

    def __init__(self, model: DiffusionLM, rows: int, width: int, span_len: int, shift: int, cache: bool,
                 capture: bool, compile_backend: str | None = None) -> None:
        self.model = model
        self.k = span_len
        self.shift = shift
        self.cache = cache
        p = model.embed_tokens.weight
        dev = p.device
        cfg = model.cfg
        self.ids = torch.zeros((rows, width), dtype=torch.long, device=dev)
        self.positions = torch.zeros((rows, width), dtype=torch.long, device=dev)
        self.key_mask = torch.ones((rows, width), dtype=torch.bool, device=dev)
        kv_shape = (rows, cfg.num_kv_heads, width, cfg.head_dim)
        self.keys = [torch.zeros(kv_shape, dtype=p.dtype, device=dev) for _ in model.layers]
        self.values = [torch.zeros(kv_shape, dtype=p.dtype, device=dev) for _ in model.layers]
        self.graphs: dict[str, Any] = {}
        self.outputs: dict[str, Tensor] = {}
        self.capture = capture
        self.compile_backend = compile_backend
        self.compiled: dict[str, Callable[[], Tensor]] = {}

    # -- the two steps, reading and writing only the static buffers ---------------------------------------------

    def full(self) -> Tensor:
        """The whole-window step, eagerly: refreshes the cache (when caching), returns the span's logits."""
        hidden, kv = self.model(self.ids, positions=self.positions, key_mask=self.key_mask, fill_cache=self.cache,
                                hidden_only=True)  # [B, T, H]
        if kv is not None:
            for i in range(len(self.keys)):
                self.keys[i].copy_(kv.keys[i])
                self.values[i].copy_(kv.values[i])
        return self.model.lm_head(hidden[:, : self.k])  # [B, K, V]: rows 0..K-1 predict the span (span first)

    def block(self) -> Tensor:
        """The span step, eagerly: the span (and the shift row) against the cached context."""
        end = self.shift + self.k
        hidden, _ = self.model(self.ids[:, :end], positions=self.positions[:, :end], key_mask=self.key_mask,
                               cache=KVCache(self.keys, self.values), start=0, hidden_only=True)  # [B, K+shift, H]
        return self.model.lm_head(hidden[:, : self.k])  # [B, K, V]

    # -- use ------------------------------------------------------------------------------------------------------

    def load(self, ids: Tensor, positions: Tensor, key_mask: Tensor) -> Tensor:
        """Copy a batch's layout into the static buffers; returns the static ids the caller writes spans into."""
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        self.key_mask.copy_(key_mask)
        return self.ids

    def step(self, full: bool) -> Tensor:
        """Logits [B, K, V] of the span for the ids now in the static buffer (a whole-window or a span step)."""
        name = "full" if full or not self.cache else "block"
        fn = self._function(name)
        if not self.capture:
            return fn()
        if name not in self.graphs:
            try:
                self._capture(name, fn)
            except GraphUnavailable:
                raise
            except Exception as exc:
                raise GraphUnavailable(f"capturing the {name} step failed: {exc}") from exc
        self.graphs[name].replay()
        return self.outputs[name]

    def _function(self, name: str) -> Callable[[], Tensor]:
        """The step to run or capture: the eager method, or its compiled version (made once per shape)."""
        fn = self.full if name == "full" else self.block
        if self.compile_backend is None:
            return fn
        if name not in self.compiled:
            self.compiled[name] = torch.compile(fn, fullgraph=True, dynamic=False, backend=self.compile_backend)
        return self.compiled[name]

    def _capture(self, name: str, fn: Callable[[], Tensor]) -> None:
        """Warm up on a side stream, capture, then check one replay against the eager step on the same input."""
        saved = [t.clone() for t in self.keys + self.values]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._restore(saved)
                expected = fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self._restore(saved)
        with torch.cuda.graph(graph):
            out = fn()
        self._restore(saved)
        graph.replay()
        if not torch.allclose(out.float(), expected.float(), rtol=2e-2, atol=5e-2):  # same kernels: equal in practice
            raise GraphUnavailable(f"the captured {name} step differs from the eager step")
        self._restore(saved)  # the caller's replay starts from the cache as it was
        self.graphs[name] = graph
        self.outputs[name] = out

    def _restore(self, saved: list[Tensor]) -> None:
        for dst, src in zip(self.keys + self.values, saved):
            dst.copy_(src)


class GraphCache:
    """The StepGraphs of the last few batch shapes (each holds its buffers and graphs' memory)."""

    def __init__(self, model: DiffusionLM, capture: bool, keep: int = 8, compile_backend: str | None = None) -> None:
        self.model = model
        self.capture = capture
        self.keep = keep
        self.compile_backend = compile_backend
        if compile_backend is not None:
            # Every shape's steps are the same two methods on another StepGraphs: dynamo counts each as a recompile
            # of those methods and, past its limit (8), would quietly run them uncompiled.
            import torch._dynamo.config as dynamo_config

            name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
        self.entries: OrderedDict[tuple[int, int, int, int, bool], StepGraphs] = OrderedDict()

    def get(self, rows: int, width: int, span_len: int, shift: int, cache: bool) -> StepGraphs:
        key = (rows, width, span_len, shift, cache)
        entry = self.entries.pop(key, None)
        if entry is None:
            entry = StepGraphs(self.model, rows, width, span_len, shift, cache, self.capture, self.compile_backend)
            while len(self.entries) >= self.keep:
                self.entries.popitem(last=False)
        self.entries[key] = entry
        return entry
