"""Held-out evaluation: model directories compared on installed Python code that no training corpus listed.

    python -m training.heldout --models engine/models/codefill-base /tmp/run/model \
        --sources gpu_data/sources.json --max-files 60 --json heldout.json

The files come from the installed distributions of this interpreter (or of --root directories), minus every
project named in a sources.json, minus codefill itself, filtered by the training corpus's own path filter. With
--npm DIR they are instead the JavaScript of the npm tarballs in DIR (training/heldout-npm.txt, fetched with
`python -m training.npm fetch`), kept as training.npm keeps a package's files, minus packages a sources.json
names. Every model sees the same windows and the same masks: cross-entropy on masked positions at fixed mask rates, and the
argmax accuracy of a contiguous middle span predicted in one forward pass. Runs on the CPU in float32.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.checkpoint import load_model
from engine.errors import CheckpointError
from engine.model import DiffusionLM
from engine.tokenizer import CodeTokenizer
from training.corpus import (
    good_text,
    installed_distributions,
    installed_files,
    normalized_name,
)

MASK_RATES = (0.15, 0.5, 0.85)
SPAN = 16  # tokens of the middle span predicted in one forward pass
WINDOW = 256
MAX_BYTES = 200_000
SELF = "codefill"  # the project under evaluation is never held-out code
SPAN_KEY = "span"
FIGURES = [f"ce@{t}" for t in MASK_RATES] + ["ce_mean", "span_acc"]


@dataclass
class Window:
    """WINDOW tokens of one held-out file."""

    project: str
    path: Path
    start: int  # token offset in the file
    ids: list[int]


def trained_names(sources: list[Path]) -> set[str]:
    """Normalised names of the projects listed in sources.json files (as training writes them; an npm package's
    entry is "name version"), plus codefill."""
    names = {SELF}
    for path in sources:
        names |= {normalized_name(re.sub(r"\s+\d[\w.+-]*$", "", s["name"])) for s in json.loads(path.read_text())}
    return names


def collect_npm(directory: Path, exclude: set[str], out: Path) -> dict[str, list[Path]]:
    """Normalised package name -> its JavaScript files (those training.npm would keep), written under out, for each
    npm tarball in directory whose package is not in exclude."""
    from training.npm import read_tarball

    files: dict[str, list[Path]] = {}
    for tarball in sorted(directory.glob("*.tgz")):
        label, _, texts = read_tarball(tarball)
        name = normalized_name(label.split(" ")[0])
        if name in exclude or name in files or not texts:
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        files[name] = []
        for i, text in enumerate(texts):
            path = out / name / f"{i:04d}.js"
            path.write_text(text, encoding="utf-8")
            files[name].append(path)
    return files


def default_roots() -> list[Path]:
    """The site-packages directories of the running interpreter."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[k]) for k in ("purelib", "platlib")))


def collect_files(roots: list[Path], exclude: set[str], max_bytes: int = MAX_BYTES) -> dict[str, list[Path]]:
    """Normalised project name -> its Python files that the training corpus would keep, for each distribution
    installed in roots whose name is not in exclude (the first root that has a project wins)."""
    out: dict[str, list[Path]] = {}
    for root in roots:
        base = root.resolve()
        for dist in installed_distributions(exclude, [str(root)]):
            name = normalized_name(dist.metadata["Name"])
            if name in out:
                continue
            located = (path.resolve() for path in installed_files(dist, (".py",), max_bytes))
            files = [path for path in located if base in path.parents]
            if files:
                out[name] = sorted(files)
    return out


def pick_windows(files: dict[str, list[Path]], tok: CodeTokenizer, per_project: int, max_files: int, seed: int,
                 window: int = WINDOW) -> list[Window]:
    """One window of `window` tokens from each of up to per_project files per project (drawn at random, files
    too short or data-like skipped, identical texts once), then projects taken in turn up to max_files."""
    rng = random.Random(seed)
    seen: set[str] = set()
    by_project: dict[str, list[Window]] = {}
    for project in sorted(files):
        order = files[project][:]
        rng.shuffle(order)
        chosen: list[Window] = []
        for path in order:
            if len(chosen) >= per_project:
                break
            text = path.read_text("utf-8", errors="replace")
            if text in seen or not good_text(text):
                continue
            seen.add(text)
            ids = tok.encode(text)
            if len(ids) < window:
                continue
            start = rng.randrange(len(ids) - window + 1)
            chosen.append(Window(project, path, start, ids[start : start + window]))
        if chosen:
            by_project[project] = chosen
    picked: list[Window] = []
    for i in range(per_project):
        for project in sorted(by_project):
            if i < len(by_project[project]) and len(picked) < max_files:
                picked.append(by_project[project][i])
    return sorted(picked, key=lambda w: (w.project, str(w.path)))


def make_masks(n: int, window: int, seed: int) -> dict[str, torch.Tensor]:
    """Masks [n, window] bool: one per rate in MASK_RATES (at least one position per row), and the middle span."""
    g = torch.Generator().manual_seed(seed)
    masks: dict[str, torch.Tensor] = {}
    for t in MASK_RATES:
        m = torch.rand(n, window, generator=g) < t  # [n, window]
        empty = ~m.any(1)  # [n]
        m[empty, torch.randint(window, (int(empty.sum()),), generator=g)] = True
        masks[str(t)] = m
    span = torch.zeros(n, window, dtype=torch.bool)  # [n, window]
    lo = max(0, window // 2 - SPAN // 2)
    span[:, lo : lo + SPAN] = True
    masks[SPAN_KEY] = span
    return masks


@torch.inference_mode()
def score(model: DiffusionLM, mask_id: int, ids: torch.Tensor, masks: dict[str, torch.Tensor],
          batch: int = 16) -> dict[str, dict[str, torch.Tensor]]:
    """For each mask: per window [N] the summed cross-entropy, the argmax hits and the count of masked positions,
    each mask predicted in one forward pass with its positions replaced by the mask id."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    n = ids.shape[0]
    for key, mask in masks.items():
        ce_sum = torch.zeros(n, dtype=torch.float64)  # [N]
        hits = torch.zeros(n, dtype=torch.float64)  # [N]
        for a in range(0, n, batch):
            x, m = ids[a : a + batch], mask[a : a + batch]  # [b, T]
            hidden, _ = model(torch.where(m, mask_id, x), hidden_only=True)  # [b, T, H]
            logits = model.lm_head(hidden[m]).float()  # [k, V]: masked positions only, row-major
            rows = m.nonzero()[:, 0]  # [k] window of each masked position
            target = x[m]  # [k]
            ce_sum[a : a + batch].index_add_(0, rows, F.cross_entropy(logits, target, reduction="none").double())
            hits[a : a + batch].index_add_(0, rows, (logits.argmax(-1) == target).double())
        out[key] = {"ce": ce_sum, "hits": hits, "count": mask.sum(1).double()}
    return out


def summarize(scores: dict[str, dict[str, torch.Tensor]], rows: torch.Tensor | None = None) -> dict[str, float]:
    """The FIGURES over all windows, or over the windows selected by rows (indices)."""
    def total(key: str, what: str) -> float:
        v = scores[key][what]
        return float((v if rows is None else v[rows]).sum())

    s = {f"ce@{t}": total(str(t), "ce") / total(str(t), "count") for t in MASK_RATES}
    s["ce_mean"] = sum(s.values()) / len(MASK_RATES)
    s["span_acc"] = total(SPAN_KEY, "hits") / total(SPAN_KEY, "count")
    return s


def load_models(paths: list[Path]) -> tuple[list[DiffusionLM], CodeTokenizer]:
    """Load each model directory in float32 on the CPU; raise ValueError unless they all share one tokenizer."""
    models, toks = [], []
    for path in paths:
        model, tok = load_model(path, dtype=torch.float32)
        models.append(model)
        toks.append(tok)
    for path, tok in zip(paths[1:], toks[1:]):
        if tok.mask_id != toks[0].mask_id or tok.tok.to_str() != toks[0].tok.to_str():
            raise ValueError(f"{path} and {paths[0]} have different tokenizers: the same windows cannot be compared")
    return models, toks[0]


def model_labels(paths: list[Path]) -> list[str]:
    """Column names: each directory's name, or the paths as given where names repeat, numbered if still equal."""
    labels = [p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i + 1}" for i, label in enumerate(labels)]
    return labels


def difference(figures: dict[str, dict[str, float]], labels: list[str]) -> dict[str, float] | None:
    """Second model minus first, per figure, when exactly two models are compared."""
    if len(labels) != 2:
        return None
    old, new = figures[labels[0]], figures[labels[1]]
    return {k: new[k] - old[k] for k in FIGURES}


def format_table(figures: dict[str, dict[str, float]], labels: list[str]) -> str:
    """Figures as rows, models as columns, and the difference column for two models."""
    diff = difference(figures, labels)
    heads = labels + (["difference"] if diff else [])
    widths = [max(10, len(h) + 2) for h in heads]
    lines = ["figure".ljust(10) + "".join(h.rjust(w) for h, w in zip(heads, widths))]
    for k in FIGURES:
        cells = [f"{figures[label][k]:.4f}" for label in labels] + ([f"{diff[k]:+.4f}"] if diff else [])
        lines.append(k.ljust(10) + "".join(c.rjust(w) for c, w in zip(cells, widths)))
    if diff:
        lines.append(f"difference = {labels[1]} - {labels[0]} (lower ce, higher span_acc is better)")
    return "\n".join(lines)


def evaluate(models: list[Path], sources: list[Path], roots: list[Path], max_files: int, per_project: int,
             seed: int, window: int = WINDOW, batch: int = 16, exclude: tuple[str, ...] = (),
             npm: Path | None = None) -> dict:
    """Collect held-out files, score every model on the same windows and masks; the report as a dict. exclude
    names further projects to leave out (renamed forks of trained ones, say); npm: a folder of npm tarballs to take
    JavaScript files from instead of the installed Python distributions."""
    loaded, tok = load_models(models)
    skip = trained_names(sources) | {normalized_name(n) for n in exclude}
    with tempfile.TemporaryDirectory(prefix="heldout-npm-") as tmp:
        files = collect_npm(npm, skip, Path(tmp)) if npm is not None else collect_files(roots, skip)
        windows = pick_windows(files, tok, per_project, max_files, seed, window)
    if not windows:
        where = str(npm) if npm is not None else ", ".join(map(str, roots))
        raise ValueError(f"no held-out file of at least {window} tokens in {where}")
    ids = torch.tensor([w.ids for w in windows], dtype=torch.long)  # [N, window]
    masks = make_masks(len(windows), window, seed)
    labels = model_labels(models)
    scores = {}
    for label, model in zip(labels, loaded):
        t0 = time.time()
        scores[label] = score(model, tok.mask_id, ids, masks, batch)
        print(f"{label}: {len(windows)} windows scored in {time.time() - t0:.1f} s", file=sys.stderr)
    figures = {label: summarize(s) for label, s in scores.items()}
    projects = {}
    for project in sorted({w.project for w in windows}):
        rows = torch.tensor([i for i, w in enumerate(windows) if w.project == project])
        projects[project] = {"files": len(rows), "figures": {label: summarize(s, rows) for label, s in scores.items()}}
    return {
        "models": {label: str(path) for label, path in zip(labels, models)},
        "settings": {"window": window, "mask_rates": list(MASK_RATES), "span": SPAN, "seed": seed,
                     "max_files": max_files, "per_project": per_project,
                     "roots": [str(npm)] if npm is not None else [str(r) for r in roots],
                     "sources": [str(s) for s in sources], "exclude": list(exclude)},
        "figures": figures,
        "difference": difference(figures, labels),
        "projects": projects,
        "windows": [[w.project, str(w.path), w.start] for w in windows],
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m training.heldout --models DIR [DIR ...]`: print the table, optionally write the JSON report."""
    p = argparse.ArgumentParser(prog="python -m training.heldout", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="model directories, compared as columns")
    p.add_argument("--sources", action="append", default=[], help="a training sources.json (repeatable)")
    p.add_argument("--root", action="append", default=[], help="site-packages to read (default: this interpreter's)")
    p.add_argument("--exclude", action="append", default=[], help="another project to leave out (repeatable)")
    p.add_argument("--npm", default=None, metavar="DIR",
                   help="score JavaScript from the npm tarballs in DIR (training/heldout-npm.txt) instead")
    p.add_argument("--max-files", type=int, default=60)
    p.add_argument("--per-project", type=int, default=10)
    p.add_argument("--window", type=int, default=WINDOW)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the figures and the per-project breakdown here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        report = evaluate([Path(m) for m in args.models], [Path(s) for s in args.sources],
                          [Path(r) for r in args.root] or default_roots(), args.max_files, args.per_project,
                          args.seed, args.window, exclude=tuple(args.exclude),
                          npm=Path(args.npm) if args.npm else None)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"heldout: {exc}", file=sys.stderr)
        return 1
    labels = list(report["models"])
    projects = report["projects"]
    print(f"{len(report['windows'])} windows of {args.window} tokens from {len(projects)} projects")
    print(format_table(report["figures"], labels))
    print("projects: " + ", ".join(f"{name} ({d['files']})" for name, d in projects.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
