"""The benchmarks' correctness, not their speed: the autoregressive baseline is honest (its KV-cache decode makes
the same tokens as recomputing the whole causal forward), and `codefill bench engine --smoke` writes valid JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.causal import CausalDecoder, reference_generate
from engine.config import ModelConfig
from engine.model import DiffusionLM


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy CPU OpenMP threads waiting on each other make every
    op slow: run these tests on one thread, then give torch its setting back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(seed: int, qkv_bias: bool = True) -> DiffusionLM:
    """A tiny model with weights big enough that greedy choices depend on every position of the context."""
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
                      qkv_bias=qkv_bias)
    model = DiffusionLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_kv_cache_decode_matches_full_recompute(qkv_bias: bool) -> None:
    model = random_model(1, qkv_bias)
    prompt = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(2))  # [B, P]
    expected = reference_generate(model, prompt, 16)
    # A cache longer than needed: stale slots past the current position must stay invisible.
    decoder = CausalDecoder(model, batch=3, max_len=40)
    got = decoder.generate(prompt, 16)
    assert got.tolist() == expected.tolist()
    # Reusing the decoder for another prompt overwrites the cache rather than mixing the two.
    other = torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(3))
    assert decoder.generate(other, 16).tolist() == reference_generate(model, other, 16).tolist()
    # Suppressed ids (the end tokens, as with min_new_tokens) are never chosen, here and in the reference alike.
    favourite = int(expected.flatten().mode().values)
    suppressed = CausalDecoder(model, batch=3, max_len=40, suppress=[favourite]).generate(prompt, 16)
    assert favourite not in suppressed.flatten().tolist()
    assert suppressed.tolist() == reference_generate(model, prompt, 16, suppress=[favourite]).tolist()
    # The tokens depend on the prompt (a decoder that ignored its cache could not pass the checks above).
    assert expected.tolist() != reference_generate(model, other, 16).tolist()


def test_engine_smoke_writes_valid_json(tmp_path: Path) -> None:
    from benchmarks.bench import main

    out = tmp_path / "results.json"
    assert main(["engine", "--smoke", "--dtypes", "fp32", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "engine"
    assert data["model"]["weights"].startswith("random")
    assert data["hardware"]["torch"] == torch.__version__
    methods = {(r["method"], r["batch"], r["cache"]) for r in data["rows"]}
    assert {("diffusion", 1, True), ("diffusion", 1, False), ("ar-ours", 1, None)} <= methods
    for r in data["rows"]:
        assert r["median_ms"] > 0 and r["p95_ms"] >= r["median_ms"]
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["k"] / (r["median_ms"] / 1000))
        if r["method"] == "diffusion":
            assert r["forward_passes"] == r["steps"]  # every fill ran every step: no early stop
    assert not data["problems"]  # every fill made exactly k tokens
    assert {s["baseline"] for s in data["speedups"]} == {"ar-ours"}


def test_device_smoke_writes_json_and_a_plot(tmp_path: Path) -> None:
    """The GPU benchmark's own path on the CPU (tiny shape): the JSON every row lands in, and its plot where
    matplotlib is installed."""
    from benchmarks.bench import main

    assert main(["device", "--smoke", "--out", str(tmp_path), "--no-compile"]) == 0
    data = json.loads((tmp_path / "device.json").read_text())
    measured = [r for r in data["rows"] if "median_ms" in r]
    assert {r["method"] for r in measured} >= {"static-step", "engine", "ar-ours"}
    assert all(r["median_ms"] > 0 for r in measured)
    try:
        import matplotlib  # noqa: F401  (the "bench" extra; the device machine has it, CI may not)
    except ImportError:
        assert not (tmp_path / "device.png").exists()  # no plot, and no failure: the JSON is what matters
        return
    png = (tmp_path / "device.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_lsp_smoke_writes_every_row(tmp_path: Path) -> None:
    """`codefill bench lsp --smoke`: the real server with a tiny model; each hole kind with the prefetch setting on
    and off, and the next-line rows (a suggestion accepted, Enter, the next request timed)."""
    from benchmarks.bench import main

    out = tmp_path / "lsp.json"
    assert main(["lsp", "--smoke", "--reps", "1", "--warmup", "0", "--pause-ms", "50", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    holes = {r["hole"] for r in data["rows"]}
    assert {"one-line", "one-line, prefetch off", "multi-line", "multi-line, prefetch off"} <= holes
    assert data["settings"]["pause_ms"] == 50
    assert all(r["median_ms"] > 0 and r["runs"] >= 1 for r in data["rows"])


def test_plot_without_matplotlib_is_refused_before_the_run(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    from benchmarks.bench import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        main(["lsp", "--smoke", "--plot", str(tmp_path / "x.png")])
    assert exc.value.code == 2


def test_block_fills_counts_what_an_editor_would_get(tmp_path: Path) -> None:
    """benchmarks.block_fills blanks one body statement per file, fills it as the server does and reads the result
    with Python's parser; here with a scripted engine: one file gets the statement back, one a fill that repeats
    the line above (a call: a repeated assignment is not offered), one a no-op (not offered)."""
    from benchmarks.block_fills import run
    from lsp_fixtures.fake_engine import FakeEngine

    for name, fill, statement in (("exact", "b = a + 1", "b = a + 1"), ("repeat", "print(a)", "c = 2"),
                                  ("noop", "a = a", "d = 3")):
        filler = "x" * 2_000  # big enough to be picked
        body = f"    {'print(a)' if name == 'repeat' else 'a = 1'}\n    {statement}\n    return a\n"
        source = f'# codefill-fake: "{fill}"\n"""{filler}"""\n\n\ndef f():\n' + body
        (tmp_path / f"{name}.py").write_text(source)
    result = run(FakeEngine(), tmp_path, n=10, seed=0)
    assert result["holes"] == 3 and result["offered"] == 2 and result["breaks_parse"] == 0
    assert result["repeats_a_line_above"] == 1 and result["exact"] == 1
