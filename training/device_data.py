"""Training data small enough to travel to a lent GPU machine, and the bookkeeping around a device run.

The device machine gets a copy of the working tree and nothing else (64 MiB in all, tracked files and carried
paths together; nothing can be downloaded there). data/ is ~230 MB (corpus text, wheels, token arrays), so a device
run reads a packed copy of the token arrays instead:

    python -m training.device_data pack --data data --out gpu_data   # gpu_data/ is git-ignored: name it in carry
    python -m training.device_data pack --data data --extra data/js --out gpu_data   # with JavaScript (training.npm)
    python -m training.device_data size --carry gpu_data              # what a device run would send, against 64 MiB

gpu_data/ holds tokenizer.json, {train,valid}.pack.npz and pack.json. A .pack.npz stores a TokenArrays as
  - tokens: the raw little-endian token bytes, xz/LZMA-compressed (BPE ids of code compress to ~25%),
  - doc_starts: as they are (one int64 per document),
  - spans: sorted by start (stable; ExampleSampler sorts them the same way, so it draws the same examples), as
    LZMA-compressed start deltas (uint32) and lengths (uint8 or uint16): about one byte per span,
plus a SHA-1 of the tokens that load_packed checks. train() reads .pack.npz files directly (load_split).

On the device machine, `extend` adds the Python source of the packages installed there (the image holds torch,
jax, transformers, scipy and many more) to the carried training split, so a session trains on more than travels:

    python -m training.device_data extend --data gpu_data --out /tmp/codefill-data   # then train on --data there

It keeps permissively licensed distributions that the carried corpus does not already hold (by project name, from
gpu_data/sources.json), tokenizes them with the carried tokenizer, and writes train.npz (carried + new),
valid.pack.npz (as carried: validation figures stay comparable), tokenizer.json and sources.json (every source
with its license, for the model card). tree-sitter-python finds the syntax spans: carry its wheels
(gpu_data/wheels, see training/device_train.sh).

`--max-train-tokens N` keeps a seeded random subset of whole training documents of about N tokens, for when the
data outgrows its share of the 64 MiB; `summary` turns an exported model's training.json into the small run
report that training/device_train.sh brings back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.dataset import TokenArrays, merge, tokenize_parallel

FORMAT = 1
TRAVEL_LIMIT = 64 * 2**20  # the device tool's limit on the working tree it sends, carried paths included


def _xz(data: bytes, preset: int) -> np.ndarray:
    return np.frombuffer(lzma.compress(data, preset=preset), dtype=np.uint8)


def _unxz(blob: np.ndarray) -> bytes:
    return lzma.decompress(blob.tobytes())


def pack_arrays(arrays: TokenArrays, path: Path, preset: int = 6) -> int:
    """Write arrays to path (.pack.npz) compactly; returns the file size in bytes."""
    tokens = np.ascontiguousarray(arrays.tokens)
    if tokens.dtype not in (np.uint16, np.int32, np.uint32):
        raise ValueError(f"unexpected token dtype {tokens.dtype}")
    tok_bytes = tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes()
    spans = np.asarray(arrays.spans, dtype=np.int64).reshape(-1, 2)
    spans = spans[np.argsort(spans[:, 0], kind="stable")] if len(spans) else spans
    starts, lengths = spans[:, 0], spans[:, 1] - spans[:, 0]
    deltas = np.diff(starts, prepend=0) if len(spans) else starts
    if len(spans) and (deltas.max() >= 2**32 or starts.min() < 0 or lengths.min() < 0):
        raise ValueError("spans out of range for packing")
    len_dtype = np.uint8 if not len(lengths) or lengths.max() < 256 else np.uint16
    if len(lengths) and lengths.max() >= 2**16:
        raise ValueError("span longer than 65535 tokens")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        format=np.int64(FORMAT),
        tokens_xz=_xz(tok_bytes, preset),
        tokens_dtype=np.array(tokens.dtype.str.lstrip("<>=|")),
        n_tokens=np.int64(len(tokens)),
        tokens_sha1=np.array(hashlib.sha1(tok_bytes).hexdigest()),
        doc_starts=np.asarray(arrays.doc_starts, dtype=np.int64),
        span_deltas_xz=_xz(deltas.astype("<u4").tobytes(), preset),
        span_lengths_xz=_xz(lengths.astype(np.dtype(len_dtype).newbyteorder("<")).tobytes(), preset),
        span_lengths_dtype=np.array(np.dtype(len_dtype).str.lstrip("<>=|")),
        n_spans=np.int64(len(spans)),
    )
    os.replace(tmp, path)
    return path.stat().st_size


def load_packed(path: Path) -> TokenArrays:
    """Read what pack_arrays wrote (checking the tokens' SHA-1)."""
    with np.load(path) as z:
        if int(z["format"]) != FORMAT:
            raise ValueError(f"{path}: pack format {int(z['format'])}, expected {FORMAT}")
        raw = _unxz(z["tokens_xz"])
        if hashlib.sha1(raw).hexdigest() != str(z["tokens_sha1"]):
            raise ValueError(f"{path}: the tokens do not match their checksum")
        tokens = np.frombuffer(raw, dtype=np.dtype(str(z["tokens_dtype"])).newbyteorder("<"))
        tokens = tokens.astype(str(z["tokens_dtype"]), copy=False)
        if len(tokens) != int(z["n_tokens"]):
            raise ValueError(f"{path}: {len(tokens)} tokens, expected {int(z['n_tokens'])}")
        n = int(z["n_spans"])
        deltas = np.frombuffer(_unxz(z["span_deltas_xz"]), dtype="<u4").astype(np.int64)
        lengths = np.frombuffer(_unxz(z["span_lengths_xz"]),
                                dtype=np.dtype(str(z["span_lengths_dtype"])).newbyteorder("<")).astype(np.int64)
        if len(deltas) != n or len(lengths) != n:
            raise ValueError(f"{path}: {len(deltas)} span starts and {len(lengths)} lengths, expected {n}")
        starts = np.cumsum(deltas)
        spans = np.stack([starts, starts + lengths], axis=1) if n else np.zeros((0, 2), dtype=np.int64)
        return TokenArrays(tokens=tokens, doc_starts=np.array(z["doc_starts"], dtype=np.int64), spans=spans)


def subset(arrays: TokenArrays, max_tokens: int, seed: int = 0) -> TokenArrays:
    """Whole documents, in a seeded random order, until about max_tokens tokens; spans kept and rebased."""
    starts = arrays.doc_starts
    lens = np.diff(starts)
    order = np.random.default_rng(seed).permutation(len(lens))
    keep = np.sort(order[: max(1, int(np.searchsorted(np.cumsum(lens[order]), max_tokens, side="right")))])
    pieces, new_starts, span_parts = [], [0], []
    sp = np.asarray(arrays.spans, dtype=np.int64).reshape(-1, 2)
    sp = sp[np.argsort(sp[:, 0], kind="stable")]
    for d in keep:
        a, b = int(starts[d]), int(starts[d + 1])
        pieces.append(arrays.tokens[a:b])
        lo, hi = np.searchsorted(sp[:, 0], a), np.searchsorted(sp[:, 0], b)
        inside = sp[lo:hi]
        inside = inside[inside[:, 1] <= b]
        span_parts.append(inside - a + new_starts[-1])
        new_starts.append(new_starts[-1] + b - a)
    return TokenArrays(tokens=np.concatenate(pieces).astype(arrays.tokens.dtype),
                       doc_starts=np.asarray(new_starts, dtype=np.int64),
                       spans=np.concatenate(span_parts).reshape(-1, 2) if span_parts else np.zeros((0, 2), np.int64))


def _same_vocab(a: Path, b: Path) -> bool:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(a)).get_vocab() == Tokenizer.from_file(str(b)).get_vocab()


def pack(data: Path, out: Path, preset: int = 6, max_train_tokens: int = 0, extra: list[Path] | None = None) -> dict:
    """data/{tokenizer.json,train.npz,valid.npz} -> out/{tokenizer.json,train.pack.npz,valid.pack.npz,pack.json}.

    extra: more prepared directories (training.npm prepare: train.npz, tokenizer.json, corpus/sources.json) whose
    training documents join the training split (after data's; max_train_tokens then applies to the whole) and whose
    sources join sources.json; the validation split stays data's, so validation figures stay comparable."""
    extra = extra or []
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / "tokenizer.json", out / "tokenizer.json")
    sources: list = []
    for d in [data, *extra]:  # what extend leaves out, and the model card's table
        if d is not data and not _same_vocab(data / "tokenizer.json", d / "tokenizer.json"):
            raise ValueError(f"{d}: tokenized with another tokenizer than {data}")
        if (d / "corpus" / "sources.json").exists():
            sources += json.loads((d / "corpus" / "sources.json").read_text())
    if sources:
        (out / "sources.json").write_text(json.dumps(sources, indent=1) + "\n")
    report: dict = {"format": FORMAT, "source": str(data), "extra": [str(d) for d in extra], "lzma_preset": preset,
                    "splits": {}}
    for split in ("valid", "train"):
        arrays = TokenArrays.load(data / f"{split}.npz")
        if split == "train" and extra:
            arrays = merge([arrays, *(TokenArrays.load(d / "train.npz") for d in extra)])
        full = len(arrays.tokens)
        if split == "train" and max_train_tokens and full > max_train_tokens:
            arrays = subset(arrays, max_train_tokens)
        size = pack_arrays(arrays, out / f"{split}.pack.npz", preset)
        report["splits"][split] = {"tokens": len(arrays.tokens), "of_tokens": full,
                                   "documents": len(arrays.doc_starts) - 1, "spans": len(arrays.spans),
                                   "bytes": size, "plain_bytes": (data / f"{split}.npz").stat().st_size}
        print(f"{split}: {len(arrays.tokens):,} tokens of {full:,}, {len(arrays.spans):,} spans -> "
              f"{size / 2**20:.2f} MiB", file=sys.stderr)
    report["total_bytes"] = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) + 400  # + pack.json
    model_tok = Path(__file__).resolve().parent.parent / "engine" / "models" / "codefill-base" / "tokenizer.json"
    if model_tok.exists() and not _same_vocab(model_tok, out / "tokenizer.json"):
        print(f"WARNING: {data / 'tokenizer.json'} is not the tokenizer of {model_tok.parent}: a device run could "
              "not continue that model from this data (train() refuses). Tokenize the corpus with that model's "
              "tokenizer.json first.", file=sys.stderr)
    (out / "pack.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{out}: {report['total_bytes'] / 2**20:.2f} MiB in all", file=sys.stderr)
    return report


def load_split(data_dir: Path, split: str) -> TokenArrays:
    """data_dir/{split}.npz, or the compact {split}.pack.npz that pack writes."""
    plain = data_dir / f"{split}.npz"
    return TokenArrays.load(plain) if plain.exists() else load_packed(data_dir / f"{split}.pack.npz")


def extend(data: Path, out: Path, workers: int = 0, path: list[str] | None = None, gather_s: float = 45) -> dict:
    """data (as carried) + the installed distributions' Python files (on sys.path, or on path) -> out, ready for
    `codefill train --data`. Reading files stops after gather_s seconds (what was read is kept)."""
    from training.corpus import gather, installed_distributions

    t0 = time.time()
    sources = json.loads((data / "sources.json").read_text()) if (data / "sources.json").exists() else []
    dists = installed_distributions([s["name"] for s in sources], path)
    # Largest projects first: when time runs out, the many small ones are what is left out.
    dists.sort(key=lambda d: -len(d.files or []))
    corpus = gather([], distributions=dists, valid_share=False, deadline=time.monotonic() + gather_s,
                    workers=workers)
    t1 = time.time()
    extra = tokenize_parallel(corpus.train, data / "tokenizer.json", workers)
    t2 = time.time()
    base = load_split(data, "train")
    out.mkdir(parents=True, exist_ok=True)
    merge([base, extra]).save(out / "train.tmp.npz")
    os.replace(out / "train.tmp.npz", out / "train.npz")
    for name in ("tokenizer.json", "valid.pack.npz", "valid.npz"):
        if (data / name).exists():
            shutil.copyfile(data / name, out / name)
    (out / "sources.json").write_text(json.dumps(sources + corpus.sources, indent=1) + "\n")
    report = {"carried_tokens": int(len(base.tokens)), "added_tokens": int(len(extra.tokens)),
              "added_files": len(corpus.train), "added_sources": len(corpus.sources),
              "gather_s": round(t1 - t0, 1), "tokenize_s": round(t2 - t1, 1), "total_s": round(time.time() - t0, 1)}
    (out / "extend.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"extend: {report['added_tokens']:,} tokens from {report['added_files']:,} files of "
          f"{report['added_sources']} installed projects added to {report['carried_tokens']:,} carried tokens "
          f"in {report['total_s']} s", file=sys.stderr)
    return report


def travel_size(repo: Path, carry: list[str]) -> tuple[int, list[tuple[str, int]]]:
    """Bytes a device run would send: tracked and untracked-not-ignored files, plus the carried paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.split(b"\0")
    items: list[tuple[str, int]] = []
    tree = 0
    for name in filter(None, listed):
        p = repo / os.fsdecode(name)
        if p.is_file() and not p.is_symlink():
            tree += p.stat().st_size
    items.append(("working tree (tracked + untracked, not ignored)", tree))
    for c in carry:
        p = repo / c
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()] if p.exists() else []
        items.append((c, sum(f.stat().st_size for f in files)))
    return sum(n for _, n in items), items


def run_summary(model_dir: Path) -> dict:
    """The last session of an exported model directory's training.json, as the small run report."""
    record = json.loads((model_dir / "training.json").read_text())
    st = record["state"]
    last = st["sessions"][-1] if st["sessions"] else {}
    return {
        "gpu": last.get("hardware"),
        "steps": last.get("end_step", st["step"]) - last.get("start_step", 0),
        "tokens": last.get("tokens"),
        "tokens_per_s": last.get("tokens_per_s"),
        "tokens_per_s_steady": last.get("tokens_per_s_steady"),
        "minutes": last.get("minutes"),
        "first_loss": last.get("first_loss"),
        "last_loss": last.get("last_loss"),
        "valid_loss": last.get("valid_loss"),
        "compiled": last.get("compiled"),
        "interrupted": last.get("interrupted"),  # "SIGTERM": stopped early (device_train.sh's hard limit), saved
        "init_from": last.get("init_from"),
        "parameters": last.get("parameters"),
        "batch_size": last.get("batch_size"),
        "total_steps": st["step"],
        "total_tokens": st["tokens_seen"],
        "sessions": len(st["sessions"]),
        "valid_history": [[h["step"], h["valid_loss"]] for h in st["history"][-20:]],  # [step, loss]
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m training.device_data pack|extend|size|summary`."""
    p = argparse.ArgumentParser(prog="python -m training.device_data", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="write the compact copy of the token arrays")
    a.add_argument("--data", default="data")
    a.add_argument("--out", default="gpu_data")
    a.add_argument("--preset", type=int, default=6, help="LZMA preset (6: ~25%% of the raw tokens; 1: faster)")
    a.add_argument("--max-train-tokens", type=int, default=0, help="keep a random subset of whole documents")
    a.add_argument("--extra", action="append", default=[], metavar="DIR",
                   help="a prepared directory whose training documents join the training split (training.npm)")
    e = sub.add_parser("extend", help="on the device: add the installed packages' Python files to the data")
    e.add_argument("--data", default="gpu_data")
    e.add_argument("--out", default="/tmp/codefill-data")
    e.add_argument("--workers", type=int, default=0, help="tokenizing processes (0: one per CPU)")
    e.add_argument("--gather-s", type=float, default=45, help="stop reading files after this many seconds")
    s = sub.add_parser("size", help="what a device run would send, against the 64 MiB limit")
    s.add_argument("--carry", action="append", default=[])
    m = sub.add_parser("summary", help="the run report of an exported model directory, as JSON")
    m.add_argument("model_dir")
    m.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(Path(args.data), Path(args.out), args.preset, args.max_train_tokens, [Path(d) for d in args.extra])
    elif args.cmd == "extend":
        extend(Path(args.data), Path(args.out), args.workers, gather_s=args.gather_s)
    elif args.cmd == "size":
        total, items = travel_size(Path.cwd(), args.carry)
        for name, n in items:
            print(f"{n / 2**20:8.2f} MiB  {name}")
        print(f"{total / 2**20:8.2f} MiB  in all, limit {TRAVEL_LIMIT / 2**20:.0f} MiB"
              f"{'' if total <= TRAVEL_LIMIT else '  OVER THE LIMIT'}")
        return 0 if total <= TRAVEL_LIMIT else 1
    else:
        summary = run_summary(Path(args.model_dir))
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
