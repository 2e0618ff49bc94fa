"""Masked-diffusion training examples with infill in mind.

Infill examples mask part of a contiguous middle (a whole line, a few lines, the rest of a line, a syntax node or a
random span) followed by 0..N end tokens, so the model learns both the content and where a fill stops. Plain
examples mask the whole window at rate t. Loss weights are 1/t on masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.dataset import TokenArrays


@dataclass
class ObjectiveConfig:
    """Mixture and sizes of the training examples."""

    window: int = 256
    infill_share: float = 0.7
    max_middle: int = 64
    max_ends: int = 32
    max_middles: int = 3  # disjoint middles in one infill window: more supervised positions per forward pass
    no_end_share: float = 0.2  # infill examples with no end tokens after the middle
    min_t: float = 0.05
    # Kinds of middle, as weights: whole line(s), rest of a line, syntax node, random span.
    kind_weights: tuple[float, float, float, float] = (0.35, 0.15, 0.35, 0.15)


@dataclass
class Batch:
    """Inputs, targets and per-position loss weights (0 where the loss is not taken)."""

    ids: torch.Tensor  # [B, T] long, masked positions hold the mask id
    targets: torch.Tensor  # [B, T] long
    weights: torch.Tensor  # [B, T] float


class ExampleSampler:
    """Draws windows from a TokenArrays and turns them into masked examples."""

    def __init__(self, data: TokenArrays, cfg: ObjectiveConfig, mask_id: int, end_id: int, newline_ids: set[int],
                 seed: int = 0) -> None:
        self.data, self.cfg = data, cfg
        self.mask_id, self.end_id = mask_id, end_id
        self.rng = np.random.default_rng(seed)
        self.is_newline = np.zeros(65536, dtype=bool)
        self.is_newline[list(newline_ids)] = True
        lens = np.diff(data.doc_starts)
        self.doc_p = lens / lens.sum()
        order = np.argsort(data.spans[:, 0], kind="stable") if len(data.spans) else np.zeros(0, dtype=np.int64)
        self.spans = data.spans[order] if len(data.spans) else np.zeros((0, 2), dtype=np.int64)
        self.span_starts = self.spans[:, 0]

    def window(self) -> tuple[np.ndarray, int]:
        """A window of up to cfg.window tokens inside one document, and its global start."""
        d = int(self.rng.choice(len(self.doc_p), p=self.doc_p))
        a, b = int(self.data.doc_starts[d]), int(self.data.doc_starts[d + 1])
        w = self.cfg.window
        start = a if b - a <= w else int(self.rng.integers(a, b - w + 1))
        return self.data.tokens[start : min(b, start + w)].astype(np.int64), start

    def middle(self, toks: np.ndarray, gstart: int) -> tuple[int, int]:
        """A [lo, hi) range of the window to use as the middle."""
        n = len(toks)
        cfg = self.cfg
        kind = self.rng.choice(4, p=np.asarray(cfg.kind_weights) / sum(cfg.kind_weights))
        nl = np.flatnonzero(self.is_newline[toks])  # positions of line breaks
        if kind == 2 and len(self.span_starts):  # a syntax node inside the window
            lo_i = np.searchsorted(self.span_starts, gstart)
            hi_i = np.searchsorted(self.span_starts, gstart + n)
            if hi_i > lo_i:
                for _ in range(4):
                    s, e = self.spans[self.rng.integers(lo_i, hi_i)]
                    if e <= gstart + n and e - s <= cfg.max_middle:
                        return int(s - gstart), int(e - gstart)
        if kind in (0, 2) and len(nl) >= 2:  # one or more whole lines, indentation and line break included
            i = int(self.rng.integers(0, len(nl) - 1))
            nlines = 1 if self.rng.random() < 0.6 else int(self.rng.integers(2, 8))
            j = min(i + nlines, len(nl) - 1)
            lo, hi = int(nl[i]) + 1, int(nl[j]) + 1
            if 0 < hi - lo <= cfg.max_middle:
                return lo, hi
        if kind == 1 and len(nl) >= 2:  # the rest of a line, from inside it to just before its break
            i = int(self.rng.integers(0, len(nl) - 1))
            a, b = int(nl[i]) + 1, int(nl[i + 1])
            if b - a >= 2:
                lo = int(self.rng.integers(a + 1, b))
                return lo, min(b, lo + cfg.max_middle)
        length = int(self.rng.integers(1, cfg.max_middle + 1))
        lo = int(self.rng.integers(0, max(1, n - length)))
        return lo, min(n, lo + length)

    def infill(self, toks: np.ndarray, gstart: int) -> tuple[np.ndarray, np.ndarray]:
        """The window with 1-3 disjoint middles, each followed by its end tokens; and the middles' mask."""
        cfg = self.cfg
        middles: list[tuple[int, int]] = []
        for _ in range(int(self.rng.integers(1, cfg.max_middles + 1))):
            lo, hi = self.middle(toks, gstart)
            if hi > lo and all(hi <= a or lo >= b for a, b in middles):
                middles.append((lo, hi))
        middles.sort()
        pieces: list[np.ndarray] = []
        flags: list[np.ndarray] = []
        pos = 0
        for lo, hi in middles:
            n_end = 0 if self.rng.random() < cfg.no_end_share else int(self.rng.integers(1, cfg.max_ends + 1))
            pieces += [toks[pos:lo], toks[lo:hi], np.full(n_end, self.end_id, dtype=np.int64)]
            flags += [np.zeros(lo - pos, bool), np.ones(hi - lo + n_end, bool)]
            pos = hi
        pieces.append(toks[pos:])
        flags.append(np.zeros(len(toks) - pos, bool))
        seq, region = np.concatenate(pieces), np.concatenate(flags)
        if len(seq) > cfg.window:  # keep the window length: cut after the last middle, then before the first
            last = int(np.flatnonzero(region)[-1]) + 1
            keep_end = max(last, cfg.window)
            seq, region = seq[:keep_end], region[:keep_end]
            seq, region = seq[-cfg.window :], region[-cfg.window :]
        return seq, region

    def example(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids, targets, weights for one window."""
        cfg = self.cfg
        w = cfg.window
        toks, gstart = self.window()
        t = float(self.rng.uniform(cfg.min_t, 1.0))
        if self.rng.random() < cfg.infill_share and len(toks) > 2:
            seq, region = self.infill(toks, gstart)
        else:
            seq = toks
            region = np.ones(len(seq), dtype=bool)
        masked = region & (self.rng.random(len(seq)) < t)
        if not masked.any():
            masked[self.rng.choice(np.flatnonzero(region))] = True
        weights = masked / t / region.sum()
        ids = np.where(masked, self.mask_id, seq)
        pad = w - len(seq)
        if pad > 0:  # short documents: pad with end tokens, which are real targets only when masked
            ids = np.concatenate([ids, np.full(pad, self.end_id)])
            seq = np.concatenate([seq, np.full(pad, self.end_id)])
            weights = np.concatenate([weights, np.zeros(pad)])
        return ids, seq, weights

    def batch(self, size: int) -> Batch:
        """A batch of examples."""
        rows = [self.example() for _ in range(size)]
        return Batch(
            ids=torch.from_numpy(np.stack([r[0] for r in rows])).long(),
            targets=torch.from_numpy(np.stack([r[1] for r in rows])).long(),
            weights=torch.from_numpy(np.stack([r[2] for r in rows])).float(),
        )
