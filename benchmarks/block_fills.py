"""What an editor would get in real Python functions: one statement of a function body is blanked (its indentation
kept) or, with --kind line, cut after its start (`x = `, `return `, `f(`), the hole is filled as the language server
fills it (holes, engine, post-processing), and the result is read with Python's parser.

    python -m benchmarks.block_fills --holes 150 --seed 1 [--kind line] [--model DIR] [--json out.json]

The files are the installed Python of this interpreter (site-packages, tests left out), so the figures depend on the
machine's packages: compare settings or models within one run, or on the same machine. Counts: holes tried; fills
offered; fills after which the file no longer parses (ast.parse); fills that repeat one of the 8 lines above; fills
equal to what was taken out.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
from pathlib import Path
from typing import Any, Iterator

from lsp_server.completion import complete_at

CONTEXT_LINES = 8  # lines above the hole that a repeated line is looked for in


def _files(root: Path, seed: int) -> list[Path]:
    files = [p for p in root.rglob("*.py") if "test" not in str(p.relative_to(root)) and 2_000 < p.stat().st_size
             < 60_000]
    files.sort()
    random.Random(seed).shuffle(files)
    return files


def _kept(statement: str) -> str:
    """What a line hole keeps of a statement: up to its `= `, `return ` or first `(`; '' when it has none."""
    for mark in (" = ", " += ", "return ", "("):
        at = statement.find(mark)
        if at >= 0:
            return statement[: at + len(mark)]
    return ""


def holes(root: Path, seed: int, kind: str = "block") -> Iterator[tuple[Path, str, int, str, int]]:
    """(file, text with one body statement blanked (kind "block") or cut after its start ("line"), its 0-based
    line, what was taken out, offset of the cursor)."""
    rng = random.Random(seed)
    for path in _files(root, seed):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        statements = [st for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and len(node.body) >= 3 for st in node.body[1:-1]
                      if st.lineno == st.end_lineno and isinstance(st, (ast.Assign, ast.AugAssign, ast.Expr,
                                                                         ast.Return))]
        if not statements:
            continue
        i = rng.choice(statements).lineno - 1
        lines = source.split("\n")
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        statement = lines[i].strip()
        kept = _kept(statement) if kind == "line" else ""
        if kind == "line" and not kept:
            continue
        blanked = lines[:i] + [indent + kept] + lines[i + 1 :]
        offset = sum(len(line) + 1 for line in blanked[:i]) + len(indent) + len(kept)
        yield path, "\n".join(blanked), i, statement[len(kept) :], offset


def run(engine: Any, root: Path, n: int, seed: int, kind: str = "block") -> dict[str, Any]:
    rows = []
    for path, text, i, statement, offset in holes(root, seed, kind):
        if len(rows) >= n:
            break
        found = complete_at(engine, text, offset, "python")
        row: dict[str, Any] = {"file": str(path), "line": i + 1, "statement": statement, "fill": found.insert_text}
        if found:
            filled = text[: found.hole.start] + found.insert_text + text[found.hole.end :]
            try:
                ast.parse(filled)
                row["parses"] = True
            except SyntaxError:
                row["parses"] = False
            above = {line.strip() for line in text.split("\n")[max(0, i - CONTEXT_LINES) : i] if line.strip()}
            row["repeats"] = any(line.strip() in above for line in found.insert_text.split("\n") if line.strip())
            row["exact"] = found.insert_text.strip() == statement.strip()
        rows.append(row)
    offered = [r for r in rows if r["fill"]]
    return {
        "holes": len(rows), "offered": len(offered),
        "breaks_parse": sum(not r["parses"] for r in offered),
        "repeats_a_line_above": sum(r["repeats"] for r in offered),
        "exact": sum(r["exact"] for r in offered),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.block_fills", description=__doc__.split("\n\n")[0])
    p.add_argument("--holes", type=int, default=150, help="holes to fill (default 150)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kind", choices=("block", "line"), default="block",
                   help="block: a whole statement blanked (default); line: the rest of it after its `= `, "
                        "`return ` or first `(`")
    p.add_argument("--model", default=None, help="model directory (default: the built-in model)")
    p.add_argument("--root", type=Path, default=Path(sysconfig.get_paths()["purelib"]),
                   help="where the Python files are taken from (default: this interpreter's site-packages)")
    p.add_argument("--json", type=Path, default=None, help="write the counts and every hole's row here")
    args = p.parse_args(argv)
    from engine.api import Engine

    result = run(Engine.from_pretrained(args.model), args.root, args.holes, args.seed, args.kind)
    summary = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
