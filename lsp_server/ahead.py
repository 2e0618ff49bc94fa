"""Where the user goes next: the document once the suggestion on screen is accepted and a new line is started.

The server fills that state ahead of time, while the suggestion is on screen, so that the ghost text for the next
line is there as soon as the editor asks (ANCHORS lesson 5). A prediction only has to be right often: a request
in any other state is served as usual, and the work done ahead is cancelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lsp_server.holes import Hole

# Python lines after which editors (VS Code's and Neovim's Python indentation) start the next line one level out.
_PY_DEDENT = re.compile(r"(return|raise|pass|break|continue)\b")
_OPENERS = "{[("


@dataclass(frozen=True)
class NextLine:
    """The predicted state: the text with the suggestion accepted and Enter pressed, and the cursor in it."""

    accepted: str  # the text with the suggestion accepted, before the line break
    text: str
    offset: int


def next_line(before: str, insert: str, after: str, hole: Hole, language_id: str | None) -> NextLine | None:
    """The state after accepting insert (the text that replaces the hole's range, between before and after) and
    pressing Enter at its end, with the indentation an editor gives the new line; None where that is not
    predictable: the accepted text does not end its line, ends in a comment or after an opening bracket (editors
    differ in what they move to the new line), or the hole is a selection."""
    if hole.kind == "selection" or hole.in_comment or not insert.strip():
        return None
    accepted = before + insert + after
    cursor = len(before) + len(insert)
    if after and not after.startswith(("\n", "\r")):
        return None  # the cursor would not be at the end of a line
    line = accepted[max(accepted.rfind("\n", 0, cursor), accepted.rfind("\r", 0, cursor)) + 1 : cursor]
    body = line.strip()
    if not body or body[-1] in _OPENERS or body.startswith(("#", "//", "/*", "*")):
        return None
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    if (language_id or "").lower() == "python":
        if body.endswith(":"):
            indent += hole.unit
        elif _PY_DEDENT.match(body):
            dedented = _dedent(indent, hole.unit)
            if dedented is None:
                return None
            indent = dedented
    text = accepted[:cursor] + hole.line_break + indent + after
    return NextLine(accepted, text, cursor + len(hole.line_break) + len(indent))


def _dedent(indent: str, unit: str) -> str | None:
    """One level less indentation; None when there is none to take off."""
    if indent.endswith(unit):
        return indent[: len(indent) - len(unit)]
    return None
