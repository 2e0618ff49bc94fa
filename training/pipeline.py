"""Build what training reads, each step skipped when its output exists: corpus, tokenizer, token arrays.

    python -m training.pipeline fetch      # data/wheels: the corpus's PyPI projects (training/corpus-wheels.txt)
    python -m training.pipeline prepare --tokenizer engine/models/codefill-base/tokenizer.json
                                           # data/corpus, data/tokenizer.json, data/{train,valid}.npz

`prepare` with --tokenizer tokenizes with that tokenizer instead of training a new one: data to continue a model
with must use the model's own (training refuses another). Then `python -m training.device_data pack` makes the
copy that travels to a lent GPU.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from engine.tokenizer import CodeTokenizer
from training.bpe import train_bpe
from training.corpus import MAX_FILE_BYTES, Corpus, default_roots, gather
from training.dataset import tokenize_split

TOKENIZER_SAMPLE_CHARS = 40_000_000  # the BPE is trained on a sample of files this large


WHEEL_LIST = Path(__file__).with_name("corpus-wheels.txt")


def fetch_wheels(out: Path, requirements: Path = WHEEL_LIST) -> None:
    """Download the corpus's wheels (no dependencies) with this interpreter's pip."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-r",
                    str(requirements), "-d", str(out)], check=True)


def prepare_data(data: Path, sources: list[Path], wheel_dir: Path | None, vocab_size: int = 8192,
                 tokenizer: Path | None = None) -> None:
    """data/corpus/, data/tokenizer.json (a copy of tokenizer when given, else trained), data/train.npz and
    data/valid.npz."""
    data.mkdir(parents=True, exist_ok=True)
    corpus_dir = data / "corpus"
    if not (corpus_dir / "train.jsonl").exists():
        roots = default_roots(wheel_dir) + sources
        print(f"gathering sources from {len(roots)} roots", file=sys.stderr)
        corpus = gather(roots)
        # Each extra directory adds one entry to corpus.sources, last and in order: one that added nothing is a
        # mistake to say now, not a corpus silently without it.
        dirs_only = all(src.is_dir() for src in sources)  # a wheel given as a source may add no entry
        for src, entry in zip(sources, corpus.sources[len(corpus.sources) - len(sources):]):
            if dirs_only and entry["files"] == "0":
                raise ValueError(f"--source {src}: no file of it made it into the corpus (it needs .py files outside "
                                 "test directories that are text, not binary or undecodable, under "
                                 f"{MAX_FILE_BYTES // 1000} kB and not already in the corpus)")
        corpus.save(corpus_dir)
    corpus = Corpus.load(corpus_dir)
    print(f"corpus: {len(corpus.train)} training files, {len(corpus.valid)} validation files", file=sys.stderr)
    tok_path = data / "tokenizer.json"
    if not tok_path.exists() and tokenizer is not None:
        shutil.copyfile(tokenizer, tok_path.with_name("tokenizer.json.tmp"))
        os.replace(tok_path.with_name("tokenizer.json.tmp"), tok_path)
    if not tok_path.exists():
        files = corpus.train[:]
        random.Random(0).shuffle(files)
        sample, size = [], 0
        for text in files:
            if size >= TOKENIZER_SAMPLE_CHARS:
                break
            sample.append(text)
            size += len(text)
        train_bpe(sample, vocab_size, tok_path.with_name("tokenizer.json.tmp"))
        os.replace(tok_path.with_name("tokenizer.json.tmp"), tok_path)
    tok = CodeTokenizer.from_file(tok_path)
    for split in ("valid", "train"):
        out = data / f"{split}.npz"
        if not out.exists():
            arrays = tokenize_split(getattr(corpus, split), tok)
            arrays.save(out)
            print(f"{split}: {len(arrays.tokens):,} tokens, {len(arrays.spans):,} syntax spans", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """`python -m training.pipeline fetch|prepare`."""
    p = argparse.ArgumentParser(prog="python -m training.pipeline", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the corpus's wheels")
    f.add_argument("--out", default="data/wheels")
    r = sub.add_parser("prepare", help="corpus, tokenizer and token arrays under --data")
    r.add_argument("--data", default="data")
    r.add_argument("--wheels", default="data/wheels")
    r.add_argument("--source", action="append", default=[], help="extra source directory (repeatable)")
    r.add_argument("--tokenizer", default=None, help="use this tokenizer.json instead of training one")
    r.add_argument("--vocab", type=int, default=8192)
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        fetch_wheels(Path(args.out))
    else:
        prepare_data(Path(args.data), [Path(s) for s in args.source], Path(args.wheels), args.vocab,
                     Path(args.tokenizer) if args.tokenizer else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
