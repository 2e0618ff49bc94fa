"""The denoising loop: which masked span positions to commit at each step.

The sampler knows nothing of models or devices: it calls `predict(span_ids, step) -> logits [B, K, V]` for the
span positions of the current state and decides what to commit. That keeps it testable with a fake model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.errors import FillCancelled

ORDERS = ("confidence", "margin", "entropy", "left-to-right")


@dataclass
class SamplerConfig:
    """Decoding settings."""

    steps: int = 0  # 0: default_steps(span length, tokens_per_step)
    tokens_per_step: int = 4  # what steps=0 aims at
    order: str = "confidence"
    threshold: float = 0.0  # > 0: also commit every masked position above this confidence (beyond the schedule)
    block: int = 0  # > 0: only the first `block` still-masked positions are eligible (semi-autoregressive)
    temperature: float = 0.0
    seed: int | None = None
    end_penalty: float = 0.0  # subtracted from the end tokens' logits
    min_tokens: int = 1  # positions before this index may not end the fill

    def validate(self) -> None:
        """Raise ValueError on an impossible setting."""
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}")
        if self.steps < 0 or self.block < 0 or self.min_tokens < 0:
            raise ValueError("steps, block and min_tokens must not be negative")
        if self.tokens_per_step < 1:
            raise ValueError("tokens_per_step must be at least 1")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError("threshold must be in [0, 1)")
        if self.temperature < 0:
            raise ValueError("temperature must not be negative")


@dataclass
class SampleResult:
    """Committed span ids [B, K], where each fill ends (index of its first stop token, or K), and passes run."""

    span: Tensor  # [B, K] long
    lengths: list[int]
    forward_passes: int


def default_steps(span_len: int, tokens_per_step: int = 4) -> int:
    """A small fixed step count: about tokens_per_step tokens a step, between 4 and 128 / tokens_per_step.

    Fewer tokens a step cost time and make better fills: with the built-in model (third version), exact match on
    1,000 held-out lines of its corpus was 12.2-12.3% at four tokens a step and 13.6-14.0% at three (two seeds of
    holes). The engine takes three on the CPU, where a whole-window pass costs ~40 ms (int8 weights) and a span pass
    ~6, and two on a GPU, where steps cost little (engine.api.Engine.tokens_per_step).
    """
    return max(4, min(128 // tokens_per_step, math.ceil(span_len / tokens_per_step)))


def _scores(logits: Tensor, conf: Tensor, order: str) -> Tensor:
    """How sure the model is at each position [B, K]: higher is committed first. conf [B, K] is the probability of
    each position's prediction; the other orders need the whole distribution."""
    if order == "margin":  # the two most likely ids' probabilities apart
        top2 = logits.topk(2, dim=-1).values - logits.logsumexp(-1, keepdim=True)  # [B, K, 2] log-probabilities
        return top2[..., 0].exp() - top2[..., 1].exp()
    if order == "entropy":
        logp = logits.log_softmax(-1)
        return (logp.exp() * logp.clamp_min(-1e4)).sum(-1)  # negative entropy
    if order == "left-to-right":
        k = conf.shape[1]
        return -torch.arange(k, dtype=conf.dtype, device=conf.device).expand(conf.shape)
    return conf


def denoise(
    predict: Callable[[Tensor, int], Tensor],
    span: Tensor,  # [B, K] long: mask ids where still to fill; other ids are fixed (e.g. end padding)
    mask_id: int,
    stop_ids: Tensor,  # [S] long: ids that end a fill (end tokens; line breaks for single-line fills)
    end_id: int,
    cfg: SamplerConfig,
    cancel: threading.Event | None = None,
    first_allowed: Tensor | None = None,  # [B, V'] bool: the ids each row's first position may hold (healing)
    check_every: int = 1,
) -> SampleResult:
    """Unmask the span in cfg.steps steps (or fewer when every fill has ended).

    check_every: look whether every fill has ended (and stop early) only every this many steps. Asking makes the
    host wait for the device, so on a GPU the engine asks every few steps and lets the host queue the steps between
    without waiting; a step after every fill has ended commits nothing, so the fill is the same either way.

    first_allowed: for a row whose first position is the prefix's healed last token (engine.window.build_window),
    the ids allowed there; such a row's fill must also go on past it (cfg.min_tokens counts from the next position).
    Rows that allow every id are unconstrained.
    """
    cfg.validate()
    span = span.clone()
    b, k = span.shape
    steps = cfg.steps or default_steps(k, cfg.tokens_per_step)
    gen = None
    if cfg.temperature > 0:
        gen = torch.Generator(device=span.device)
        gen.manual_seed(cfg.seed if cfg.seed is not None else torch.seed())
    positions = torch.arange(k, device=span.device)  # [K]
    is_stop_id = torch.zeros(int(max(stop_ids.max().item(), mask_id)) + 1, dtype=torch.bool, device=span.device)
    is_stop_id[stop_ids] = True
    healed = torch.zeros(b, dtype=torch.long, device=span.device)
    if first_allowed is not None:
        healed = (~first_allowed).any(-1).long()  # [B]: 1 where the first position is constrained
    no_stop = positions.unsqueeze(0) < (cfg.min_tokens + healed).unsqueeze(1)  # [B, K]: may not hold a stop
    any_no_stop = cfg.min_tokens > 0 or first_allowed is not None  # known on the host: no sync in the loop
    banned_first = None
    stop_cols: Tensor | None = None  # the stop ids inside the logits' vocabulary

    def first_stop(span: Tensor) -> Tensor:
        """Index of each fill's first committed stop token, or K: [B]."""
        stops = (span != mask_id) & _lookup(is_stop_id, span)
        return torch.where(stops, positions, k).min(dim=1).values

    passes = 0
    for step in range(steps):
        if cancel is not None and cancel.is_set():
            raise FillCancelled("fill cancelled")
        # A fill ends at its first committed stop: positions after it no longer matter.
        live = (span == mask_id) & (positions < first_stop(span).unsqueeze(1))  # [B, K]
        if step % check_every == 0 and not live.any():  # .any() as a bool waits for the device
            break
        logits = predict(span, step).float()  # [B, K, V]
        passes += 1
        logits[..., mask_id] = -math.inf
        if stop_cols is None:  # once: a boolean index waits for the device to know its size
            stop_cols = stop_ids[stop_ids < logits.shape[-1]]
        if cfg.end_penalty:
            logits[..., stop_cols] -= cfg.end_penalty
        if any_no_stop:
            logits[..., stop_cols] = logits[..., stop_cols].masked_fill(no_stop.unsqueeze(-1), -math.inf)
        if first_allowed is not None:
            if banned_first is None:
                banned_first = _fit(~first_allowed, logits.shape[-1])  # [B, V]
            logits[:, 0] = logits[:, 0].masked_fill(banned_first, -math.inf)
        if cfg.temperature > 0:
            flat = (logits / cfg.temperature).softmax(-1).view(b * k, -1)
            pred = torch.multinomial(flat, 1, generator=gen).view(b, k)
            conf = logits.log_softmax(-1).gather(-1, pred.unsqueeze(-1)).squeeze(-1).exp()  # [B, K]
        else:
            top, pred = logits.max(-1)  # [B, K]
            conf = (top - logits.logsumexp(-1)).exp()  # softmax at the argmax, without writing out [B, K, V]
        score = _scores(logits, conf, cfg.order).masked_fill(~live, -math.inf)  # [B, K]
        if cfg.block:
            rank_in_live = live.long().cumsum(1)  # 1-based rank among live positions, left to right
            score = score.masked_fill(rank_in_live > cfg.block, -math.inf)
        n_live = live.sum(1)  # [B]
        left = steps - step
        n_commit = torch.div(n_live + left - 1, left, rounding_mode="floor").clamp_min(1)  # ceil
        if cfg.threshold > 0:
            n_commit = torch.maximum(n_commit, ((conf > cfg.threshold) & live).sum(1))
        order = score.argsort(dim=1, descending=True)  # [B, K]
        rank = torch.empty_like(order)
        rank.scatter_(1, order, positions.expand(b, k))
        commit = (rank < n_commit.unsqueeze(1)) & live & torch.isfinite(score)
        if step == steps - 1:
            commit = live
        span = torch.where(commit, pred, span)
    lengths = first_stop(span).tolist()
    # Whatever is still masked after the last step (only possible past a stop) is padding.
    span = torch.where(span == mask_id, torch.full_like(span, end_id), span)
    return SampleResult(span=span, lengths=lengths, forward_passes=passes)


def _fit(mask: Tensor, width: int) -> Tensor:
    """A [B, W] bool mask cut or padded (with True: banned) to [B, width]."""
    if mask.shape[-1] >= width:
        return mask[:, :width]
    pad = torch.ones(mask.shape[0], width - mask.shape[-1], dtype=torch.bool, device=mask.device)
    return torch.cat([mask, pad], dim=-1)


def _lookup(table: Tensor, ids: Tensor) -> Tensor:
    """table[ids] for ids that may exceed the table (False there)."""
    inside = ids < table.numel()
    return torch.where(inside, table[ids.clamp_max(table.numel() - 1)], torch.zeros_like(inside))
