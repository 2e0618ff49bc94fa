"""The denoising loop with a fake model whose preferences are known."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.errors import FillCancelled
from engine.sampler import SamplerConfig, default_steps, denoise

V, MASK, END, NL = 20, 1, 0, 2


class FakeModel:
    """Wants `target` at each span position; confidence rises from left to right unless told otherwise."""

    def __init__(self, target: list[int], conf: list[float] | None = None) -> None:
        self.target = target
        self.conf = conf or [0.5 + 0.4 * i / max(1, len(target) - 1) for i in range(len(target))]
        self.calls: list[torch.Tensor] = []

    def __call__(self, span: torch.Tensor, step: int) -> torch.Tensor:
        self.calls.append(span.clone())
        b, k = span.shape
        logits = torch.empty((b, k, V))
        for i in range(k):  # softmax gives exactly conf[i] to the target, the rest shared evenly
            c = torch.tensor(self.conf[i])
            logits[:, i, :] = ((1 - c) / (V - 1)).log()
            logits[:, i, self.target[i]] = c.log()
        return logits


def run(model: FakeModel, k: int, **kw) -> tuple[list[int], int, int]:
    span = torch.full((1, k), MASK)
    cfg = SamplerConfig(**kw)
    r = denoise(model, span, MASK, torch.tensor([END]), END, cfg)
    return r.span[0].tolist(), r.lengths[0], r.forward_passes


def test_schedule_commits_everything_in_the_given_steps() -> None:
    target = [5, 6, 7, 8, 9, 10, 11, 12]
    span, length, passes = run(FakeModel(target), 8, steps=4, min_tokens=0)
    assert span == target and length == 8 and passes == 4


def test_confidence_order_commits_most_confident_first() -> None:
    m = FakeModel([5, 6, 7, 8], conf=[0.3, 0.9, 0.5, 0.7])
    run(m, 4, steps=4, min_tokens=0)
    still_masked = [(c[0] == MASK).tolist() for c in m.calls]
    assert still_masked[1] == [True, False, True, True]  # position 1 first
    assert still_masked[2] == [True, False, True, False]  # then position 3


def test_left_to_right_order() -> None:
    m = FakeModel([5, 6, 7, 8], conf=[0.3, 0.9, 0.5, 0.7])
    run(m, 4, steps=4, order="left-to-right", min_tokens=0)
    assert (m.calls[1][0] == MASK).tolist() == [False, True, True, True]


def test_threshold_commits_all_confident_positions_at_once() -> None:
    m = FakeModel([5, 6, 7, 8], conf=[0.95, 0.96, 0.2, 0.97])
    span, _, passes = run(m, 4, steps=4, threshold=0.9, min_tokens=0)
    assert (m.calls[1][0] == MASK).tolist() == [False, False, True, False]
    assert passes == 2 and span == [5, 6, 7, 8]


def test_threshold_commits_at_least_the_schedule() -> None:
    """Below the threshold the linear schedule still holds (it used to fall back to one position a step and leave
    the rest to the last step)."""
    m = FakeModel(list(range(5, 13)), conf=[0.2] * 8)
    span, _, passes = run(m, 8, steps=4, threshold=0.9, min_tokens=0)
    assert [int((c[0] != MASK).sum()) for c in m.calls] == [0, 2, 4, 6]
    assert passes == 4 and span == list(range(5, 13))


def test_end_token_ends_the_fill_early() -> None:
    # The model is sure the fill ends at position 2: later positions are never decoded.
    m = FakeModel([5, 6, END, 9, 9, 9, 9, 9], conf=[0.6, 0.7, 0.99, 0.5, 0.5, 0.5, 0.5, 0.5])
    span, length, passes = run(m, 8, steps=8, min_tokens=0)
    assert length == 2 and span[:2] == [5, 6]
    assert passes == 3  # end at step 0, then the two positions before it


def test_checking_for_the_end_less_often_changes_passes_not_the_fill() -> None:
    # As on a GPU, where each check waits for the device: steps after every fill ended commit nothing.
    m = FakeModel([5, 6, END, 9, 9, 9, 9, 9], conf=[0.6, 0.7, 0.99, 0.5, 0.5, 0.5, 0.5, 0.5])
    want = run(m, 8, steps=8, min_tokens=0)
    for every in (2, 4, 16):
        r = denoise(m, torch.full((1, 8), MASK), MASK, torch.tensor([END]), END,
                    SamplerConfig(steps=8, min_tokens=0), check_every=every)
        assert (r.span[0].tolist(), r.lengths[0]) == want[:2]
        assert r.forward_passes == {2: 4, 4: 4, 16: 8}[every]  # the next check after the 3 passes needed


def test_min_tokens_bans_an_empty_fill() -> None:
    m = FakeModel([END, END, END, END], conf=[0.99] * 4)
    _, length, _ = run(m, 4, steps=4, min_tokens=1)
    assert length >= 1
    _, length0, _ = run(FakeModel([END] * 4, conf=[0.99] * 4), 4, steps=4, min_tokens=0)
    assert length0 == 0


def test_first_allowed_constrains_the_first_position_of_healed_rows_only() -> None:
    # The model wants to end at once; row 0's first position may hold only 7 or 8 (a healed prefix's last token).
    m = FakeModel([END] * 4, conf=[0.99] * 4)
    allowed = torch.ones(2, V, dtype=torch.bool)
    allowed[0] = False
    allowed[0, [7, 8, END]] = True  # an end token listed as allowed is still not taken there
    r = denoise(m, torch.full((2, 4), MASK), MASK, torch.tensor([END]), END, SamplerConfig(steps=4, min_tokens=1),
                first_allowed=allowed)
    assert r.span[0, 0].item() in (7, 8)
    assert r.lengths[0] == 2  # after the healed token, one more before the end (min_tokens counts from there)
    assert r.lengths[1] == 1 and r.span[1, 0].item() not in (END, MASK)  # row 1: min_tokens as usual


def test_single_line_stop_ids() -> None:
    span = torch.full((1, 4), MASK)
    m = FakeModel([5, NL, 7, 8], conf=[0.9, 0.95, 0.5, 0.5])
    r = denoise(m, span, MASK, torch.tensor([END, NL]), END, SamplerConfig(steps=4, min_tokens=0))
    assert r.lengths[0] == 1 and r.span[0, 0].item() == 5


def test_fixed_positions_are_kept() -> None:
    span = torch.tensor([[MASK, MASK, END, END]])  # a batch row padded with end ids
    m = FakeModel([5, 6, 7, 8])
    r = denoise(m, span, MASK, torch.tensor([END]), END, SamplerConfig(steps=2, min_tokens=0))
    assert r.span[0].tolist() == [5, 6, END, END] and r.lengths[0] == 2


def test_temperature_sampling_is_seeded() -> None:
    def noisy(span: torch.Tensor, step: int) -> torch.Tensor:
        return torch.zeros(span.shape[0], span.shape[1], V)

    runs = [denoise(noisy, torch.full((1, 6), MASK), MASK, torch.tensor([END]), END,
                    SamplerConfig(steps=3, temperature=1.0, seed=7, min_tokens=6)).span.tolist() for _ in range(2)]
    assert runs[0] == runs[1]


def test_cancel_stops_between_steps() -> None:
    ev = threading.Event()
    ev.set()
    with pytest.raises(FillCancelled):
        denoise(FakeModel([5, 6]), torch.full((1, 2), MASK), MASK, torch.tensor([END]), END, SamplerConfig(steps=2),
                ev)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        SamplerConfig(order="random").validate()
    assert default_steps(8) == 4 and default_steps(128) == 32
    assert default_steps(32, tokens_per_step=2) == 16 and default_steps(128, tokens_per_step=2) == 64
