"""Python's own compiler as a second check on fills, after tree-sitter's.

tree-sitter's Python grammar recovers without an ERROR node from some code that Python rejects: a fill such as
`name =` on a line of its own parses there with no error, and such fills were shown; nor does a parser see `break`
outside a loop or a call of a literal (`return [](w)`), which the compiler rejects or warns about. Only the innermost def or class
around the fill is parsed (or the top-level statement), dedented, so the cost follows the size of that function, not
of the file (`ast.parse` alone takes ~17 us a line here, 45 ms for a 2,600-line module). Nothing compiled is run.
"""

from __future__ import annotations

import functools
import re
import warnings

from lsp_server.holes import leading_ws

MAX_CHECK_CHARS = 50_000  # a longer statement (a data table in code) is left to tree-sitter: ~35 ms to parse

# A line that goes on with the statement above it at the same indentation, rather than starting one.
_CONTINUES = re.compile(r"(else|elif|except|finally|case)\b|[)\]}]")
_DEFINES = re.compile(r"(async\s+)?def\b|class\b")


def _indent(line: str) -> int:
    return len(leading_ws(line))


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


def _compiled(source: str) -> frozenset[str] | None:
    """The compiler's warnings for source (`'list' object is not callable`, ...), or None when it is rejected.
    Compiled, never run: compile() also rejects what the parser lets pass (`break` outside a loop)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            compile(source, "<fill>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, MemoryError, RecursionError):  # ValueError: a NUL byte
            return None
    return frozenset(str(w.message) for w in caught)


def _starts_top_level(text: str, at: int) -> bool:
    """Whether the line starting at `at` starts a top-level statement (code at column 0, not `else:`, `)`...)."""
    end = text.find("\n", at)
    line = text[at : len(text) if end < 0 else end]
    return _is_code(line) and _indent(line) == 0 and not _CONTINUES.match(line)


def _top_level(text: str, start: int, end: int) -> tuple[int, int]:
    """Character offsets of the top-level statements holding [start, end), their decorators included: the only
    lines statement_around reads (a 1 MB file was split whole for each candidate fill)."""
    top = text.rfind("\n", 0, start) + 1
    while top > 0 and not _starts_top_level(text, top):
        top = text.rfind("\n", 0, top - 1) + 1
    while top > 0 and text.startswith("@", text.rfind("\n", 0, top - 1) + 1):
        top = text.rfind("\n", 0, top - 1) + 1
    bottom = text.find("\n", end)
    while bottom >= 0 and not _starts_top_level(text, bottom + 1):
        bottom = text.find("\n", bottom + 1)
    return top, len(text) if bottom < 0 else bottom


def statement_around(text: str, start: int, end: int) -> str | None:
    """The innermost def or class (else the top-level statements) of text holding the characters [start, end),
    dedented; None where it cannot be cut out (a line indented less than its block: text of a string)."""
    top, bottom = _top_level(text, start, max(start, end))
    lines = text[top:bottom].split("\n")
    first = text.count("\n", top, start)
    last = first + text.count("\n", start, max(start, end))
    a, level = _block_start(lines, first)
    b = _block_end(lines, last, level)
    if any(_is_code(line) and _indent(line) < level for line in lines[a:b]):
        return None
    return "\n".join(line[level:] for line in lines[a:b])


def _line_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Start of the line holding start, end of the line holding end (before its line break)."""
    line_end = text.find("\n", end)
    return text.rfind("\n", 0, start) + 1, len(text) if line_end < 0 else line_end


def _passed(text: str, start: int, end: int) -> tuple[str, int]:
    """text with the lines holding [start, end) made one `pass` at the first one's indentation; where it starts."""
    a, b = _line_span(text, start, end)
    line = text[a:b]
    return text[:a] + line[: _indent(line)] + "pass" + text[b:], a


def _with_body(text: str, at: int) -> str:
    """text with a `pass` body under the line holding at, where that line opens a block (`def g(x):`) and ends
    there: a header typed at the end of its function has no body yet."""
    a, b = _line_span(text, at, at)
    line = text[a:b]
    if not line.rstrip().endswith(":") or text[at:b].strip():
        return text
    return text[:b] + "\n" + line[: _indent(line)] + "    pass" + text[b:]


@functools.lru_cache(maxsize=4)  # the code before the fill: once for all of a request's candidates and repairs
def _accepted(before: str, hole_start: int, hole_end: int) -> frozenset[str] | None:
    """The compiler's warnings for the function around the hole, or without the statement being typed there; None
    when it does not compile either way (or is too long to check)."""
    statement = statement_around(before, hole_start, hole_end)
    if statement is None or len(statement) > MAX_CHECK_CHARS:
        return None
    accepted = _compiled(statement)
    if accepted is None:
        passed, at = _passed(before, hole_start, hole_end)
        statement = statement_around(passed, at, at)
        accepted = None if statement is None else _compiled(statement)
    return accepted


def breaks_python(before: str, hole_start: int, hole_end: int, after: str, insert_len: int) -> bool:
    """Whether the fill that made after from before ([hole_start, hole_end) replaced by insert_len characters)
    leaves the function around it rejected by Python's compiler, or warned about, where it was not: the function
    as it was, or, where only the statement being typed kept it from compiling (`x = `, `f(`), the function
    without that statement. Where the code there did not compile either way, the fill is not held against it."""
    accepted = _accepted(before, hole_start, hole_end)
    if accepted is None:
        return False
    end = hole_start + insert_len
    filled = statement_around(after, hole_start, end)
    if filled is None:
        return False
    warned = _compiled(filled)
    if warned is None:
        bodied = statement_around(_with_body(after, end), hole_start, end)
        warned = None if bodied is None else _compiled(bodied)
    return warned is None or not warned <= accepted  # rejected, or a warning of its own (calling a literal, ...)
