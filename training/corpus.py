"""Training corpus: source files from directories and wheels, filtered, de-duplicated, split by file."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import multiprocessing
import os
import re
import sys
import sysconfig
import time
import tokenize
import zipfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

# Never train on the public benchmarks.
BENCHMARK_MARKERS = ("human-eval-infilling", "HumanEval", "safim")
SKIP_DIRS = {"test", "tests", "testing", "idlelib", "lib2to3", "__pycache__", "site-packages", "dist-packages",
             "turtledemo", "ensurepip", "_vendor", "vendor", "node_modules", ".git"}
PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC|Zlib|Unlicense|Public Domain|HPND)",
                        re.IGNORECASE)
NOT_PERMISSIVE = re.compile(r"\b(GPL|LGPL|AGPL|MPL|Mozilla|EUPL|CDDL)", re.IGNORECASE)
MAX_FILE_BYTES = 400_000


@dataclass
class Corpus:
    """The files of a corpus, split by file, with where they came from."""

    train: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    sources: list[dict[str, str]] = field(default_factory=list)  # name, license, files

    def save(self, out: Path) -> None:
        """Write valid.jsonl, sources.json and train.jsonl under out, each whole or not at all (a temporary file
        renamed), train.jsonl last: its presence is what says the corpus is built (training.pipeline)."""
        out.mkdir(parents=True, exist_ok=True)
        (out / "sources.json.tmp").write_text(json.dumps(self.sources, indent=1) + "\n")
        os.replace(out / "sources.json.tmp", out / "sources.json")
        for split in ("valid", "train"):
            tmp = out / f"{split}.jsonl.tmp"
            with open(tmp, "w") as f:
                for text in getattr(self, split):
                    f.write(json.dumps({"text": text}) + "\n")
            os.replace(tmp, out / f"{split}.jsonl")

    @classmethod
    def load(cls, out: Path) -> "Corpus":
        """Read what save wrote."""
        c = cls()
        for split in ("train", "valid"):
            with open(out / f"{split}.jsonl") as f:
                setattr(c, split, [json.loads(line)["text"] for line in f])
        c.sources = json.loads((out / "sources.json").read_text())
        return c


def metadata_license(metadata_text: str) -> tuple[str, str]:
    """(project name, license) from the text of a distribution's METADATA file."""
    msg = HeaderParser().parsestr(metadata_text)
    lic = msg.get("License-Expression") or msg.get("License") or ""
    classifiers = [c for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    if len(lic) > 80 or not lic.strip():
        lic = "; ".join(c.split("::")[-1].strip() for c in classifiers) or lic[:80]
    return msg.get("Name", ""), lic.strip()


def wheel_license(zf: zipfile.ZipFile) -> tuple[str, str]:
    """(project name, license text) from a wheel's METADATA."""
    meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
    if meta is None:
        return "", ""
    return metadata_license(zf.read(meta).decode("utf-8", "replace"))


def permissive(lic: str) -> bool:
    """Whether a license string names a permissive license (and no copyleft one)."""
    return bool(PERMISSIVE.search(lic)) and not NOT_PERMISSIVE.search(lic)


def normalized_name(name: str) -> str:
    """A project name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def keep_path(rel: str, suffixes: tuple[str, ...]) -> bool:
    """Whether a file inside a source tree belongs in the corpus."""
    parts = Path(rel).parts
    if not rel.endswith(suffixes) or any(p in SKIP_DIRS for p in parts[:-1]):
        return False
    name = parts[-1]
    if name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py":
        return False
    return not any(m in rel for m in BENCHMARK_MARKERS)


def decode_source(data: bytes) -> str | None:
    """A source file's bytes as text: UTF-8 (a byte-order mark dropped), else the encoding its PEP 263 coding line
    declares; None for a binary file (NUL bytes) or bytes that decode neither way. (Decoding with replacement
    characters would put U+FFFD where a file's non-ASCII text was, and random bytes into the corpus.)"""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return None if encoding.startswith("utf-8") else data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return None


def good_text(text: str) -> bool:
    """Skip generated or data-like files: very long lines, or mostly non-code."""
    if not text.strip():
        return False
    lines = text.splitlines()
    if max(map(len, lines), default=0) > 1000:
        return False
    alnum = sum(map(len, _ALNUM_RUNS.findall(text)))  # characters for which str.isalnum() holds, counted in C
    return alnum / max(len(text), 1) > 0.25


_ALNUM_RUNS = re.compile(r"[^\W_]+")  # \w is isalnum() or "_" for str patterns


def fingerprint(text: str) -> tuple[str, bool]:
    """A file's de-duplication key (SHA-1 of its whitespace-normalized text) and whether good_text keeps it."""
    norm = re.sub(r"\s+", " ", text).strip()
    return hashlib.sha1(norm.encode()).hexdigest(), good_text(text)


def _scored(text: str) -> tuple[str, str, bool]:
    """(text, digest, good): a file as gather adds it."""
    return (text, *fingerprint(text))


def _read_scored(paths: list[str]) -> list[tuple[str, str, bool]]:
    """The files at paths, scored: the part of gathering that runs in worker processes."""
    texts = (decode_source(Path(path).read_bytes()) for path in paths)
    return [_scored(text) for text in texts if text is not None]


def gather(roots: list[Path], suffixes: tuple[str, ...] = (".py",),
           distributions: Iterable[importlib.metadata.Distribution] = (), valid_share: bool = True,
           deadline: float | None = None, workers: int = 1) -> Corpus:
    """Collect files from directories, .whl files and installed distributions; de-duplicate by normalized
    content; split 1% by file into valid (every file goes to train with valid_share=False). Past deadline (a
    time.monotonic() value) no further distribution is read: what was gathered stays. With workers > 1 the
    distributions' files are read and fingerprinted in that many processes (0: one per CPU); the corpus is the
    same as with one."""
    seen: set[str] = set()
    corpus = Corpus()

    def add(text: str, digest: str, good: bool) -> bool:
        if digest in seen or not good:
            return False
        seen.add(digest)
        # The split is decided by the file's own hash: stable across runs and machines.
        held_out = valid_share and int(digest[:4], 16) % 100 == 0
        (corpus.valid if held_out else corpus.train).append(text)
        return True

    def take(label: str, lic: str, scored: Iterable[tuple[str, str, bool]]) -> int | None:
        """Add a package's scored files when its license is known to be permissive; None (with a note) otherwise."""
        if not permissive(lic):
            print(f"skip {label}: license {lic!r} is not known to be permissive", file=sys.stderr)
            return None
        return sum(add(*item) for item in scored)

    for name, lic, scored in _read_distributions(list(distributions), suffixes, workers, deadline):
        n = take(name, lic, scored)
        if n:
            corpus.sources.append({"name": name, "license": lic, "files": str(n)})

    for root in roots:
        if any(m in str(root) for m in BENCHMARK_MARKERS):
            raise ValueError(f"{root}: refusing to train on a benchmark")
        if root.suffix == ".whl" or root.name.endswith(".tgz"):  # a wheel, or an npm package (training.npm)
            name, lic, texts = _read_archive(root, suffixes)
            n = take(root.name, lic, map(_scored, texts))
            if n is not None:
                corpus.sources.append({"name": name, "license": lic, "files": str(n)})
            continue
        if not root.is_dir():
            raise ValueError(f"{root}: no such directory")
        n = 0
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if path.is_file() and keep_path(rel, suffixes) and path.stat().st_size <= MAX_FILE_BYTES:
                text = decode_source(path.read_bytes())
                n += text is not None and add(*_scored(text))
        label = "Python standard library" if root == Path(sysconfig.get_paths()["stdlib"]) else root.name
        corpus.sources.append({"name": label, "license": "PSF" if "standard" in label else "see source", "files": str(n)})
    return corpus


def _read_archive(path: Path, suffixes: tuple[str, ...]) -> tuple[str, str, list[str]]:
    """(project name, license, texts of the corpus files) of a wheel or of an npm tarball (training.npm); a wheel
    whose license is not permissive is not read (gather skips it)."""
    if path.name.endswith(".tgz"):
        from training.npm import read_tarball

        return read_tarball(path)
    with zipfile.ZipFile(path) as zf:
        name, lic = wheel_license(zf)
        texts = [decode_source(zf.read(m)) for m in zf.namelist()
                 if permissive(lic) and keep_path(m, suffixes) and zf.getinfo(m).file_size <= MAX_FILE_BYTES]
    return name, lic, [t for t in texts if t is not None]


def installed_files(dist: importlib.metadata.Distribution, suffixes: tuple[str, ...],
                    max_bytes: int = MAX_FILE_BYTES) -> Iterable[Path]:
    """The files of an installed distribution that the corpus keeps (keep_path, at most max_bytes)."""
    for rel in dist.files or []:
        path = Path(str(dist.locate_file(rel)))
        if keep_path(str(rel), suffixes) and path.is_file() and path.stat().st_size <= max_bytes:
            yield path


def _read_distributions(dists: list[importlib.metadata.Distribution], suffixes: tuple[str, ...], workers: int,
                        deadline: float | None, chunk: int = 200) -> Iterable[tuple[str, str, list]]:
    """(name, license, [(text, digest, good), ...]) per named distribution, in order; a license that is not
    permissive gets an empty list (its files are not read). Stops past deadline."""
    plan = []  # (name, license, [path chunks])
    for dist in dists:
        name, lic = metadata_license(dist.read_text("METADATA") or "")
        if not name:
            continue
        paths = [str(p) for p in installed_files(dist, suffixes)] if permissive(lic) else []
        plan.append((name, lic, [paths[i : i + chunk] for i in range(0, len(paths), chunk)]))
    workers = workers or os.cpu_count() or 1
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    try:
        jobs = [c for _, _, chunks in plan for c in chunks]
        results = iter(pool.map(_read_scored, jobs) if pool else map(_read_scored, jobs))
        for name, lic, chunks in plan:
            if deadline is not None and time.monotonic() > deadline:
                print("gather: time is up, the remaining distributions are left out", file=sys.stderr)
                break
            yield name, lic, [item for _ in chunks for item in next(results)]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def default_roots(wheel_dir: Path | None) -> list[Path]:
    """The default recipe: the standard library plus every wheel in wheel_dir."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    if wheel_dir and wheel_dir.is_dir():
        roots += sorted(wheel_dir.glob("*.whl"))
    return roots


def installed_distributions(exclude: Iterable[str] = (),
                            path: list[str] | None = None) -> list[importlib.metadata.Distribution]:
    """The distributions installed for this interpreter (or on path), one per project, minus the excluded
    project names."""
    skip = {normalized_name(n) for n in exclude}
    out: dict[str, importlib.metadata.Distribution] = {}
    found = importlib.metadata.distributions() if path is None else importlib.metadata.distributions(path=path)
    for dist in found:
        name = normalized_name(dist.metadata.get("Name") or "")
        if name and name not in skip and name not in out:
            out[name] = dist
    return [out[n] for n in sorted(out)]
