"""Prototypes of engine changes, measured by the benchmarks before anyone edits engine/.

(Logits for the span rows only, prototyped here first, is in engine/runner.py since fec6e30.)

1. `StaticDenoiser`: the denoising loop as a fixed-shape, host-sync-free step (forward over the window, or over
   the span against a static context cache, then the top-n commit written in place), which can be captured once
   as a CUDA graph or handed to torch.compile. It assumes fills never stop early (the benchmarks penalise the end
   token so every fill makes exactly k tokens) and greedy confidence order, which is what the engine runs by
   default; it is a measuring device, not a replacement sampler.
2. `GraphedDecoder`: the autoregressive baseline's decode step captured once as a CUDA graph (or compiled).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from engine.graphs import StepGraphs
from engine.model import DiffusionLM

# Only torch, engine.model and engine.graphs here: a bare GPU machine may lack the tokenizers library that
# engine.runner needs.


class StaticDenoiser:
    """A batch's whole denoising loop with fixed shapes: `fill()` runs `steps` steps without a host sync.

    mode "eager" runs the step functions as they are; "graph" captures each (whole-window step, span step) once
    as a CUDA graph and replays it; "compile" wraps them in torch.compile (fullgraph, static shapes);
    "compile+graph" captures the compiled functions in CUDA graphs.
    """

    def __init__(self, model: DiffusionLM, lay: Any, steps: int, mask_id: int, stop_ids: list[int],
                 end_penalty: float = 1e4, cache: bool = True, refresh_every: int = 4, mode: str = "eager",
                 backend: str = "inductor") -> None:
        """lay: an engine.runner.Layout (span first), or anything with its fields laid out the same way."""
        self.model = model
        self.s0, self.k = lay.span_start, lay.span_len
        self.shift = model.cfg.logits_shift
        self.steps = steps
        self.mask_id = mask_id
        self.end_penalty = end_penalty
        self.cache = cache
        self.refresh_every = max(1, refresh_every)
        self.mode = mode
        dev = lay.ids.device
        b, t = lay.ids.shape
        # The forward passes on static buffers are the engine's own (engine.graphs); this class adds the commit.
        self.fwd = StepGraphs(model, b, t, self.k, self.shift, cache, capture=False)
        self.start_ids = lay.ids.clone()  # [B, T]
        # [B, T]: the static buffer every step reads and writes
        self.ids = self.fwd.load(lay.ids, lay.positions, lay.key_mask)
        vocab = model.cfg.vocab_size
        self.stop_cols = torch.tensor(sorted(i for i in set(stop_ids) if i < vocab), dtype=torch.long, device=dev)
        self.lefts = torch.arange(steps, 0, -1, device=dev)  # [steps]: steps left, per step
        self.left = self.lefts[:1].clone()  # [1] static
        self.rank_src = torch.arange(self.k, device=dev).expand(b, self.k)  # [B, K]
        self.full_fn: Callable[[], None] = self._full_step
        self.block_fn: Callable[[], None] = self._block_step
        self.graphs: dict[str, Any] = {}
        if "compile" in mode:
            self.full_fn = torch.compile(self._full_step, fullgraph=True, dynamic=False, backend=backend)
            self.block_fn = torch.compile(self._block_step, fullgraph=True, dynamic=False, backend=backend)

    # -- one step -------------------------------------------------------------------------------------------------

    def _commit(self, logits: Tensor) -> None:
        """Top-n confidence commit of the span, in place; n = ceil(still masked / steps left)."""
        s0, k = self.s0, self.k
        logits = logits.float()  # [B, K, V]
        logits[..., self.mask_id] = -math.inf
        logits[..., self.stop_cols] -= self.end_penalty
        conf, pred = logits.softmax(-1).max(-1)  # [B, K]
        span = self.ids[:, s0 : s0 + k]  # [B, K]
        masked = span == self.mask_id
        score = conf.masked_fill(~masked, -math.inf)
        n_commit = torch.div(masked.sum(1) + self.left - 1, self.left, rounding_mode="floor").clamp_min(1)  # [B]
        order = score.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, self.rank_src)  # [B, K]
        commit = (rank < n_commit.unsqueeze(1)) & masked
        self.ids[:, s0 : s0 + k] = torch.where(commit, pred, span)

    def _full_step(self) -> None:
        """Forward over the whole window (refreshing the context cache when caching), then commit."""
        self._commit(self.fwd.full())

    def _block_step(self) -> None:
        """Forward over the span only, against the cached context, then commit."""
        self._commit(self.fwd.block())

    # -- the loop -------------------------------------------------------------------------------------------------

    def _is_full(self, step: int) -> bool:
        return not self.cache or step % self.refresh_every == 0

    @torch.inference_mode()
    def prepare(self) -> None:
        """Compile or capture now, so that timed fills only replay."""
        if "graph" not in self.mode:
            if "compile" in self.mode:
                self.fill()
                self.fill()
            return
        if self.ids.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        names = ["full"] + (["block"] if self.cache and self.steps > 1 else [])
        fns = {"full": self.full_fn, "block": self.block_fn}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
                self._reset()
                for name in names:
                    fns[name]()
        torch.cuda.current_stream().wait_stream(stream)
        for name in names:
            self._reset()
            if name == "block":
                self.full_fn()  # the block graph must be captured against a filled cache
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fns[name]()
            self.graphs[name] = graph
        self._reset()

    def _reset(self) -> None:
        self.ids.copy_(self.start_ids)
        self.left.copy_(self.lefts[:1])

    @torch.inference_mode()
    def fill(self) -> Tensor:
        """Run every step from the start layout; returns the span [B, K] (a view of the static buffer)."""
        self._reset()
        for step in range(self.steps):
            self.left.copy_(self.lefts[step : step + 1])
            name = "full" if self._is_full(step) else "block"
            if self.graphs:
                self.graphs[name].replay()
            elif name == "full":
                self.full_fn()
            else:
                self.block_fn()
        return self.ids[:, self.s0 : self.s0 + self.k]


class GraphedDecoder:
    """A CausalDecoder whose decode step is captured once as a CUDA graph (or compiled), replayed per token."""

    def __init__(self, decoder: Any, mode: str = "graph", backend: str = "inductor") -> None:
        self.decoder = decoder
        self.mode = mode
        dev = decoder.slots.device
        self.token = torch.zeros(decoder.batch, dtype=torch.long, device=dev)  # [B] static input
        self.at = torch.zeros(1, dtype=torch.long, device=dev)  # [1] static position
        self.next = torch.zeros_like(self.token)  # [B] static output
        self.step_fn: Callable[[], None] = self._step
        self.graph: Any = None
        if "compile" in mode:
            self.step_fn = torch.compile(self._step, fullgraph=True, dynamic=False, backend=backend)

    def _step(self) -> None:
        self.next.copy_(self.decoder.decode_step(self.token, self.at))

    @torch.inference_mode()
    def prepare(self, prompt: Tensor) -> None:
        """Compile or capture the decode step now."""
        self.decoder.prefill(prompt)
        self.at.fill_(prompt.shape[1])
        if "graph" not in self.mode:
            for _ in range(2):
                self.step_fn()
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.step_fn()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step_fn()

    @torch.inference_mode()
    def generate(self, prompt: Tensor, n: int) -> Tensor:
        """Greedy n tokens [B, n]: prefill eagerly, then one replayed step per token."""
        out = torch.empty((prompt.shape[0], n), dtype=torch.long, device=prompt.device)
        self.token.copy_(self.decoder.prefill(prompt))
        out[:, 0] = self.token
        self.at.fill_(prompt.shape[1])
        for t in range(1, n):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.step_fn()
            out[:, t] = self.next
            self.token.copy_(self.next)
            self.at += 1
        return out
