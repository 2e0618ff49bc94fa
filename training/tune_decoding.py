"""Choose decoding defaults on held-out code (the corpus's validation split), never on the public benchmarks.

    python -m training.tune_decoding --model runs/cpu-small --n 200

Holes are whole lines (indentation and line break included, as an editor's blank-line hole or a benchmark's
single-line task) and rests of lines; the score is exact match of the filled line, plus the share of empty fills.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.api import Engine


@dataclass
class DevHole:
    """One held-out hole."""

    prefix: str
    middle: str
    suffix: str
    kind: str  # "line" (a whole line) or "rest" (the rest of a line)


def make_holes(texts: list[str], n: int, seed: int = 0) -> list[DevHole]:
    """n holes from random files: lines with some code in them, not too long."""
    rng = random.Random(seed)
    holes: list[DevHole] = []
    while len(holes) < n:
        text = rng.choice(texts)
        lines = text.splitlines(keepends=True)
        if len(lines) < 10:
            continue
        i = rng.randrange(3, len(lines) - 3)
        line = lines[i]
        code = line.strip()
        if not (4 <= len(code) <= 80) or code.startswith("#") or not line.endswith("\n"):
            continue
        before, after = "".join(lines[:i]), "".join(lines[i + 1 :])
        if rng.random() < 0.5:
            holes.append(DevHole(before, line[:-1], "\n" + after, "line"))
        else:
            cut = len(line) - len(line.lstrip()) + rng.randrange(1, max(2, len(code) - 1))
            holes.append(DevHole(before + line[:cut], line[cut:-1], "\n" + after, "rest"))
    return holes


def score(engine: Engine, holes: list[DevHole], settings: dict) -> dict:
    """Exact match, empty share and median latency of one decoding setting."""
    for key, value in settings.items():
        setattr(engine.config, key, value)
    exact = empty = 0
    secs, passes = [], []
    for h in holes:
        f = engine.fill(h.prefix, h.suffix, 32, single_line=True)
        exact += f.text.strip() == h.middle.strip()
        empty += not f.text.strip()
        secs.append(f.seconds)
        passes.append(f.forward_passes)
    n = len(holes)
    return {**settings, "exact": round(100 * exact / n, 1), "empty": round(100 * empty / n, 1),
            "ms": round(1000 * statistics.median(secs), 1), "passes": statistics.median(passes),
            "mean_passes": round(statistics.mean(passes), 2)}


def main(argv: list[str] | None = None) -> int:
    """Grid over a few decoding settings; prints one JSON line per setting."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--valid", default="data/corpus/valid.jsonl")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--grid", default="default", help="'default' or a JSON object of lists")
    p.add_argument("--seed", type=int, default=0, help="which holes (make_holes' seed)")
    args = p.parse_args(argv)
    texts = [json.loads(line)["text"] for line in open(args.valid)]
    holes = make_holes(texts, args.n, args.seed)
    engine = Engine.from_pretrained(args.model)
    grid = {"order": ["confidence", "left-to-right"], "end_penalty": [0.0, 2.0], "steps": [8, 16],
            "min_tokens": [1]} if args.grid == "default" else json.loads(args.grid)
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        print(json.dumps(score(engine, holes, dict(zip(keys, values)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
