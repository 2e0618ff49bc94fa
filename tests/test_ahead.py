"""lsp_server.ahead: the state after the suggestion on screen is accepted and Enter pressed, as editors make it."""

from __future__ import annotations

import pytest

from lsp_server.ahead import next_line
from lsp_server.holes import find_hole


def predict(marked: str, insert: str, language_id: str = "python"):
    """next_line for a document with `|` at the cursor, the hole found there and insert accepted into it."""
    text = marked.replace("|", "")
    hole = find_hole(text, marked.index("|"), language_id)
    return next_line(text[: hole.start], insert, text[hole.end :], hole, language_id)


# (languageId, marked document, accepted insert, the document after Enter with `|` at the predicted cursor)
CASES = [
    ("python", "def add(a, b):\n    |\n", "total = a + b", "def add(a, b):\n    total = a + b\n    |\n"),
    ("python", "def f(x):\n    if x|\n", ":", "def f(x):\n    if x:\n        |\n"),
    ("python", "def f(xs):\n    for x in |\n", "xs:", "def f(xs):\n    for x in xs:\n        |\n"),
    ("python", "def f(x):\n    y = x\n    return |\n", "y", "def f(x):\n    y = x\n    return y\n|\n"),
    ("python", "def f(x):\n    if x:\n        |\n", "pass", "def f(x):\n    if x:\n        pass\n    |\n"),
    ("python", "return |", "1", None),  # nothing to dedent
    ("python", "x = foo(|)\n", "a, b)", "x = foo(a, b)\n|\n"),  # the insert re-emits the auto-closed bracket
    ("python", "x = foo(|) + 1\n", "a, b", None),  # the accepted text does not end its line
    ("python", "x = [|\n", "1, 2, [", None),  # ends after an opener: editors differ
    ("python", "def f():\n    |\n", "# a comment", None),
    ("javascript", "function f(a) {\n  |\n}\n", "const b = a * 2;", "function f(a) {\n  const b = a * 2;\n  |\n}\n"),
    ("go", "func f() {\n\t|\n}\n", "x := 1", "func f() {\n\tx := 1\n\t|\n}\n"),
    ("python", "def f():\r\n    |\r\n", "x = 1", "def f():\r\n    x = 1\r\n    |\r\n"),
]


@pytest.mark.parametrize("language_id, marked, insert, expected", CASES)
def test_next_line(language_id, marked, insert, expected) -> None:
    state = predict(marked, insert, language_id)
    if expected is None:
        assert state is None
        return
    assert state is not None
    assert state.text[: state.offset] + "|" + state.text[state.offset :] == expected
    assert insert in state.accepted and state.text.replace("\r", "").count("\n") == state.accepted.replace(
        "\r", "").count("\n") + 1


def test_selection_is_not_predicted() -> None:
    text = "x = 1\ny = 2\n"
    hole = find_hole(text, 0, "python", 5)
    assert next_line(text[: hole.start], "x = 3", text[hole.end :], hole, "python") is None
