"""Python's own parser as a second check on fills, after tree-sitter's.

tree-sitter's Python grammar recovers without an ERROR node from some code that Python rejects: a fill such as
`name =` on a line of its own parses there with no error, and such fills were shown. Only the top-level statement
around the fill is parsed (a def or class with its decorators, ...), so the cost follows the size of that statement,
not of the file: `ast.parse` takes ~17 us a line here, 45 ms for a 2,600-line module.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings

# A line at column 0 that goes on with the statement above it, rather than starting one.
_CONTINUES = re.compile(r"(else|elif|except|finally|case)\b|[)\]}]")


def _statement_start(lines: list[str], i: int) -> int:
    """The first line of the top-level statement that holds line i (its decorators included)."""
    while i > 0:
        line = lines[i]
        if line[:1] not in ("", " ", "\t", "#") and not _CONTINUES.match(line):
            while i > 0 and lines[i - 1].startswith("@"):
                i -= 1
            return i
        i -= 1
    return 0


def _statement_end(lines: list[str], i: int) -> int:
    """One past the last line of the top-level statement that holds line i."""
    i += 1
    while i < len(lines):
        line = lines[i]
        if line[:1] not in ("", " ", "\t", "#") and not _CONTINUES.match(line):
            return i
        i += 1
    return len(lines)


@functools.lru_cache(maxsize=16)  # the statement before the fill, once for all of a request's candidates
def _parses(source: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes in the user's code: not ours to show
            ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # ValueError: a NUL byte
        return False
    return True


def statement_around(text: str, start: int, end: int) -> str:
    """The top-level statements of text that hold the characters [start, end)."""
    lines = text.split("\n")
    first = text.count("\n", 0, start)
    last = first + text.count("\n", start, max(start, end))
    a, b = _statement_start(lines, first), _statement_end(lines, last)
    return "\n".join(lines[a:b])


def breaks_python(before: str, hole_start: int, hole_end: int, after: str, insert_len: int) -> bool:
    """Whether replacing [hole_start, hole_end) of before, giving after, turned statements Python accepted into
    ones it rejects (where the code there did not parse to begin with, a fill is not held against it)."""
    if not _parses(statement_around(before, hole_start, hole_end)):
        return False
    return not _parses(statement_around(after, hole_start, hole_start + insert_len))
