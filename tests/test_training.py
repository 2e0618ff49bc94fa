"""Training plumbing for lent GPU sessions: packed data, sharded bf16 export, init_from, a tiny train() run.

Everything is built here from a few code snippets (no data/ directory needed) and runs in a few seconds.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import INDEX_FILE, WEIGHTS_FILE, load_model, save_model
from engine.config import ModelConfig
from engine.errors import CheckpointError
from engine.model import DiffusionLM
from engine.tokenizer import CodeTokenizer
from training.dataset import TokenArrays
from training.device_data import load_packed, load_split, pack, pack_arrays, run_summary, subset
from training.objective import ExampleSampler, ObjectiveConfig
from training.train import (
    FastSampler,
    TrainConfig,
    TrainState,
    export_model,
    masked_loss,
    train,
)

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
    "def area(w, h):\n    if w < 0 or h < 0:\n        raise ValueError('negative')\n    return w * h\n",
    "items = []\nfor k, v in sorted(table.items()):\n    if v:\n        items.append((k, v))\nprint(items)\n",
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
     "        self.items.append(x)\n\n    def pop(self):\n        return self.items.pop()\n"),
]


def synthetic_arrays(rng: np.random.Generator, n_docs: int = 9, long_span: bool = False) -> TokenArrays:
    lens = rng.integers(5, 400, size=n_docs)
    starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    tokens = rng.integers(0, 8192, size=int(starts[-1])).astype(np.uint16)
    spans = []
    for d in range(n_docs):
        a, b = int(starts[d]), int(starts[d + 1])
        for _ in range(int(rng.integers(0, 30))):
            s = int(rng.integers(a, b))
            spans.append((s, int(rng.integers(s + 1, min(b, s + 97) + 1))))
    if long_span:
        spans.append((0, int(starts[-1])))  # longer than 255 tokens: lengths stored as uint16
    return TokenArrays(tokens, starts, np.asarray(spans, dtype=np.int64).reshape(-1, 2))


@pytest.mark.parametrize("long_span", [False, True])
def test_pack_round_trip(tmp_path: Path, long_span: bool) -> None:
    arrays = synthetic_arrays(np.random.default_rng(1), long_span=long_span)
    size = pack_arrays(arrays, tmp_path / "train.pack.npz")
    assert size == (tmp_path / "train.pack.npz").stat().st_size
    back = load_packed(tmp_path / "train.pack.npz")
    assert back.tokens.dtype == np.uint16 and np.array_equal(back.tokens, arrays.tokens)
    assert np.array_equal(back.doc_starts, arrays.doc_starts)
    # Spans come back sorted by start, stably: the order ExampleSampler puts them in anyway.
    order = np.argsort(arrays.spans[:, 0], kind="stable")
    assert np.array_equal(back.spans, arrays.spans[order])


def test_packed_data_draws_the_same_examples(tmp_path: Path) -> None:
    arrays = synthetic_arrays(np.random.default_rng(2))
    pack_arrays(arrays, tmp_path / "x.pack.npz")
    back = load_packed(tmp_path / "x.pack.npz")
    cfg = ObjectiveConfig(window=64)
    a = ExampleSampler(arrays, cfg, 1, 2, {10, 11}, seed=3).batch(8)
    b = ExampleSampler(back, cfg, 1, 2, {10, 11}, seed=3).batch(8)
    fast = FastSampler(arrays, cfg, 1, 2, {10, 11}, seed=3).batch(8)  # same random stream, faster document draw
    for x in (b, fast):
        assert torch.equal(a.ids, x.ids) and torch.equal(a.targets, x.targets) and torch.equal(a.weights, x.weights)


def test_packed_checksum_and_subset(tmp_path: Path) -> None:
    arrays = synthetic_arrays(np.random.default_rng(4), n_docs=20)
    path = tmp_path / "t.pack.npz"
    pack_arrays(arrays, path)
    z = dict(np.load(path))
    z["tokens_sha1"] = np.array("0" * 40)
    np.savez(tmp_path / "bad.pack.npz", **z)
    with pytest.raises(ValueError, match="checksum"):
        load_packed(tmp_path / "bad.pack.npz")
    part = subset(arrays, max_tokens=len(arrays.tokens) // 3)
    assert 0 < len(part.tokens) <= len(arrays.tokens) // 3 + 400
    assert part.doc_starts[-1] == len(part.tokens)
    docs = [arrays.tokens[a:b].tobytes() for a, b in zip(arrays.doc_starts[:-1], arrays.doc_starts[1:])]
    for a, b in zip(part.doc_starts[:-1], part.doc_starts[1:]):
        assert part.tokens[a:b].tobytes() in docs
    # Every kept span lies inside one kept document.
    doc_of = np.searchsorted(part.doc_starts, part.spans[:, 0], side="right") - 1
    assert np.all(part.spans[:, 1] <= part.doc_starts[doc_of + 1]) and len(part.spans)


def tiny_model(vocab: int, seed: int = 0) -> DiffusionLM:
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64)
    model = DiffusionLM(cfg)
    model.init_weights(seed)
    return model.eval()


def test_sharded_save_loads_to_the_same_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tok = load_model(tiny_model_dir)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids)[0]
    out = tmp_path / "sharded"
    limit = 60_000
    save_model(model, tok, out, max_shard_bytes=limit)
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (out / WEIGHTS_FILE).exists()
    assert all(p.stat().st_size <= limit for p in shards)
    index = json.loads((out / INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    again, _ = load_model(out)
    with torch.no_grad():
        assert torch.equal(again(ids)[0], want)
    # bf16 shards: the same logits as the bf16-rounded model.
    save_model(model, tok, out, dtype=torch.bfloat16, max_shard_bytes=limit)
    half, _ = load_model(out, dtype=torch.float32)
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in rounded.parameters():
            t.copy_(t.to(torch.bfloat16).float())
        assert torch.allclose(half(ids)[0], rounded(ids)[0], atol=1e-5)
    # Back to one file: the index and its shards go, so nothing stale shadows or outlives the new weights.
    save_model(model, tok, out)
    assert (out / WEIGHTS_FILE).exists() and not (out / INDEX_FILE).exists()
    assert not list(out.glob("model-*-of-*.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit"):
        save_model(model, tok, tmp_path / "small", max_shard_bytes=1000)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory as the device sees it: tokenizer.json and packed token arrays only."""
    from training.bpe import train_bpe
    from training.dataset import tokenize_split

    plain = tmp_path_factory.mktemp("data")
    train_bpe(SNIPPETS * 20, 420, plain / "tokenizer.json")
    tok = CodeTokenizer.from_file(plain / "tokenizer.json")
    tokenize_split(SNIPPETS * 6, tok).save(plain / "train.npz")
    tokenize_split(SNIPPETS[:4], tok).save(plain / "valid.npz")
    packed = tmp_path_factory.mktemp("gpu_data")
    report = pack(plain, packed, preset=1)
    assert report["splits"]["train"]["tokens"] == len(TokenArrays.load(plain / "train.npz").tokens)
    return packed


TINY = TrainConfig(preset="tiny", batch_size=2, lr=1e-3, warmup_steps=2, minutes=5, eval_every=1000,
                   objective=ObjectiveConfig(window=64, max_middle=16, max_ends=8))


def test_init_from_starts_at_the_source_model(tiny_data: Path, tmp_path: Path) -> None:
    tok = CodeTokenizer.from_file(tiny_data / "tokenizer.json")
    src = tiny_model(tok.vocab_size, seed=5)
    export_model(src, tiny_data / "tokenizer.json", tmp_path / "src", TrainState(step=7, tokens_seen=900), TINY)
    cfg = replace(TINY, max_steps=8)  # max_steps counts from the source's own step 7
    state = train(tmp_path / "run", tiny_data, cfg, "cpu", init_from=tmp_path / "src")
    session = state.sessions[-1]
    assert session["start_step"] == 7 and state.step == 8 and state.tokens_seen == 900 + 2 * 64
    # The first step's loss is the source model's loss on the first batch the run draws.
    batch = FastSampler(load_split(tiny_data, "train"), cfg.objective, tok.mask_id, tok.end_id,
                        set(tok.newline_ids), seed=cfg.seed + 7).batch(cfg.batch_size)
    with torch.no_grad():
        want = masked_loss(src, batch, torch.device("cpu"), autocast=False).item()
    assert session["first_loss"] == pytest.approx(want, abs=2e-6)
    # A tokenizer other than the data's is refused (its ids would mean other text).
    other = tmp_path / "other"
    (other / "tok").mkdir(parents=True)
    from training.bpe import train_bpe

    vocab = train_bpe(SNIPPETS[::-1] * 9, 300, other / "tok" / "tokenizer.json").get_vocab_size()
    export_model(tiny_model(vocab), other / "tok" / "tokenizer.json", other / "model", TrainState(), TINY)
    with pytest.raises(ValueError, match="tokenizer"):
        train(tmp_path / "run2", tiny_data, cfg, "cpu", init_from=other / "model")


def test_cli_train_exports_a_loadable_sharded_model(tiny_data: Path, tmp_path: Path) -> None:
    from engine.cli import main

    out = tmp_path / "out" / "model"
    args = ["train", "--run", str(tmp_path / "run"), "--data", str(tiny_data), "--preset", "tiny",
            "--device", "cpu", "--threads", "1", "--batch-size", "2", "--max-steps", "3", "--warmup-steps", "2",
            "--export", str(out), "--shard-mb", "0.03", "--save-dtype", "bfloat16", "--log-seconds", "0.01",
            "--workers", "1"]
    # Export settings that cannot work fail before any training, not after the whole time budget.
    too_small = [a if a != "0.03" else "0.001" for a in args]
    assert main(too_small) == 1 and not (tmp_path / "run").exists()
    assert main(args) == 0
    files = sorted(p.name for p in out.iterdir())
    assert INDEX_FILE in files and "training.json" in files and "tokenizer.json" in files
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 2 and all((out / f).stat().st_size <= 0.03 * 2**20 for f in shards)
    model, _ = load_model(out)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    load_model(tmp_path / "run")  # the run directory itself stays a loadable (float32) model
    summary = run_summary(out)
    assert summary["steps"] == 3 and summary["total_steps"] == 3 and summary["tokens"] == 3 * 2 * 256
    assert summary["valid_loss"] > 0 and summary["first_loss"] > 0 and summary["tokens_per_s"] > 0
    # The next session: --init-from the export, into a fresh run; counters continue.
    out2 = tmp_path / "out2"
    args2 = [a if a != str(out) else str(out2) for a in args]
    args2[args2.index(str(tmp_path / "run"))] = str(tmp_path / "run2")
    args2[args2.index("--max-steps") + 1] = "5"
    assert main([*args2, "--init-from", str(out), "--decay-share", "2"]) == 2  # refused before anything runs
    assert main([*args2, "--init-from", str(out), "--decay-share", "0.5"]) == 0
    summary2 = run_summary(out2)
    assert json.loads((out2 / "training.json").read_text())["config"]["decay_share"] == 0.5
    assert summary2["steps"] == 2 and summary2["total_steps"] == 5 and summary2["sessions"] == 2
    assert summary2["init_from"] == str(out)


def test_extend_adds_permissive_installed_packages_to_the_carried_data(  # type: ignore[no-untyped-def]
        tiny_data: Path, tmp_path: Path, fake_distribution) -> None:
    from training.device_data import extend

    site = tmp_path / "site"
    code = "def scale(values, factor):\n    return [v * factor for v in values]\n"
    fake_distribution(site, "permissive_pkg", {
        "permissive_pkg/__init__.py": code,
        "permissive_pkg/core.py": "class Box:\n    def __init__(self, item):\n        self.item = item\n",
        "permissive_pkg/tests/test_core.py": "def test_box():\n    assert True\n",  # tests stay out
    }, "License: MIT")
    fake_distribution(site, "copyleft_pkg", {"copyleft_pkg/__init__.py": "x = compute(1, 2)\n"}, "License: GPL-3.0")
    fake_distribution(site, "already_carried", {"already_carried/a.py": "y = transform(3, 4)\n"}, "License: MIT")
    (tiny_data / "sources.json").write_text(json.dumps([{"name": "Already-Carried", "license": "MIT", "files": "1"}]))
    out = tmp_path / "out"
    report = extend(tiny_data, out, workers=1, path=[str(site)])
    assert report["added_files"] == 2 and report["added_sources"] == 1
    carried, merged = load_split(tiny_data, "train"), load_split(out, "train")
    assert len(merged.tokens) == len(carried.tokens) + report["added_tokens"]
    assert np.array_equal(merged.tokens[: len(carried.tokens)], carried.tokens)
    assert len(merged.doc_starts) == len(carried.doc_starts) + 2 and merged.doc_starts[-1] == len(merged.tokens)
    assert len(merged.spans) > len(carried.spans) and merged.spans.max() <= len(merged.tokens)
    tok = CodeTokenizer.from_file(out / "tokenizer.json")
    added = tok.decode(merged.tokens[len(carried.tokens):].tolist())
    assert "def scale" in added and "class Box" in added and "compute" not in added and "transform" not in added
    assert [s["name"] for s in json.loads((out / "sources.json").read_text())] == ["Already-Carried", "permissive_pkg"]
    assert load_split(out, "valid").tokens.tolist() == load_split(tiny_data, "valid").tokens.tolist()


def test_parallel_tokenizing_matches_the_serial_one(tiny_data: Path) -> None:
    from training.dataset import tokenize_parallel, tokenize_split

    texts = [f"def f{i}(x):\n    return x + {i}\n" for i in range(9)] + SNIPPETS
    serial = tokenize_split(texts, CodeTokenizer.from_file(tiny_data / "tokenizer.json"))
    parallel = tokenize_parallel(texts, tiny_data / "tokenizer.json", workers=2, chunk=4)
    for field in ("tokens", "doc_starts", "spans"):
        assert np.array_equal(getattr(parallel, field), getattr(serial, field)), field


def test_parallel_gathering_matches_the_serial_one(tmp_path: Path, fake_distribution) -> None:
    from training.corpus import gather, installed_distributions

    site = tmp_path / "site"
    for i in range(3):
        files = {f"pkg{i}/m{j}.py": f"def f{j}(x):\n    return x * {i + j}\n" for j in range(5)}
        files[f"pkg{i}/same.py"] = "SHARED = compute_value(1, 2, 3)\n"  # the same file in every package: kept once
        fake_distribution(site, f"pkg{i}", files, "License: MIT")
    fake_distribution(site, "closed", {"closed/a.py": "secret = unlock(42)\n"}, "License: GPL-3.0")
    dists = installed_distributions([], [str(site)])
    serial = gather([], distributions=dists, valid_share=False, workers=1)
    parallel = gather([], distributions=dists, valid_share=False, workers=2)
    assert parallel.train == serial.train and parallel.sources == serial.sources
    assert len(serial.train) == 3 * 5 + 1 and [s["name"] for s in serial.sources] == ["pkg0", "pkg1", "pkg2"]
    assert sum("compute_value" in t for t in serial.train) == 1 and not any("unlock" in t for t in serial.train)


def test_good_text_counts_letters_and_digits_as_isalnum_does() -> None:
    from training.corpus import good_text

    for text in ["x = 1\n", "__ = __\n" * 3, "\u00e9t\u00e9 = '\u00b2\u00bd\u0663'\n", "# ---- ==== ----\n", "\u4e2d\u6587 = 1\n"]:
        expected = sum(ch.isalnum() for ch in text) / len(text) > 0.25
        assert good_text(text) == expected, text
