"""The runner: context cache against the uncached path, batching against single requests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.api import Engine, FillRequest
from engine.checkpoint import load_model
from engine.model import DiffusionLM
from engine.runner import Runner, lay_out
from engine.sampler import SampleResult, SamplerConfig
from engine.window import build_window

PREFIX = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n"
SUFFIX = "\n\n    def norm(self):\n        return (self.x ** 2 + self.y ** 2) ** 0.5\n"


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path) -> Runner:
    model, tok = load_model(tiny_model_dir)
    return Runner(model, tok, torch.device("cpu"), torch.float32)


def logits_trace(runner: Runner, cache: bool, refresh: int, shift: int = 0) -> list[torch.Tensor]:
    """Run 6 steps and record the logits the sampler saw at each."""
    seen: list[torch.Tensor] = []
    original = runner.model.forward

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = original(*args, **kwargs)
        seen.append(out[0])
        return out

    runner.model.forward = spy  # type: ignore[method-assign]
    runner.shift = shift
    try:
        w = build_window(runner.tok, PREFIX, SUFFIX, 12)
        runner.run([w], SamplerConfig(steps=6, min_tokens=12), [runner.tok.end_id], cache=cache,
                   refresh_every=refresh)
    finally:
        runner.model.forward = original  # type: ignore[method-assign]
        runner.shift = runner.model.cfg.logits_shift
    return seen


@pytest.mark.parametrize("shift", [0, 1])
def test_cache_refreshed_every_step_equals_uncached(runner: Runner, shift: int) -> None:
    a = logits_trace(runner, cache=False, refresh=1, shift=shift)
    b = logits_trace(runner, cache=True, refresh=1, shift=shift)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("shift", [0, 1])
def test_block_step_matches_full_forward_on_the_span(runner: Runner, shift: int) -> None:
    """With a cache filled from the same ids, recomputing only the span gives the full pass's span logits."""
    model: DiffusionLM = runner.model
    w = build_window(runner.tok, PREFIX, SUFFIX, 12)
    lay = lay_out([w], runner.tok.mask_id, runner.tok.pad_id, torch.device("cpu"), shift)
    s0, k = lay.span_start, lay.span_len
    assert s0 == shift
    with torch.no_grad():
        full, kv = model(lay.ids, positions=lay.positions, key_mask=lay.key_mask, fill_cache=True)
        lo = s0 - shift
        block, _ = model(lay.ids[:, lo : s0 + k], positions=lay.positions[:, lo : s0 + k], key_mask=lay.key_mask,
                         cache=kv, start=lo)
    torch.testing.assert_close(block, full[:, lo : s0 + k], rtol=1e-4, atol=1e-5)


def test_cached_steps_differ_from_stale_context_only_slightly(runner: Runner) -> None:
    """Between refreshes the context's keys are stale; the fill is still a real decode of every position."""
    trace = logits_trace(runner, cache=True, refresh=4)
    assert len(trace) == 6
    assert trace[1].shape[1] == 12  # a cached step computes only the span


def test_batch_equals_single_requests(tiny_model_dir: Path) -> None:
    # In float only: int8 weights quantize each call's activations with one scale, so a batch shares it.
    eng = Engine.from_pretrained(tiny_model_dir, dtype="float32", steps=4, cache=False)
    reqs = [
        FillRequest("def add(a, b):\n    ", "\n", 8),
        FillRequest(PREFIX, SUFFIX, 16),
        FillRequest("x = ", "", 4),
    ]
    batched = eng.fill_batch(reqs)
    for r, f in zip(reqs, batched):
        single = eng.fill(r.prefix, r.suffix, r.max_tokens)
        assert single.tokens == f.tokens
        assert len(f.tokens) <= r.max_tokens


def test_fill_reports_cost_and_cuts(tiny_model_dir: Path) -> None:
    eng = Engine.from_pretrained(tiny_model_dir, steps=4)
    f = eng.fill("y = 1\n" * 2000, "z = 2\n" * 2000, 8)
    assert 1 <= f.forward_passes <= 4 and f.seconds > 0
    assert f.cut["prefix_chars"] > 0 and f.cut["suffix_chars"] > 0
    assert eng.count_tokens("x = 1\n") > 0


def test_single_line_fill_has_no_line_break(tiny_model_dir: Path) -> None:
    eng = Engine.from_pretrained(tiny_model_dir, steps=8)
    for seed_prefix in ["def f():\n    ", "x = [", "import "]:
        f = eng.fill(seed_prefix, "\n", 16, single_line=True)
        assert "\n" not in f.text


def test_unknown_setting_is_an_error(tiny_model_dir: Path) -> None:
    with pytest.raises(TypeError):
        Engine.from_pretrained(tiny_model_dir, stepz=4)


def test_model_directory_carries_its_decoding_defaults(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from engine.errors import CheckpointError

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "engine.json").write_text(json.dumps({"steps": 6, "order": "left-to-right", "end_penalty": 1.5}))
    eng = Engine.from_pretrained(model)
    assert (eng.config.steps, eng.config.order, eng.config.end_penalty) == (6, "left-to-right", 1.5)
    eng = Engine.from_pretrained(model, steps=0, order="margin")  # steps=0 means "default": the model's 6
    assert (eng.config.steps, eng.config.order) == (6, "margin")
    (model / "engine.json").write_text(json.dumps({"stepz": 6}))
    with pytest.raises(CheckpointError, match="engine.json"):
        Engine.from_pretrained(model)


def test_span_first_layout_keeps_each_token_in_its_place() -> None:
    """Rows hold [shift][span][prefix][suffix][pad]; positions still count through prefix, span and suffix."""
    from engine.window import Window

    windows = [Window([11, 12, 13], 2, [21, 22], 0, 0), Window([31], 4, [], 0, 0)]
    for shift in (0, 1):
        lay = lay_out(windows, 99, 0, torch.device("cpu"), shift, bucket=16)
        assert lay.span_start == shift and lay.span_len == 4 and lay.ids.shape == (2, 16)
        for row, w in enumerate(windows):
            real = lay.key_mask[row]
            ids = lay.ids[row][real].tolist()
            pos = lay.positions[row][real].tolist()
            text = [i for _, i in sorted(zip(pos, ids))]
            assert text == w.prefix_ids + [99] * w.span_len + w.suffix_ids
            assert sorted(pos) == list(range(w.length))
            span_pos = lay.positions[row, shift : shift + w.span_len].tolist()
            assert span_pos == list(range(len(w.prefix_ids), len(w.prefix_ids) + w.span_len))
            if shift:  # the token just before the span, whose output predicts the span's first token
                assert lay.ids[row, 0].item() == w.prefix_ids[-1]


@pytest.mark.parametrize("shift", [0, 1])
def test_static_step_buffers_give_the_dynamic_path_fills(runner: Runner, shift: int) -> None:
    """engine.graphs' fixed-shape steps (run eagerly here: capturing needs CUDA) fill exactly like the runner."""
    from engine.graphs import GraphCache

    windows = [build_window(runner.tok, PREFIX, SUFFIX, 12), build_window(runner.tok, "x = [", "]\n", 5)]
    cfg = SamplerConfig(steps=6, min_tokens=3)
    runner.shift = shift
    try:
        for cache, refresh in ((True, 4), (True, 1), (False, 1)):
            runner.graphs = None
            dynamic, _ = runner.run(windows, cfg, [runner.tok.end_id], cache=cache, refresh_every=refresh)
            runner.graphs = GraphCache(runner.model, capture=False)
            static, _ = runner.run(windows, cfg, [runner.tok.end_id], cache=cache, refresh_every=refresh)
            assert torch.equal(static.span, dynamic.span) and static.lengths == dynamic.lengths
            assert static.forward_passes == dynamic.forward_passes
            entry = next(iter(runner.graphs.entries.values()))
            assert entry.ids.shape[1] % 128 == 0  # the coarse width that keeps captured shapes few
    finally:
        runner.graphs = None
        runner.shift = runner.model.cfg.logits_shift


def test_compiled_static_steps_trace_whole_and_fill_the_same(runner: Runner) -> None:
    """EngineConfig.compile hands each fixed-shape step to torch.compile before capture; here (no CUDA) the eager
    backend checks that both steps trace as one graph each (fullgraph) and fill exactly as uncompiled."""
    import torch._dynamo

    from engine.graphs import GraphCache

    windows = [build_window(runner.tok, PREFIX, SUFFIX, 12), build_window(runner.tok, "x = [", "]\n", 5)]
    cfg = SamplerConfig(steps=6, min_tokens=3)
    torch._dynamo.reset()
    try:
        runner.graphs = GraphCache(runner.model, capture=False)
        plain, _ = runner.run(windows, cfg, [runner.tok.end_id], cache=True, refresh_every=4)
        runner.graphs = GraphCache(runner.model, capture=False, compile_backend="eager")
        compiled, _ = runner.run(windows, cfg, [runner.tok.end_id], cache=True, refresh_every=4)
        entry = next(iter(runner.graphs.entries.values()))
        assert set(entry.compiled) == {"full", "block"}  # both kinds of step went through torch.compile
        assert torch.equal(compiled.span, plain.span) and compiled.lengths == plain.lengths
    finally:
        runner.graphs = None
        torch._dynamo.reset()


def test_freed_memory_is_kept_on_glibc() -> None:
    import sys

    from engine.runner import retain_freed_memory

    kept = retain_freed_memory()
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert kept
    else:
        assert kept in (True, False)


def test_graph_cache_keeps_the_last_shapes(runner: Runner) -> None:
    from engine.graphs import GraphCache

    cache = GraphCache(runner.model, capture=False, keep=2)
    a = cache.get(1, 128, 8, 0, True)
    cache.get(2, 128, 8, 0, True)
    assert cache.get(1, 128, 8, 0, True) is a  # reused, and now the most recent
    cache.get(4, 128, 8, 0, True)  # evicts the (2, ...) entry, the least recently used
    assert list(cache.entries) == [(1, 128, 8, 0, True), (4, 128, 8, 0, True)]
    assert a.ids.shape == (1, 128) and a.keys[0].shape[2] == 128


def test_single_line_fills_go_in_two_stages_only_when_the_line_goes_on(tiny_model_dir: Path) -> None:
    from engine.api import Fill

    eng = Engine.from_pretrained(tiny_model_dir, line_stage=4)
    calls: list[list[FillRequest]] = []

    def fake(requests: list[FillRequest]) -> list[Fill]:
        calls.append(requests)
        if len(calls) == 1:  # the first stage: one line ends, the other uses its whole budget of 4
            return [Fill("x", [7], 2, 0.1, 4, ended=True), Fill("ab", [1, 2, 3, 4], 2, 0.1, 4, ended=False)]
        return [Fill("cd", [5], 3, 0.2, 28, ended=True)]

    eng._fill_batch = fake  # type: ignore[method-assign]
    reqs = [FillRequest("p1", "s1", 32, single_line=True), FillRequest("p2", "s2", 32, single_line=True)]
    done, goes_on = eng.fill_batch(reqs)
    assert [r.max_tokens for r in calls[0]] == [4, 4]
    assert len(calls) == 2 and calls[1][0].prefix == "p2ab" and calls[1][0].max_tokens == 28
    assert done.text == "x" and done.forward_passes == 2
    assert goes_on.text == "abcd" and goes_on.tokens == [1, 2, 3, 4, 5] and goes_on.forward_passes == 5
    assert goes_on.ended and goes_on.seconds == pytest.approx(0.3)

    calls.clear()  # explicit steps: one stage with the whole budget; multi-line: block_stage first
    eng.fill_batch([FillRequest("p", "s", 32, single_line=True, steps=8)])
    eng.config.block_stage = 0
    eng.fill_batch([FillRequest("p", "s", 32, single_line=False)])
    eng.config.block_stage = 8
    eng.fill_batch([FillRequest("p", "s", 32, single_line=False)])
    assert [[r.max_tokens for r in c] for c in calls][:3] == [[32], [32], [8]]


def test_two_stage_fill_stays_within_budget_with_a_real_model(tiny_model_dir: Path) -> None:
    eng = Engine.from_pretrained(tiny_model_dir, line_stage=4)
    f = eng.fill("def f(x):\n    return ", "\n", 12, single_line=True)
    assert len(f.tokens) <= 12 and "\n" not in f.text
    assert f.forward_passes >= 1


def test_a_healed_fill_rewrites_the_prefix_last_token_and_returns_what_follows(tiny_model_dir: Path) -> None:
    eng = Engine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", steps=4)
    tok = eng.tokenizer
    for prefix in ["def add(a, b):\n    return ", "value = compute(", "total = su"]:
        healed = build_window(tok, prefix, SUFFIX, 8, heal=True).healed
        f = eng.fill(prefix, SUFFIX, 8)
        assert healed and tok.piece_texts[f.tokens[0]].startswith(healed)
        assert f.text == tok.decode(f.tokens)[len(healed):] and len(f.tokens) <= 8
    unhealed = Engine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", steps=4, heal=False)
    assert unhealed.fill("x = 1\n", SUFFIX, 8).tokens == eng.fill("x = 1\n", SUFFIX, 8).tokens  # nothing to heal


def test_fills_never_carry_broken_characters(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Byte tokens that make no whole character (half of a two-byte 'é'): the fill ends before them.
    eng = Engine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", steps=4, heal=False)
    tok = eng.tokenizer
    word = tok.encode("x")
    half = next(i for i, t in enumerate(tok.piece_texts) if t == "\ufffd")
    span = torch.tensor([word + [half] + word + [tok.end_id] * 5])

    def fake_run(windows, cfg, stop_ids, **kw):  # type: ignore[no-untyped-def]
        return SampleResult(span=span[:, : windows[0].span_len], lengths=[len(word) + 2], forward_passes=1), 0.01

    monkeypatch.setattr(eng.runner, "run", fake_run)
    f = eng.fill("s = '", "'\n", 8)
    assert f.text == "x" and f.ended  # cut before the broken byte; nothing after it is asked for


def test_a_fill_cancelled_during_a_forward_pass_stops_at_the_next_layer(tiny_model_dir: Path) -> None:
    """Cancelling does not wait for a whole-window pass to end: the model checks between layers."""
    import threading

    from engine.errors import FillCancelled

    engine = Engine.from_pretrained(tiny_model_dir, device="cpu", dtype="float32")
    model = engine.runner.model
    cancel = threading.Event()
    ran: list[int] = []
    hooks = [layer.register_forward_hook(lambda module, args, out, i=i: ran.append(i))
             for i, layer in enumerate(model.layers)]
    hooks.append(model.layers[0].register_forward_hook(lambda *_: cancel.set()))  # set mid-pass, after layer 0
    try:
        with pytest.raises(FillCancelled):
            engine.fill("def f(x):\n    return ", "\n", 8, single_line=True, cancel=cancel)
    finally:
        for h in hooks:
            h.remove()
    assert ran == [0] and len(model.layers) > 1
    cancel.clear()
    assert engine.fill("def f(x):\n    return ", "\n", 8, single_line=True, cancel=cancel).forward_passes > 0
