"""Turn an engine fill into the text that replaces a hole: de-duplicated, indented, and parsing."""

from __future__ import annotations

from lsp_server import languages
from lsp_server.holes import Hole
from lsp_server.languages import LanguageSpec

_CLOSE_OF = {"(": ")", "[": "]", "{": "}"}
_OPEN_OF = {v: k for k, v in _CLOSE_OF.items()}
_MAX_REPAIRS = 6


def _indent_width(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def bracket_scan(text: str) -> tuple[str, str]:
    """(closers with no opener in text, in order; openers left unclosed, in order), skipping quoted text."""
    stack: list[str] = []
    unmatched: list[str] = []
    quote = ""
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or ch == "\n":
                quote = ""
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in _CLOSE_OF:
            stack.append(ch)
        elif ch in _OPEN_OF:
            if stack and stack[-1] == _OPEN_OF[ch]:
                stack.pop()
            elif not stack:
                unmatched.append(ch)
    return "".join(unmatched), "".join(stack)


def _first_lines(text: str, count: int) -> list[str]:
    """The first non-blank lines of text (with their indentation)."""
    out = []
    for line in text.split("\n"):
        if line.strip():
            out.append(line.rstrip())
            if len(out) == count:
                break
    return out


def _line_before(hole: Hole, document: str) -> str:
    """The text of the line the fill's first line continues (document text left of the hole, then lead)."""
    head = document[document.rfind("\n", 0, hole.start) + 1 : hole.start] + hole.lead
    return head[head.rfind("\n") + 1 :]


def _shape_lines(hole: Hole, fill: str) -> str:
    """Keep a multi-line fill inside its block: stop at the first line indented less than the block."""
    lines = fill.split("\n")
    if hole.kind in ("block", "body"):
        width = len(hole.indent)
        for i in range(1, len(lines)):
            if lines[i].strip() and _indent_width(lines[i]) < width:
                lines = lines[:i]  # the block ends here; what follows is code already after it
                break
    return "\n".join(ln.rstrip() for ln in lines)


def _strip_repeated_closers(body: str, rest_of_line: str) -> str:
    """Drop the rest of the line, or closing brackets, that the fill writes again before them."""
    if rest_of_line and body.rstrip().endswith(rest_of_line):
        return body.rstrip()[: len(body.rstrip()) - len(rest_of_line)]
    unmatched, _ = bracket_scan(body)
    stripped = body.rstrip()
    k = 0
    while k < len(unmatched) and k < len(stripped) and stripped[-1 - k] == unmatched[-1 - k]:
        k += 1
    if k and rest_of_line.startswith(stripped[len(stripped) - k :]):
        return stripped[: len(stripped) - k]
    return body


def dedupe_against_suffix(hole: Hole, fill: str, document: str) -> str:
    """Remove what the fill repeats of the code already after the hole."""
    after = hole.trail + hole.keep + document[hole.end :]
    rest_of_line = after.split("\n", 1)[0].strip()
    lines = fill.split("\n")
    if len(lines) == 1:
        fill = _strip_repeated_closers(fill, rest_of_line)
        lines = [fill]
    # Whole lines that repeat the next line of code: the fill stops before them.
    following = _first_lines(after if not rest_of_line else after.split("\n", 1)[-1] if "\n" in after else "", 1)
    if following:
        absolute = [_line_before(hole, document) + lines[0]] + lines[1:]
        for i, line in enumerate(absolute):
            if line.strip() and line.rstrip() == following[0]:
                lines = lines[:i]
                break
    fill = "\n".join(lines)
    if not rest_of_line or len(lines) > 1:
        fill = fill.rstrip()
    return fill


def _cut_at_garbage(fill: str) -> str:
    """Cut a fill at the first undecodable byte (U+FFFD) or control character a programmer would not type."""
    for i, ch in enumerate(fill):
        if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n") or ord(ch) == 127:
            return fill[:i]
    return fill


def clean_fill(hole: Hole, fill: str, document: str) -> str:
    """Normalise a raw fill for a hole: one line where one is wanted, indentation, no repeats."""
    fill = _cut_at_garbage(fill.replace("\r\n", "\n").replace("\r", "\n"))
    if hole.single_line:
        fill = fill.split("\n", 1)[0]
    elif hole.kind in ("block", "body"):
        fill = fill.lstrip("\n").lstrip(" \t")  # the first line's indentation is already there
    if not hole.single_line:
        fill = _shape_lines(hole, fill)
    return dedupe_against_suffix(hole, fill, document)


def _filled(document: str, hole: Hole, fill: str) -> str:
    return document[: hole.start] + hole.insert_text(fill) + document[hole.end :]


def _repairs(fill: str) -> list[str]:
    """Shorter or balanced versions of a fill to try when it breaks the parse."""
    out: list[str] = []
    unmatched, unclosed = bracket_scan(fill)
    if unclosed:
        out.append(fill + "".join(_CLOSE_OF[c] for c in reversed(unclosed)))
    if unmatched:
        trimmed = fill.rstrip()
        while trimmed and trimmed[-1] in _OPEN_OF:
            trimmed = trimmed[:-1].rstrip()
        out.append(trimmed)
    lines = fill.split("\n")
    for n in range(len(lines) - 1, 0, -1):
        out.append("\n".join(lines[:n]).rstrip())
    return [c for c in dict.fromkeys(out) if c.strip() and c != fill][:_MAX_REPAIRS]


def postprocess(
    hole: Hole,
    fill: str,
    document: str,
    spec: LanguageSpec | None,
    errors_before: int | None = None,
) -> str | None:
    """The insert text for a hole (lead + fill + trail + keep), or None when nothing good remains.

    A fill that leaves the document parsing worse than before (more ERROR/MISSING nodes) is
    dropped, or repaired (brackets closed, stray closers dropped, fewer lines) when a repair
    parses no worse; the repair that parses best wins.
    """
    fill = clean_fill(hole, fill, document)
    if not fill.strip():
        return None
    if spec is None:
        return hole.insert_text(fill)
    if errors_before is None:
        errors_before = languages.count_syntax_errors(spec, document)
    if errors_before is None:
        return hole.insert_text(fill)  # too large to check
    best, best_errors = None, errors_before + 1
    for candidate in [fill, *_repairs(fill)]:
        after = languages.count_syntax_errors(spec, _filled(document, hole, candidate))
        if after is None:
            return hole.insert_text(candidate)
        if after < best_errors:
            best, best_errors = candidate, after
        if after == 0 or (candidate is fill and after < errors_before):
            break
    return hole.insert_text(best) if best is not None else None
