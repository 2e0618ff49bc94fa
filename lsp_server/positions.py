"""LSP positions (line, code unit) <-> offsets into a Python string (code points).

Columns count UTF-16 code units unless the client and server agreed on another encoding at initialize
(`utf-8` bytes or `utf-32` code points): pass the negotiated one as `encoding`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pos:
    """A position as the client counts it: zero-based line and UTF-16 code units."""

    line: int
    character: int


def utf16_len(text: str) -> int:
    """Length of text in UTF-16 code units."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def unit_width(ch: str, encoding: str) -> int:
    """Code units of one character in a position encoding."""
    if encoding == "utf-8":
        return len(ch.encode("utf-8", "surrogatepass"))
    if encoding == "utf-32":
        return 1
    return 2 if ord(ch) > 0xFFFF else 1


def units_len(text: str, encoding: str = "utf-16") -> int:
    """Length of text in the encoding's code units."""
    if text.isascii() or encoding == "utf-32":
        return len(text)
    if encoding == "utf-8":
        return len(text.encode("utf-8", "surrogatepass"))
    return utf16_len(text)


def line_starts(text: str) -> list[int]:
    """Offsets at which each line starts (lines end at \\n, \\r\\n or \\r, as in LSP)."""
    starts = [0]
    i, n = 0, len(text)
    find = text.find
    while True:
        j = find("\n", i)
        k = find("\r", i, j if j >= 0 else n)
        if k >= 0:
            if k + 1 < n and text[k + 1] == "\n":
                starts.append(k + 2)
                i = k + 2
            else:
                starts.append(k + 1)
                i = k + 1
            continue
        if j < 0:
            return starts
        starts.append(j + 1)
        i = j + 1


def _line_end(text: str, starts: list[int], line: int) -> int:
    """Offset of the end of a line's content (before its line break)."""
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    while end > starts[line] and text[end - 1] in "\r\n":
        end -= 1
    return end


def plain_breaks(text: str) -> bool:
    """Whether every line break in text is \\n or \\r\\n (no lone \\r): then a line's start is found with str.count
    and str.find, at C speed, instead of a pass over every line (a 10 MB file has 1.7M lines: ~1 s a keystroke)."""
    return "\r" not in text or text.count("\r") == text.count("\r\n")


_CHUNK = 1 << 16


def _nth_line_start(text: str, line: int) -> int | None:
    """Offset at which a line starts in a text with plain breaks; None past the last line."""
    if line <= 0:
        return 0
    pos, need, n = 0, line, len(text)
    while True:  # the chunk holding the line-th \n
        end = min(pos + _CHUNK, n)
        found = text.count("\n", pos, end)
        if found >= need:
            break
        need -= found
        pos = end
        if pos >= n:
            return None
    while end - pos > 512:  # halve it down to a short stretch
        mid = (pos + end) // 2
        found = text.count("\n", pos, mid)
        if found >= need:
            end = mid
        else:
            need -= found
            pos = mid
    for _ in range(need):
        pos = text.index("\n", pos) + 1
    return pos


def line_count(text: str, starts: list[int] | None = None) -> int:
    """Number of lines as LSP counts them (a final line break starts an empty last line)."""
    if starts is not None:
        return len(starts)
    if plain_breaks(text):
        return text.count("\n") + 1
    return len(line_starts(text))


def _line_bounds(text: str, line: int, starts: list[int] | None) -> tuple[int, int] | None:
    """Start and end (before its line break) of a line; None past the last line."""
    if starts is None and not plain_breaks(text):
        starts = line_starts(text)
    if starts is not None:
        if line >= len(starts):
            return None
        return starts[line], _line_end(text, starts, line)
    start = _nth_line_start(text, line)
    if start is None:
        return None
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    if end > start and text[end - 1] == "\r":
        end -= 1
    return start, end


def offset_at(text: str, pos: Pos, starts: list[int] | None = None, encoding: str = "utf-16") -> int:
    """Offset of an LSP position, clamped into the document (past a line's end -> its end).

    Without starts, a text with plain line breaks is not scanned line by line (see plain_breaks)."""
    if pos.line < 0:
        return 0
    bounds = _line_bounds(text, pos.line, starts)
    if bounds is None:
        return len(text)
    start, end = bounds
    want = max(pos.character, 0)
    if text.isascii() or text[start:end].isascii():
        return min(start + want, end)
    units = 0
    i = start
    while i < end and units < want:
        units += unit_width(text[i], encoding)
        i += 1
    return i


def position_at(text: str, offset: int, starts: list[int] | None = None, encoding: str = "utf-16") -> Pos:
    """LSP position of an offset (clamped into the document)."""
    offset = min(max(offset, 0), len(text))
    if starts is None and plain_breaks(text):
        start = text.rfind("\n", 0, offset) + 1
        return Pos(text.count("\n", 0, start), units_len(text[start:offset], encoding))
    starts = starts if starts is not None else line_starts(text)
    lo, hi = 0, len(starts) - 1
    while lo < hi:  # last line start <= offset
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return Pos(lo, units_len(text[starts[lo]:offset], encoding))
