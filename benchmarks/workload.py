"""What the benchmarks run on: real code around each hole, and a model directory (real or random weights).

The code is a Python standard library module read at run time (argparse.py: ~100 KB, on every machine), so a
window really holds ~256 tokens of code. The model is the built-in one when it exists; otherwise the newest
checkpoint of a training run, copied so a save in progress cannot change it under us; otherwise random weights of
the same shape. Speed does not depend on the weights, and every result names which one it used.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RUN_CHECKPOINT = REPO / "runs" / "cpu-small"  # the CPU training run's model directory
PROJECT_TOKENIZER = REPO / "data" / "tokenizer.json"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")

# Shapes with random weights. "codefill-base" is training's "gpu" preset (the built-in model's shape);
# "open-dcoder-0.5b" is Qwen2-0.5B's shape, as Open-dCoder-0.5B uses it; "tiny" is for smoke runs and tests.
SHAPES: dict[str, dict[str, Any]] = {
    "codefill-base": dict(hidden_size=384, num_layers=10, num_heads=6, num_kv_heads=3, intermediate_size=1024),
    "open-dcoder-0.5b": dict(vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
                             intermediate_size=4864, qkv_bias=True, tie_embeddings=True, rope_theta=1000000.0,
                             norm_eps=1e-6),
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128, qkv_bias=True),
}


def code_text() -> str:
    """The source of a standard library module: real code, no download."""
    return Path(inspect.getsourcefile(argparse) or argparse.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class HoleText:
    """A hole in real code: the text before it, the text after it, and the line it replaced."""

    prefix: str
    suffix: str
    removed: str


def holes(text: str, count: int, min_context: int = 6000) -> list[HoleText]:
    """count holes spread over the middle of text, each a removed non-blank line with min_context characters of
    code on both sides (so prefix and suffix both fill their share of a 256-token window)."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    usable = [i for i, line in enumerate(lines)
              if line.strip() and min_context <= starts[i] and starts[i + 1] <= len(text) - min_context]
    if len(usable) < count:
        raise ValueError(f"the code text is too short for {count} holes")
    picks = [usable[(j * len(usable)) // count + len(usable) // (2 * count)] for j in range(count)]
    return [HoleText(text[: starts[i]], text[starts[i + 1] :], lines[i]) for i in picks]


# ----------------------------------------------------------------------------------------------------------------
# Models


@dataclass
class ModelSource:
    """A model directory to benchmark and where its weights came from."""

    path: Path
    weights: str  # "built-in", "checkpoint <path>", "given <path>" or "random (<shape>)"
    shape: str | None = None
    temp: list[tempfile.TemporaryDirectory] = field(default_factory=list)  # kept alive while in use

    def describe(self) -> dict[str, Any]:
        """Name, weights and shape for the results."""
        import json

        cfg = json.loads((self.path / "config.json").read_text())
        return {"path": str(self.path), "weights": self.weights, "config": cfg}


def bench_tokenizer(out: Path, smoke: bool = False) -> Path:
    """The project's tokenizer (data/tokenizer.json) when present, else a BPE trained now on the code text."""
    target = out / "tokenizer.json"
    if PROJECT_TOKENIZER.is_file() and not smoke:
        shutil.copyfile(PROJECT_TOKENIZER, target)
        return target
    from training.bpe import train_bpe

    text = code_text()
    lines = text.splitlines(keepends=True)
    chunks = ["".join(lines[i : i + 50]) for i in range(0, len(lines), 50)]
    train_bpe(chunks, 512 if smoke else 4096, target)
    return target


def random_model_dir(shape: str, out: Path, smoke: bool = False, seed: int = 0) -> Path:
    """A model directory with random weights of a named shape, saved with engine.checkpoint.save_model."""
    import torch

    from engine.checkpoint import save_model
    from engine.config import ModelConfig
    from engine.model import DiffusionLM
    from tokenizers import Tokenizer

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    out.mkdir(parents=True, exist_ok=True)
    tok_path = bench_tokenizer(out, smoke)
    vocab = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    fields = {"vocab_size": vocab, **SHAPES[shape]}
    fields["vocab_size"] = max(fields["vocab_size"], vocab)
    cfg = ModelConfig(**fields)
    model = DiffusionLM(cfg)
    model.init_weights(seed)
    with torch.no_grad():  # so that tied weights are written once and nothing keeps a graph
        save_model(model, tok_path, out)
    return out


def copy_model_dir(src: Path, out: Path) -> Path:
    """Copy a model directory's three files (retrying once: a training run swaps its directory when it saves)."""
    out.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        try:
            for name in MODEL_FILES:
                shutil.copyfile(src / name, out / name)
            return out
        except FileNotFoundError:
            if attempt:
                raise
            import time

            time.sleep(2.0)
    return out


def prepare_model(spec: str | None, smoke: bool = False) -> ModelSource:
    """Resolve --model: a directory; "random[:SHAPE]"; None for the built-in model (falling back to the training
    run's checkpoint, then to random weights of the built-in shape)."""
    if smoke and spec is None:
        spec = "random:tiny"
    if spec and spec.startswith("random"):
        shape = spec.partition(":")[2] or "codefill-base"
        tmp = tempfile.TemporaryDirectory(prefix="codefill-bench-")
        path = random_model_dir(shape, Path(tmp.name) / shape, smoke=smoke or shape == "tiny")
        return ModelSource(path, f"random ({shape})", shape, [tmp])
    if spec:
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            from engine.model_dir import resolve_model_path

            path = resolve_model_path(spec)
        return ModelSource(path, f"given {path}")
    try:
        from engine.model_dir import resolve_model_path

        return ModelSource(resolve_model_path(None), "built-in")
    except Exception:  # no built-in model yet
        pass
    if all((RUN_CHECKPOINT / n).is_file() for n in MODEL_FILES):
        tmp = tempfile.TemporaryDirectory(prefix="codefill-bench-")
        path = copy_model_dir(RUN_CHECKPOINT, Path(tmp.name) / "checkpoint")
        return ModelSource(path, f"checkpoint {RUN_CHECKPOINT} (copied; the built-in model is not there yet)",
                           None, [tmp])
    return prepare_model("random:codefill-base", smoke)
