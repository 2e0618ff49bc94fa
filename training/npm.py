"""JavaScript for the training corpus: the source files of permissively licensed npm packages.

    python -m training.npm prepare --out data/js --tokenizer engine/models/codefill-base/tokenizer.json

`prepare` downloads the tarballs named in training/corpus-npm.txt from the npm registry (`npm pack`, no
dependencies) into OUT/tarballs, keeps the hand-written JavaScript in them (corpus.gather with keep_js: no bundles,
minified files, tests, examples or type declarations), de-duplicates it, holds out 1% of files (OUT/corpus/
valid.jsonl: the text for `training.tune_decoding --valid`), and tokenizes the rest with the given tokenizer and
tree-sitter-javascript's syntax spans into OUT/train.npz. `training.device_data pack --extra OUT` adds it to the
training split that travels to a lent GPU; OUT/corpus/sources.json names every package and its license.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from training.corpus import BENCHMARK_MARKERS, MAX_FILE_BYTES, SKIP_DIRS

NPM_LIST = Path(__file__).with_name("corpus-npm.txt")
JS_SUFFIXES = (".js", ".mjs", ".cjs", ".jsx")
# Built, bundled or vendored code, and what is not the package's own logic.
JS_SKIP_DIRS = SKIP_DIRS | {"dist", "build", "umd", "min", "bundle", "bundles", "coverage", "example", "examples",
                            "benchmark", "benchmarks", "bench", "fixtures", "doc", "docs", "__tests__", "__mocks__",
                            "spec", "specs", "test-utils", "locale", "locales", "i18n", "lang", "generated",
                            "cjs", "commonjs"}  # the last two: transpiled copies beside a package's own source


def keep_js(rel: str) -> bool:
    """Whether a file inside a package tarball (package/...) is hand-written JavaScript worth training on."""
    parts = Path(rel).parts
    name = parts[-1]
    if not name.endswith(JS_SUFFIXES) or any(p in JS_SKIP_DIRS for p in parts[:-1]):
        return False
    if any(tag in name for tag in (".min.", ".test.", ".spec.", ".bundle.", "-bundle.")) or name.startswith("test"):
        return False
    return not any(m in rel for m in BENCHMARK_MARKERS)


def package_license(meta: dict) -> str:
    """The license a package.json declares: its "license" (an SPDX string, or the old {"type": ...} form) or the
    types of an old "licenses" list; "" when it says nothing."""
    lic = meta.get("license")
    if isinstance(lic, dict):
        lic = lic.get("type")
    if not lic and isinstance(meta.get("licenses"), list):
        lic = " OR ".join(str(x.get("type", "")) for x in meta["licenses"] if isinstance(x, dict))
    return str(lic or "").strip()


def read_tarball(path: Path) -> tuple[str, str, list[str]]:
    """(package name with version, license, texts of the files keep_js keeps) of an npm tarball."""
    with tarfile.open(path, "r:gz") as tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}
        meta_member = members.get("package/package.json")
        meta = json.loads(tf.extractfile(meta_member).read()) if meta_member else {}  # type: ignore[union-attr]
        texts = []
        for name, member in sorted(members.items()):
            if member.size <= MAX_FILE_BYTES and keep_js(name):
                texts.append(tf.extractfile(member).read().decode("utf-8", "replace"))  # type: ignore[union-attr]
    label = f"{meta.get('name', path.stem)} {meta.get('version', '')}".strip()
    return label, package_license(meta), texts


def fetch(specs: list[str], out: Path) -> list[Path]:
    """`npm pack` each spec (name or name@version) into out; returns the tarballs, skipping a download when the
    tarball list of a previous fetch is there."""
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "tarballs.txt"
    if listing.exists():
        names = listing.read_text().split()
        if all((out / n).exists() for n in names) and len(names) == len(specs):
            return [out / n for n in names]
    run = subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(out), *specs], capture_output=True,
                         text=True, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"npm pack failed: {run.stderr.strip()[-2000:]}")
    names = run.stdout.split()
    listing.write_text("\n".join(names) + "\n")
    return [out / n for n in names]


def read_list(path: Path = NPM_LIST) -> list[str]:
    """The package specs of a list file (one per line, # comments)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def prepare(out: Path, tokenizer: Path, specs: list[str], workers: int = 0) -> dict:
    """Fetch, gather and tokenize (see the module's doc); returns the report also written to OUT/js.json."""
    from training.corpus import gather
    from training.dataset import tokenize_parallel

    tarballs = fetch(specs, out / "tarballs")
    corpus = gather(tarballs, suffixes=JS_SUFFIXES)
    for source in corpus.sources:
        source["language"] = "javascript"
    corpus.save(out / "corpus")
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    arrays = tokenize_parallel(corpus.train, out / "tokenizer.json", workers, language="javascript")
    arrays.save(out / "train.npz")
    report = {"packages": len(tarballs), "kept_packages": len(corpus.sources), "train_files": len(corpus.train),
              "valid_files": len(corpus.valid), "train_tokens": int(len(arrays.tokens)),
              "spans": int(len(arrays.spans))}
    (out / "js.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{out}: {report['train_tokens']:,} tokens of JavaScript from {report['train_files']:,} files of "
          f"{report['kept_packages']} of {report['packages']} packages", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    """`python -m training.npm prepare|fetch`."""
    p = argparse.ArgumentParser(prog="python -m training.npm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("prepare", help="fetch, gather and tokenize the JavaScript corpus")
    r.add_argument("--out", default="data/js")
    r.add_argument("--tokenizer", default="engine/models/codefill-base/tokenizer.json")
    r.add_argument("--list", default=str(NPM_LIST), help="package specs, one per line")
    r.add_argument("--workers", type=int, default=0)
    f = sub.add_parser("fetch", help="only download the tarballs of a list (held-out packages, say)")
    f.add_argument("--list", required=True, help="package specs, one per line")
    f.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        tarballs = fetch(read_list(Path(args.list)), Path(args.out))
        print(f"{len(tarballs)} tarballs in {args.out}", file=sys.stderr)
        return 0
    prepare(Path(args.out), Path(args.tokenizer), read_list(Path(args.list)), args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
