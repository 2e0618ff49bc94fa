"""Scoring: exact match, SAFIM's stdout comparison and API-call match, and per-set summaries.

`outputs_match` follows SAFIM's executor (ExecEval, `validate_outputs`): the program's stdout, stripped, matches
an expected output when every line matches after stripping; failing that, when the whitespace-separated tokens
match one for one, numbers within 1e-12 of each other and yes/no/true/false compared case-insensitively.
`api_match` follows SAFIM's `syntax_match`: equal once all whitespace is removed, or, for two Python call
expressions, equal calls. SAFIM compares only the arguments of the calls (positional in order, keywords as a set)
and parses the whitespace-stripped text; we compare the callee as well and parse the text as written, which is
stricter and never unsound. Parsing is `ast.parse`: nothing generated is executed here.
"""

from __future__ import annotations

import ast
import re
import statistics
from fractions import Fraction
from typing import Any

_WS = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TOLERANCE = Fraction(1, 10**12)
_WORDS = {"yes", "no", "true", "false"}


def exact_match(completion: str, reference: str) -> bool:
    """Equal after stripping leading and trailing whitespace."""
    return completion.strip() == reference.strip()


def exact_match_ws(completion: str, reference: str) -> bool:
    """Equal once all whitespace is removed (the normalisation of SAFIM's syntax match)."""
    return _WS.sub("", completion) == _WS.sub("", reference)


def is_empty(completion: str) -> bool:
    """A fill with nothing but whitespace."""
    return not completion.strip()


def _number(tok: str) -> Fraction | None:
    if _NUMBER.fullmatch(tok):
        try:
            return Fraction(tok)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def outputs_match(expected: str, actual: str) -> bool:
    """SAFIM/ExecEval's comparison of a program's stdout with one expected output."""
    lines1, lines2 = expected.strip().split("\n"), actual.strip().split("\n")
    if len(lines1) == len(lines2) and all(a.strip() == b.strip() for a, b in zip(lines1, lines2)):
        return True
    toks1, toks2 = expected.split(), actual.split()
    if len(toks1) != len(toks2):
        return False
    for a, b in zip(toks1, toks2):
        na, nb = _number(a), _number(b)
        if na is not None and nb is not None:
            if abs(na - nb) > _TOLERANCE:
                return False
            continue
        if a.lower() in _WORDS:
            a = a.lower()
        if b.lower() in _WORDS:
            b = b.lower()
        if a != b:
            return False
    return True


def _call_signature(text: str) -> tuple[str, list[str], dict[str | None, str]] | None:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    body = tree.body
    if not isinstance(body, ast.Call):
        return None
    return (ast.dump(body.func), [ast.dump(a) for a in body.args],
            {k.arg: ast.dump(k.value) for k in body.keywords})


def api_match(completion: str, reference: str) -> bool:
    """SAFIM's API-completion check (see the module docstring)."""
    if exact_match_ws(completion, reference):
        return True
    a, b = _call_signature(completion), _call_signature(reference)
    return a is not None and a == b


def _pct(k: int, n: int) -> float:
    return round(100.0 * k / n, 2) if n else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One task set's figures from its per-task rows."""
    n = len(rows)
    out: dict[str, Any] = {
        "n": n,
        "passed": sum(r["passed"] for r in rows),
        "pass_at_1": _pct(sum(r["passed"] for r in rows), n),
        "exact": _pct(sum(r["exact"] for r in rows), n),
        "exact_ws": _pct(sum(r["exact_ws"] for r in rows), n),
        "empty": _pct(sum(r["empty"] for r in rows), n),
        "empty_passed": sum(r["empty"] and r["passed"] for r in rows),
        "median_latency_ms": round(1000 * statistics.median(r["seconds"] for r in rows), 1) if n else 0.0,
        "p90_latency_ms": round(1000 * _quantile([r["seconds"] for r in rows], 0.9), 1) if n else 0.0,
        "median_forward_passes": statistics.median(r["forward_passes"] for r in rows) if n else 0,
        "statuses": _count(r["status"] for r in rows),
    }
    if rows and "empty_fill_passed" in rows[0]:
        out["empty_fill_pass_at_1"] = _pct(sum(r["empty_fill_passed"] for r in rows), n)
    return out


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))
