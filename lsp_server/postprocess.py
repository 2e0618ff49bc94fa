"""Turn an engine fill into the text that replaces a hole: de-duplicated, indented, and parsing."""

from __future__ import annotations

import re

from lsp_server import languages
from lsp_server.holes import (Hole, encode_indent, indent_columns, leading_ws, line_bounds, neighbour_bounds,
                              neighbour_line)
from lsp_server.languages import LanguageSpec
from lsp_server.python_check import breaks_python

_CLOSE_OF = {"(": ")", "[": "]", "{": "}"}
_OPEN_OF = {v: k for k, v in _CLOSE_OF.items()}
_QUOTES = "'\"`"
_LINE_ENDERS = ")]};,"  # closing brackets and the punctuation that may follow them at a line's end
_MAX_REPAIRS = 6


def _indent_width(line: str) -> int:
    """A line's indentation in columns (holes.indent_columns)."""
    return indent_columns(line[: len(line) - len(line.lstrip(" \t"))])


# A Rust character literal ('a', '\n', '\u{1F600}'); any other `'` in Rust starts a lifetime (`&'a str`) or a label.
_CHAR_LITERAL = re.compile(r"'(?:\\u\{[0-9a-fA-F]*\}|\\.|[^'\\])'")


def bracket_scan(text: str, lifetimes: bool = False) -> tuple[str, str]:
    """(closers with no opener in text, in order; openers left unclosed, in order), skipping quoted text.

    With lifetimes (Rust), a `'` is a quote only where it opens a character literal."""
    stack: list[str] = []
    unmatched: list[str] = []
    quote = ""
    escaped = False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or ch == "\n":
                quote = ""
            continue
        if ch in "\"'`":
            if not (lifetimes and ch == "'" and _CHAR_LITERAL.match(text, i) is None):
                quote = ch
        elif ch in _CLOSE_OF:
            stack.append(ch)
        elif ch in _OPEN_OF:
            if stack and stack[-1] == _OPEN_OF[ch]:
                stack.pop()
            elif not stack:
                unmatched.append(ch)
    return "".join(unmatched), "".join(stack)


def _lifetimes(hole: Hole) -> bool:
    """Whether a `'` in the hole's language may be a lifetime rather than a quote."""
    return hole.language == "rust"


def _line_before(hole: Hole, document: str) -> str:
    """The text of the line the fill's first line continues (document text left of the hole, then lead)."""
    head = document[line_bounds(document, hole.start)[0] : hole.start] + hole.lead
    return head[head.rfind("\n") + 1 :]


def _shape_lines(hole: Hole, fill: str) -> str:
    """Keep a multi-line fill inside its block (stop at the first line indented less than the block) and indent its
    later lines with the document's character: tabs in a tab-indented file (four spaces each), spaces otherwise (a
    tab becomes one unit). A model that learnt from space-indented code writes spaces, which mixed with the file's
    tabs is an error in Python and against the style of Go."""
    lines = fill.split("\n")
    lines = lines[:1] + [_restyle_indent(ln, hole.unit, hole.tab_columns) for ln in lines[1:]]
    if hole.kind in ("block", "body"):
        width = indent_columns(hole.indent)
        for i in range(1, len(lines)):
            if lines[i].strip() and _indent_width(lines[i]) < width:
                lines = lines[:i]  # the block ends here; what follows is code already after it
                break
    return "\n".join(ln.rstrip() for ln in lines)


def _restyle_indent(line: str, unit: str, tab_columns: int = 0) -> str:
    """A line's leading whitespace in the document's indentation character (see _shape_lines); with tab columns
    (GNU style), its width in columns written as the document writes it."""
    body = line.lstrip(" \t")
    lead = line[: len(line) - len(body)]
    if tab_columns:
        lead = encode_indent(lead, tab_columns)
    else:
        lead = lead.replace("    ", "\t") if unit == "\t" else lead.replace("\t", unit)
    return lead + body


def _strip_repeated_closers(body: str, rest_of_line: str, lifetimes: bool = False) -> str:
    """Drop what the fill writes again of the rest of the line: all of it, or the longest tail of closing brackets
    and punctuation (`)`, `;`, ...) that the rest of the line starts with, or ends with when it holds nothing else
    (the auto-closed `));` after a fill `a, b) => a + b);`). A closer of a bracket the fill opened stays."""
    stripped = body.rstrip()
    if rest_of_line and stripped.endswith(rest_of_line):
        return stripped[: len(stripped) - len(rest_of_line)]
    enders = len(stripped) - len(stripped.rstrip(_LINE_ENDERS))
    _, still_open = bracket_scan(stripped[: len(stripped) - enders], lifetimes)
    # Closers at the end that close no bracket of the fill's own: only these may go.
    spare = sum(ch in _OPEN_OF for ch in stripped[len(stripped) - enders :]) - len(still_open)
    only_enders = bool(rest_of_line) and not rest_of_line.strip(_LINE_ENDERS)
    cut = 0
    for k in range(1, enders + 1):
        tail = stripped[len(stripped) - k :]
        if tail[0] in _OPEN_OF:
            spare -= 1
        if spare < 0:
            break
        if rest_of_line.startswith(tail) or (only_enders and rest_of_line.endswith(tail)):
            cut = k
    return stripped[: len(stripped) - cut] if cut else body


def dedupe_against_suffix(hole: Hole, fill: str, document: str) -> str:
    """Remove what the fill repeats of the code already after the hole; a one-line fill that only repeats the start
    of the rest of the line becomes ''."""
    after = hole.trail + hole.keep + document[hole.end :]
    rest_end = line_bounds(after, 0)[1]
    rest_of_line = after[:rest_end].strip()
    lines = fill.split("\n")
    if len(lines) == 1:
        if rest_of_line.startswith(fill.strip()):
            return ""
        fill = _strip_repeated_closers(fill, rest_of_line, _lifetimes(hole))
        quoted = rest_of_line and rest_of_line[0] in _QUOTES and rest_of_line[0] not in fill
        if quoted and bracket_scan(fill, _lifetimes(hole))[0]:
            # In a string (`print("Hi, |")`): a fill that ends with closers it did not open, the ones after the
            # closing quote but without the quote (`name)`), wrote the end of the call into the string.
            fill = _strip_repeated_closers(fill, rest_of_line[1:].lstrip(), _lifetimes(hole))
        lines = [fill]
    # Whole lines that repeat the next line of code: the fill stops before them.
    following = neighbour_line(after, rest_end, 1)
    if following is not None:
        absolute = [_line_before(hole, document) + lines[0]] + lines[1:]
        for i, line in enumerate(absolute):
            if line.strip() and line.rstrip() == following.rstrip():
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
    if hole.kind in ("block", "body") or (hole.kind == "selection" and hole.lead):
        fill = fill.lstrip("\n").lstrip(" \t")  # the first line's indentation is already there
    if not hole.single_line:
        fill = _shape_lines(hole, fill)
    return dedupe_against_suffix(hole, fill, document)


def _filled(document: str, hole: Hole, fill: str) -> str:
    return document[: hole.start] + hole.insert_text(fill) + document[hole.end :]


def _repairs(fill: str, lifetimes: bool = False) -> list[str]:
    """Shorter or balanced versions of a fill to try when it breaks the parse."""
    out: list[str] = []
    unmatched, unclosed = bracket_scan(fill, lifetimes)
    if unclosed:
        out.append(fill + "".join(_CLOSE_OF[c] for c in reversed(unclosed)))
    if unmatched:
        trimmed = fill.rstrip()
        while trimmed and trimmed[-1] in _OPEN_OF:
            trimmed = trimmed[:-1].rstrip()
        out.append(trimmed)
    last = fill.rstrip().rsplit("\n", 1)[-1]
    for quote in _QUOTES:  # a string left open on the fill's last line: a stray closing quote, or a missing one
        if lifetimes and quote == "'":
            continue  # in Rust a `'` not closing a character literal is a lifetime: nothing to balance
        if _unescaped_count(_CHAR_LITERAL.sub("", last) if lifetimes else last, quote) % 2:
            trimmed = fill.rstrip()
            out.append(trimmed[:-1].rstrip() if trimmed.endswith(quote) else trimmed + quote)
    if fill.rstrip().endswith("()"):  # `[]()`: the built-in model's call of a literal, where `[]` belonged
        out.append(fill.rstrip()[:-2])
    lines = fill.split("\n")
    for n in range(len(lines) - 1, 0, -1):
        out.append("\n".join(lines[:n]).rstrip())
    return [c for c in dict.fromkeys(out) if c.strip() and c != fill][:_MAX_REPAIRS]


def _unescaped_count(text: str, char: str) -> int:
    """How often char occurs in text not escaped by a backslash."""
    return sum(1 for i, c in enumerate(text) if c == char and (i == 0 or text[i - 1] != "\\"))


def _parse_checked(hole: Hole, fill: str, document: str, spec: LanguageSpec | None,
                   errors_before: int | None) -> str | None:
    """The fill, or the repair of it that parses best, when the document parses no worse with it; else None."""
    if not fill.strip():
        return None
    if spec is None:
        return fill
    if errors_before is None:
        errors_before = languages.count_syntax_errors(spec, document)
    if errors_before is None:
        return fill  # too large to check
    best, best_errors = None, errors_before + 1
    for candidate in [fill, *_repairs(fill, _lifetimes(hole))]:
        filled = _filled(document, hole, candidate)
        after = languages.count_syntax_errors(spec, filled)
        if after is None:
            return candidate
        if spec.name == "python" and after < best_errors and breaks_python(
                document, hole.start, hole.end, filled, len(hole.insert_text(candidate))):
            after = errors_before + 1  # Python rejects what tree-sitter let pass (`name =` on its own)
        if after < best_errors:
            best, best_errors = candidate, after
        if after == 0 or (candidate is fill and after < errors_before):
            break
    return best


_NAME = r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*"
# A line that does nothing: a comment marker with no comment, or a name assigned to itself (`x = x`,
# `self.a = self.a;`).
_COMMENT_MARKER = re.compile(r"\s*(?:#+|//+|/\*+\s*(?:\*+/)?|\*+/)\s*")
_NO_OP_LINE = re.compile(rf"{_COMMENT_MARKER.pattern}|\s*(?P<name>{_NAME})\s*=\s*(?P=name)\s*;?\s*")


def _does_nothing(hole: Hole, fill: str, document: str) -> bool:
    """Whether every line the fill writes (a one-line fill: the whole line it completes) does nothing."""
    if _COMMENT_MARKER.fullmatch(fill):
        return True  # `x = 1  #`
    if "\n" in fill.strip("\n"):
        return all(_NO_OP_LINE.fullmatch(line) for line in fill.split("\n") if line.strip())
    inserted = hole.insert_text(fill)
    line = document[line_bounds(document, hole.start)[0] : hole.start] + inserted.split("\n", 1)[0]
    if "\n" not in inserted:
        line += document[hole.end : line_bounds(document, hole.end)[1]]
    return bool(_NO_OP_LINE.fullmatch(line))


_EXITS = re.compile(r"\s*(?:return|raise|throw|break|continue)\b")
# What may follow a return in the same block at its indentation: the rest of an if/try/switch, a closer, a label
# (C's `fail:`), a JavaScript function declaration (hoisted: reachable).
_AFTER_EXIT = re.compile(r"\s*(?:(?:else|elif|except|finally|case|default|catch|function|async\s+function)\b|[)\]}]"
                         r"|\w+:\s*$)")


def _cuts_off_code(hole: Hole, fill: str, document: str) -> str | None:
    """A block fill whose last line leaves the block (`return out`) above code of the same block makes that code
    unreachable: the fill without that line (None when nothing is left); the fill itself otherwise."""
    lines = fill.rstrip().split("\n")
    if hole.kind != "block" or not _EXITS.match(lines[-1]):
        return fill
    last = lines[-1] if len(lines) > 1 else document[line_bounds(document, hole.start)[0] : hole.start]
    pos = line_bounds(document, hole.end)[1]
    if document[hole.end : pos].strip():
        return fill  # code right after the hole (a cursor in a line's indentation): not judged here
    while (below := neighbour_bounds(document, pos, 1)) is not None:
        line, pos = document[below[0] : below[1]], below[1]
        if line.strip().startswith(("#", "//", "/*", "*")):
            continue
        if indent_columns(leading_ws(line)) != indent_columns(leading_ws(last)) or _AFTER_EXIT.match(line):
            return fill
        kept = "\n".join(lines[:-1]).rstrip()
        return kept if kept.strip() else None
    return fill


_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*")
_DOUBLED = re.compile(r"([A-Za-z_]{2,})\1")


def _unstuttered(word: str, document: str) -> str | None:
    """word with one copy of a doubled piece taken out (`infoinfo` -> `info`, `rope_rope_parameters` ->
    `rope_parameters`) where that gives a name the document has; None when none does."""
    for size in range(len(word) // 2, 1, -1):  # the longest doubled piece first
        for i in range(len(word) - 2 * size + 1):
            if word[i : i + size] == word[i + size : i + 2 * size]:
                candidate = word[: i + size] + word[i + 2 * size :]
                if re.search(rf"(?<![\w$]){re.escape(candidate)}(?![\w$])", document):
                    return candidate
    return None


def _unstutter(fill: str, document: str) -> str:
    """Names the model wrote with a piece twice (two neighbours decoded in the same step to the same piece) that the
    document does not have, written as the document's name they double."""
    def fix(match: re.Match[str]) -> str:
        word = match.group(0)
        if re.search(rf"(?<![\w$]){re.escape(word)}(?![\w$])", document):
            return word  # the document's own name
        return _unstuttered(word, document) or word

    return _IDENTIFIER.sub(lambda m: fix(m) if _DOUBLED.search(m.group(0)) else m.group(0), fill)


_ASSIGNMENT = re.compile(r"[\w.$]+(?:\[[^\]]*\])?\s*=(?!=)")
REPEAT_LINES = 8  # lines above a block hole that a repeated assignment is looked for in


def _repeats_an_assignment(hole: Hole, fill: str, document: str) -> bool:
    """Whether a one-line block fill assigns exactly as one of the lines just above does (`self.config = config`
    again): on 300 blanked statements of real functions, none of the 14 fills that repeated a line above was right."""
    line = fill.strip()
    if hole.kind != "block" or "\n" in line or not _ASSIGNMENT.match(line):
        return False
    pos = line_bounds(document, hole.start)[0]
    for _ in range(REPEAT_LINES):
        found = neighbour_bounds(document, pos, -1)
        if found is None:
            return False
        if document[found[0] : found[1]].strip() == line:
            return True
        pos = found[0]
    return False


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
    parses no worse; the repair that parses best wins. Line breaks are \\n until here, where
    they become the document's own (\\r\\n in a CRLF file).
    """
    fill = _parse_checked(hole, _unstutter(clean_fill(hole, fill, document), document), document, spec,
                          errors_before)
    if fill is not None:
        fill = _cuts_off_code(hole, fill, document)
    if fill is None or _does_nothing(hole, fill, document) or _repeats_an_assignment(hole, fill, document):
        return None
    return hole.insert_text(fill).replace("\n", hole.line_break)
