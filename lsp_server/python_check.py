"""Python's own parser as a second check on fills, after tree-sitter's.

tree-sitter's Python grammar recovers without an ERROR node from some code that Python rejects: a fill such as
`name =` on a line of its own parses there with no error, and such fills were shown. Only the innermost def or class
around the fill is parsed (or the top-level statement), dedented, so the cost follows the size of that function, not
of the file: `ast.parse` takes ~17 us a line here, 45 ms for a 2,600-line module.
"""

from __future__ import annotations

import ast
import functools
import re
import warnings

MAX_CHECK_CHARS = 50_000  # a longer statement (a data table in code) is left to tree-sitter: ~35 ms to parse

# A line that goes on with the statement above it at the same indentation, rather than starting one.
_CONTINUES = re.compile(r"(else|elif|except|finally|case)\b|[)\]}]")
_DEFINES = re.compile(r"(async\s+)?def\b|class\b")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _is_code(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _block_start(lines: list[str], i: int) -> tuple[int, int]:
    """(first line, indentation) of the innermost def or class whose body holds line i, its decorators included;
    else of the top-level statement that holds it."""
    level = _indent(lines[i]) if _is_code(lines[i]) else len(lines[i])
    i += 1
    while i > 0:
        i -= 1
        line = lines[i]
        if not _is_code(line) or _indent(line) > level or (_indent(line) == level and level > 0):
            continue  # at level 0 the top-level statement starts at the nearest line of code not indented
        level = _indent(line)
        code = line.lstrip(" \t")
        if _DEFINES.match(code) or (level == 0 and not _CONTINUES.match(code)):
            while i > 0 and lines[i - 1].lstrip(" \t").startswith("@") and _indent(lines[i - 1]) == level:
                i -= 1
            return i, level
    return 0, 0


def _block_end(lines: list[str], i: int, level: int) -> int:
    """One past the last line of the block at indentation level that holds line i."""
    i += 1
    while i < len(lines):
        line = lines[i]
        if _is_code(line) and _indent(line) <= level and not (_indent(line) == level and _CONTINUES.match(
                line.lstrip(" \t"))):
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


def statement_around(text: str, start: int, end: int) -> str | None:
    """The innermost def or class (else the top-level statements) of text holding the characters [start, end),
    dedented; None where it cannot be cut out (a line indented less than its block: text of a string)."""
    lines = text.split("\n")
    first = text.count("\n", 0, start)
    last = first + text.count("\n", start, max(start, end))
    a, level = _block_start(lines, first)
    b = _block_end(lines, last, level)
    if any(_is_code(line) and _indent(line) < level for line in lines[a:b]):
        return None
    return "\n".join(line[level:] for line in lines[a:b])


def breaks_python(before: str, hole_start: int, hole_end: int, after: str, insert_len: int) -> bool:
    """Whether replacing [hole_start, hole_end) of before, giving after, turned statements Python accepted into
    ones it rejects (where the code there did not parse to begin with, a fill is not held against it)."""
    statement = statement_around(before, hole_start, hole_end)
    if statement is None or len(statement) > MAX_CHECK_CHARS or not _parses(statement):
        return False
    filled = statement_around(after, hole_start, hole_start + insert_len)
    return filled is not None and not _parses(filled)
