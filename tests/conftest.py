"""Shared fixtures: a tiny but real model directory, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLE_CODE = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    sys.exit(main())\n",
    "function f(x) {\n  return x * 2;\n}\n",
    "fn main() {\n    println!(\"hi\");\n}\n",
    "x = [1, 2, 3]\ny = {'a': 1}\n# comment héllo\n\tz = None\n",
]


def write_tiny_model(out: Path, seed: int = 0, vocab: int = 400) -> Path:
    """A model directory with a small trained BPE tokenizer and random weights (2 layers, width 32)."""
    from engine.checkpoint import save_model
    from engine.config import ModelConfig
    from engine.model import DiffusionLM
    from training.bpe import train_bpe

    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.json"
    tok = train_bpe(SAMPLE_CODE * 20, vocab, tok_path)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=64)
    model = DiffusionLM(cfg)
    model.init_weights(seed)
    save_model(model, tok_path, out)
    return out


def write_distribution(root: Path, name: str, files: dict[str, str], metadata: str = "") -> None:
    """An installed distribution as pip leaves it in root: its files and a .dist-info with METADATA and RECORD
    (`metadata`: extra METADATA lines, e.g. "License: MIT")."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{metadata}\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in files) + f"{info.name}/RECORD,,\n")


@pytest.fixture(scope="session")
def fake_distribution():  # type: ignore[no-untyped-def]
    """write_distribution, for tests that build a fake site-packages."""
    return write_distribution


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny, untrained) model directory: for plumbing tests, not for quality."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))
