"""Cursor or selection -> Hole: the range to replace, the context on both sides, and a token budget."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from lsp_server import languages
from lsp_server.languages import LanguageSpec

HoleKind = Literal["line", "block", "body", "arguments", "selection"]

LINE_TOKENS = 32  # the rest of a line
ARGUMENT_TOKENS = 24  # an empty argument list
BODY_TOKENS = 96  # an empty body after ':' or '{'
BLOCK_TOKENS = 128  # a blank line inside a block

# The engine sees at most 256 tokens; more context than this is never used, and a 5 MB line
# must not travel to the engine whole.
PREFIX_CHARS = 6000
SUFFIX_CHARS = 3000
INDENT_SCAN_CHARS = 400_000  # detect_indent_unit reads the first 2,000 lines within this many characters

# Text right of the cursor made only of these is taken as auto-closed: the fill's range runs
# through it and the fill re-emits it, so it is replaced rather than doubled.
_AUTO_CLOSED = re.compile(r"[)\]}>\"'`]+[;:,]?")
_OPENERS = ("{", "(", "[")
_PAIRS = {"(": ")", "[": "]", "{": "}"}
_LINE_BREAK = re.compile(r"\r\n?|\n")


@dataclass(frozen=True)
class Hole:
    """Where a fill goes and what the engine sees around it.

    The document text in [start, end) is replaced by lead + fill + trail + keep, where fill is
    what the engine writes. The engine sees prefix (document text before start, then lead) and
    suffix (trail, keep, then the document text after end).
    """

    kind: HoleKind
    start: int  # offsets into the document text, in code points
    end: int
    prefix: str
    suffix: str
    lead: str  # line break and indentation the server supplies before the fill
    trail: str  # line break and indentation the server supplies after the fill
    keep: str  # text inside the range that is re-emitted after the fill (auto-closed brackets)
    indent: str  # indentation of the lines of a multi-line fill
    max_tokens: int
    single_line: bool
    in_comment: bool = False
    unit: str = "    "  # the document's indentation unit (detect_indent_unit)
    tab_columns: int = 0  # TAB_COLUMNS where the document's tabs stand for 8 columns of space units (GNU style)
    line_break: str = "\n"  # the document's line break (line_break): what the insert's breaks become
    language: str = ""  # the grammar's name (languages.SPECS), "" without one

    def insert_text(self, fill: str) -> str:
        """The text that replaces [start, end) for a given fill."""
        return self.lead + fill + self.trail + self.keep


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


TAB_COLUMNS = 8  # where a file indents with spaces and writes each 8 columns as a tab (GNU style)


def indent_columns(ws: str) -> int:
    """The width of leading whitespace in columns, a tab reaching the next multiple of TAB_COLUMNS (in a file
    indented with tabs alone, or spaces alone, the order of widths is the same for any tab width)."""
    return len(ws.expandtabs(TAB_COLUMNS))


def detect_indent_unit(text: str, default: str = "    ") -> str:
    """The document's indentation unit (see indent_style)."""
    return indent_style(text, default)[0]


def indent_style(text: str, default: str = "    ") -> tuple[str, int]:
    """The document's indentation unit (a tab, or in spaces the step most often taken into a block) and its tab
    columns: TAB_COLUMNS when the file indents in steps of spaces and writes each 8 columns as a tab (GNU style:
    2, 4 and 6 spaces, then a tab, a tab and 2 spaces, ...), else 0.

    A step counts when the line above ends with something that opens a block (`{`, `:`, `(`, `[`): the lines of a
    block comment (` * ...` under `/**`, a licence header in nearly every Java or C file) and continuation lines
    aligned with an opening bracket are not indentation. Without such a step, the default: what indentation there is
    belongs to continuation lines."""
    steps: dict[int, int] = {}
    previous: tuple[int, str] | None = None  # the width and last character of the last code line
    tab_lines = space_lines = deep_space_lines = 0
    lines = text[:INDENT_SCAN_CHARS].splitlines()
    if len(text) > INDENT_SCAN_CHARS:
        lines.pop()  # cut short: its indentation may be too
    for i, line in enumerate(lines):  # not text.splitlines(): a 10 MB file held the GIL for 0.15 s a request
        if i > 2000:
            break
        body = line.strip()
        if not body or body.startswith(("*", "/*", "//", "#")):
            continue  # comments say nothing about the code's indentation
        lead = line[: len(line) - len(line.lstrip(" \t"))]
        tab_lines += lead.startswith("\t")
        space_lines += lead.startswith(" ") and indent_columns(lead) < TAB_COLUMNS
        deep_space_lines += lead.startswith(" " * TAB_COLUMNS)
        width = indent_columns(lead)
        if previous is not None and width > previous[0] and previous[1] in "{:([":
            steps[width - previous[0]] = steps.get(width - previous[0], 0) + 1
        previous = (width, body[-1])
    mixed = tab_lines and space_lines >= max(3, tab_lines // 5)  # a few stray space-indented lines do not count
    if mixed and deep_space_lines > tab_lines:
        tab_lines = mixed = 0  # 8 columns and more in spaces, mostly: the tabs are elsewhere (a table in a
        # docstring), and the file indents with spaces, not GNU style
    if tab_lines and not mixed:
        return "\t", 0
    if steps:
        step = max(sorted(steps), key=lambda k: steps[k])  # the most common; the smallest of equals
        if not mixed or step < TAB_COLUMNS:
            return " " * min(max(step, 2), 8), TAB_COLUMNS if mixed else 0
    return ("\t", 0) if tab_lines else (default, 0)


def encode_indent(ws: str, tab_columns: int) -> str:
    """Leading whitespace as the document writes it: with tab columns, a tab for each 8 columns, then spaces."""
    if not tab_columns:
        return ws
    columns = indent_columns(ws)
    return "\t" * (columns // tab_columns) + " " * (columns % tab_columns)


# One line's tokens that matter to brackets: comments (a `/* ... */` inside the line is skipped, any other runs to
# the end of the line), strings, character literals and brackets. A Rust `'` that does not close a character
# literal is a lifetime (`&'a str`), not a quote.
_STRING_TOKENS = r""""(?:\\.|[^"\\])*"?|'(?:\\.|[^'\\])*'?"""
_BRACKET_TOKEN = r"(?P<bracket>[()\[\]{}])"
_CODE_TOKENS = {
    "c": re.compile(r"/\*.*?\*/|(?P<comment>//|/\*)|" + _STRING_TOKENS + r"|`(?:\\.|[^`\\])*`?|" + _BRACKET_TOKEN),
    "python": re.compile(r"(?P<comment>#)|" + _STRING_TOKENS + "|" + _BRACKET_TOKEN),
    "rust": re.compile(
        r"/\*.*?\*/|(?P<comment>//|/\*)|" + r'"(?:\\.|[^"\\])*"?|' + r"'(?:\\u\{[0-9a-fA-F]*\}|\\.|[^'\\])'|"
        + _BRACKET_TOKEN
    ),
}


def _code_tokens(spec: LanguageSpec | None) -> re.Pattern[str]:
    if spec is None:
        return _CODE_TOKENS["c"]
    return _CODE_TOKENS["python"] if spec.indent_blocks else _CODE_TOKENS.get(spec.name, _CODE_TOKENS["c"])


def _code_of(line: str, spec: LanguageSpec | None) -> tuple[str, int, int]:
    """(the line up to a comment, closers in it with no opener before them, openers left unclosed)."""
    unmatched = depth = 0
    for m in _code_tokens(spec).finditer(line):
        if m.group("comment"):
            return line[: m.start()], unmatched, depth
        bracket = m.group("bracket")
        if bracket is None:
            continue
        if bracket in "([{":
            depth += 1
        elif depth:
            depth -= 1
        else:
            unmatched += 1
    return line, unmatched, depth


_LAMBDA_HEAD = re.compile(r"\blambda\b[^:]*:$")


def _opens_block(line: str, spec: LanguageSpec | None) -> bool:
    """Whether a line ends with something that opens an indented block."""
    code, _, depth = _code_of(line, spec)
    s = code.rstrip()
    if s.endswith(_OPENERS):
        return True
    if not s.endswith(":") or not (spec is None or spec.indent_blocks):
        return False
    # A colon inside brackets (`key=lambda x:`, `{"a":`, `xs[1:`) or ending a lambda opens no block.
    return depth == 0 and _LAMBDA_HEAD.search(s) is None


def _statement_indent(text: str, line_start: int, line: str, spec: LanguageSpec | None) -> str:
    """The indentation of the line where the statement holding this line starts: the line's own, unless it closes
    brackets opened on lines above (`        b):` under `def f(a,`, `\tb int) {` under `func f(a int,`), when a
    block it opens is indented from the statement's first line, not from the continuation."""
    _, need, _ = _code_of(line, spec)
    pos = line_start
    for _ in range(50):
        if need <= 0 or pos == 0:
            break
        pos -= 2 if text[max(pos - 2, 0) : pos] == "\r\n" else 1  # the end of the line above
        start, end = line_bounds(text, pos)
        pos = start
        _, unmatched, depth = _code_of(text[start:end], spec)
        need += unmatched - depth
        if need <= 0:
            return leading_ws(text[start:end])
    return leading_ws(line)


@dataclass(frozen=True)
class _Syntax:
    in_comment: bool = False
    in_string: bool = False
    empty_arguments: bool = False
    in_block: bool | None = None  # whether the innermost node around the cursor is a block; None: no tree


def _syntax_at(spec: LanguageSpec | None, text: str, offset: int) -> _Syntax:
    """What the syntax tree says about the cursor: comment, string, empty argument list."""
    if spec is None:
        return _Syntax()
    tree = languages.parse(spec, text)
    if tree is None:
        return _Syntax()
    b = len(text[:offset].encode("utf-8", "surrogatepass"))
    in_comment = in_string = empty_args = False
    innermost = tree.root_node.named_descendant_for_byte_range(b, b)
    while innermost is not None and not (innermost.start_byte < b < innermost.end_byte):
        innermost = innermost.parent
    in_block = innermost is not None and innermost.type in spec.block_kinds
    for probe in {max(b - 1, 0), b}:
        node = tree.root_node.descendant_for_byte_range(probe, probe)
        while node is not None:
            inside = node.start_byte < b < node.end_byte
            if node.type in spec.comment_kinds and node.start_byte < b <= node.end_byte:
                # A line comment runs to the end of its line; a block comment is left at its end.
                closed = node.text is not None and node.text.rstrip().endswith(b"*/")
                in_comment = in_comment or inside or not closed
            elif node.type in spec.string_kinds and inside:
                in_string = True
            elif node.type in spec.argument_kinds and inside:
                named = [c for c in node.named_children if c.type not in spec.comment_kinds]
                empty_args = empty_args or not named
            node = node.parent
    return _Syntax(in_comment, in_string, empty_args, in_block)


def line_bounds(text: str, offset: int) -> tuple[int, int]:
    """Start and end (before its line break) of the line holding offset; lines end at \\n, \\r\\n or \\r, as in
    LSP (positions.line_starts), found without scanning the whole document."""
    newline = text.rfind("\n", 0, offset)
    start = max(newline, text.rfind("\r", newline + 1, offset)) + 1
    found = _LINE_BREAK.search(text, offset)
    return start, found.start() if found else len(text)


def line_break(text: str) -> str:
    """The document's line break: the first one in it (\\n, \\r\\n or \\r), or \\n when it has none."""
    found = _LINE_BREAK.search(text)
    return found.group() if found else "\n"


def neighbour_line(text: str, pos: int, step: int) -> str | None:
    """The nearest non-blank line above (step=-1, pos at a line start) or below (step=1, pos at a line end)."""
    found = neighbour_bounds(text, pos, step)
    return text[found[0] : found[1]] if found is not None else None


def neighbour_bounds(text: str, pos: int, step: int) -> tuple[int, int] | None:
    """Start and end of the line neighbour_line finds."""
    while True:
        if step < 0:
            if pos == 0:
                return None
            pos -= 2 if text[max(pos - 2, 0) : pos] == "\r\n" else 1  # the end of the line above
            start, end = line_bounds(text, pos)
            pos = start
        else:
            found = _LINE_BREAK.match(text, pos)
            if found is None:
                return None
            start, end = line_bounds(text, found.end())
            pos = end
        if text[start:end].strip():
            return start, end


def _clip_prefix(prefix: str) -> str:
    if len(prefix) <= PREFIX_CHARS:
        return prefix
    clipped = prefix[-PREFIX_CHARS:]
    found = _LINE_BREAK.search(clipped)
    return clipped[found.end() :] if found and found.start() < len(clipped) // 2 else clipped


def _clip_suffix(suffix: str) -> str:
    if len(suffix) <= SUFFIX_CHARS:
        return suffix
    clipped = suffix[:SUFFIX_CHARS]
    last_line = line_bounds(clipped, len(clipped))[0]
    return clipped[:last_line] if last_line > len(clipped) // 2 else clipped


_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)


def for_model(code: str, unit: str) -> str:
    """Code as the model reads it: in a tab-indented document, each leading tab becomes four spaces.

    The model learnt from code indented with spaces; shown tabs, the built-in model answered a tab or nothing for
    a blank line in a block. Its fill comes back in spaces, and postprocess writes that indentation as the
    document does (four spaces to a tab, see postprocess._restyle_indent)."""
    if unit != "\t":
        return code
    return _LEADING_TABS.sub(lambda m: "    " * len(m.group()), code)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 3)


def find_hole(
    text: str,
    offset: int,
    language_id: str | None = None,
    selection_end: int | None = None,
    *,
    max_tokens: int = BLOCK_TOKENS,
) -> Hole:
    """The hole at a cursor offset (or the selection [offset, selection_end)) in a document."""
    offset = min(max(offset, 0), len(text))
    spec = languages.spec_for(language_id)
    cap = max(1, max_tokens)

    def make(kind: HoleKind, start: int, end: int, budget: int, single: bool, *, lead: str = "",
             trail: str = "", keep: str = "", indent: str = "", in_comment: bool = False) -> Hole:
        return Hole(
            kind=kind, start=start, end=end,
            prefix=for_model(_clip_prefix(text[:start] + lead), unit),
            suffix=for_model(_clip_suffix(trail + keep + text[end:]), unit),
            lead=lead, trail=trail, keep=keep, indent=indent,
            max_tokens=max(1, min(budget, cap)), single_line=single, in_comment=in_comment,
            unit=unit, tab_columns=tab_columns, line_break=line_break(text), language=spec.name if spec else "",
        )

    line_start, line_end = line_bounds(text, offset)
    line = text[line_start:line_end]
    current_indent = leading_ws(line)
    unit, tab_columns = indent_style(text, spec.indent_unit if spec else "    ")

    def inside(ws: str) -> str:
        """One level in from ws, written as the document writes indentation."""
        return encode_indent(ws + unit, tab_columns)

    if selection_end is not None and selection_end != offset:
        start, end = sorted((offset, min(max(selection_end, 0), len(text))))
        selected = text[start:end]
        budget = min(max(_estimate_tokens(selected) * 3 // 2 + 4, 8), BLOCK_TOKENS)
        # A selection that starts in a line's indentation keeps that indentation, and one that ends with a line
        # break (whole lines selected) keeps the break: the model writes the code between them (left to write the
        # indentation, it copied the deeper one of a line nearby; the break was lost, joining two lines).
        found = _LINE_BREAK.search(selected)
        first_line = selected[: found.start()] if found else selected
        lead = first_line[: len(first_line) - len(first_line.lstrip(" \t"))]
        if text[line_bounds(text, start)[0] : start].strip() or not first_line.strip():
            lead = ""
        trail = "\n" if selected.strip() and selected.endswith(("\n", "\r")) else ""
        return make("selection", start, end, budget, found is None, lead=lead, trail=trail, indent=current_indent)

    left = text[line_start:offset]
    right = text[offset:line_end]
    syntax = _syntax_at(spec, text, offset)

    if syntax.in_comment or syntax.in_string:
        return make("line", offset, offset if right.strip() else line_end, LINE_TOKENS, True,
                    indent=current_indent, in_comment=syntax.in_comment)

    if not left.strip() and not right.strip():
        # A blank line: a block of statements may go here.
        above = neighbour_bounds(text, line_start, -1)
        prev = text[above[0] : above[1]] if above is not None else None
        nxt = neighbour_line(text, line_end, 1)
        prev_indent = _statement_indent(text, above[0], prev, spec) if above is not None and prev is not None else ""
        opens = prev is not None and _opens_block(prev, spec)
        if left:
            indent = left + right  # the editor has indented the line: trust it (the cursor may be inside that)
        else:
            indent = inside(prev_indent) if opens else prev_indent
            if nxt is not None and not opens and indent_columns(leading_ws(nxt)) > indent_columns(indent):
                indent = leading_ws(nxt)
        empty_body = opens and (nxt is None or indent_columns(leading_ws(nxt)) <= indent_columns(prev_indent))
        lead = indent[len(left):] if indent.startswith(left) else ""
        kind: HoleKind = "body" if empty_body else "block"
        return make(kind, offset, line_end, BODY_TOKENS if empty_body else BLOCK_TOKENS, False,
                    lead=lead, indent=left + lead)

    if left.strip() and not right.strip():
        # After `foo(` or `xs[` at the end of a line the arguments go on as a line (`a, b)`); only a blank line
        # below such a bracket is a block of them.
        if _opens_block(left, spec) and not _code_of(left, spec)[0].rstrip().endswith(("(", "[")):
            # The end of a line that opens a block: statements go on the lines below.
            nxt = neighbour_line(text, line_end, 1)
            base = _statement_indent(text, line_start, line, spec)
            inner = inside(base)
            empty_body = nxt is None or indent_columns(leading_ws(nxt)) <= indent_columns(base)
            if nxt is not None and not empty_body:
                inner = leading_ws(nxt)
            return make("body" if empty_body else "block", offset, line_end,
                        BODY_TOKENS if empty_body else BLOCK_TOKENS, False,
                        lead="\n" + inner, indent=inner)
        return make("line", offset, line_end, LINE_TOKENS, True, indent=current_indent)

    stripped_left = left.rstrip()
    if stripped_left.endswith("{") and right.lstrip().startswith("}") and syntax.in_block is not False:
        # `{|}`: an empty body on one line becomes an indented block.
        base = _statement_indent(text, line_start, left, spec)
        inner = inside(base)
        end = offset + (len(right) - len(right.lstrip()))
        return make("body", offset, end, BODY_TOKENS, False,
                    lead="\n" + inner, trail="\n" + base, indent=inner)

    if not left.strip():
        # The cursor in the indentation of a line of code: what goes here goes on lines of their own above it, and
        # the code keeps its line (inserted where the cursor is, it would run into that code). Before a closing
        # bracket (`|}`: a block's, an object's, a call's) the lines are indented inside the bracket; before
        # anything else, as the line is.
        ws = left + right[: len(right) - len(right.lstrip())]
        kind, budget, inner = "block", BLOCK_TOKENS, ws
        if right.lstrip().startswith(("}", ")", "]")):
            above = neighbour_bounds(text, line_start, -1)
            prev = text[above[0] : above[1]] if above is not None else ""
            base = _statement_indent(text, above[0], prev, spec) if above is not None else ""
            if above is not None and _opens_block(prev, spec):
                kind, budget, inner = "body", BODY_TOKENS, inside(base)
            else:
                inner = base if indent_columns(base) > indent_columns(ws) else inside(ws)
        lead = inner[len(left) :] if inner.startswith(left) else ""
        return make(kind, offset, offset + len(ws) - len(left), budget, False,
                    lead=lead, trail="\n" + ws, indent=left + lead)

    right_content = right.rstrip()
    auto_closed = _AUTO_CLOSED.fullmatch(right_content) is not None
    end, keep = (line_end, right_content) if auto_closed else (offset, "")
    if syntax.empty_arguments or (spec is None and stripped_left.endswith("(") and right.startswith(")")):
        return make("arguments", offset, end, ARGUMENT_TOKENS, True, keep=keep, indent=current_indent)
    return make("line", offset, end, LINE_TOKENS, True, keep=keep, indent=current_indent)
