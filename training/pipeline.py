"""Build what training reads, each step skipped when its output exists: corpus, tokenizer, token arrays."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from engine.tokenizer import CodeTokenizer
from training.bpe import train_bpe
from training.corpus import Corpus, default_roots, gather
from training.dataset import tokenize_split

TOKENIZER_SAMPLE_CHARS = 40_000_000  # the BPE is trained on a sample of files this large


def prepare_data(data: Path, sources: list[Path], wheel_dir: Path | None, vocab_size: int = 8192) -> None:
    """data/corpus/, data/tokenizer.json, data/train.npz and data/valid.npz."""
    data.mkdir(parents=True, exist_ok=True)
    corpus_dir = data / "corpus"
    if not (corpus_dir / "train.jsonl").exists():
        roots = default_roots(wheel_dir) + sources
        print(f"gathering sources from {len(roots)} roots", file=sys.stderr)
        gather(roots).save(corpus_dir)
    corpus = Corpus.load(corpus_dir)
    print(f"corpus: {len(corpus.train)} training files, {len(corpus.valid)} validation files", file=sys.stderr)
    tok_path = data / "tokenizer.json"
    if not tok_path.exists():
        files = corpus.train[:]
        random.Random(0).shuffle(files)
        sample, size = [], 0
        for text in files:
            if size >= TOKENIZER_SAMPLE_CHARS:
                break
            sample.append(text)
            size += len(text)
        train_bpe(sample, vocab_size, tok_path)
    tok = CodeTokenizer.from_file(tok_path)
    for split in ("valid", "train"):
        out = data / f"{split}.npz"
        if not out.exists():
            arrays = tokenize_split(getattr(corpus, split), tok)
            arrays.save(out)
            print(f"{split}: {len(arrays.tokens):,} tokens, {len(arrays.spans):,} syntax spans", file=sys.stderr)
