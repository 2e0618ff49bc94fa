"""languages.parse keeps recent trees and re-parses incrementally: it must give the trees a fresh parse gives."""

from __future__ import annotations

import inspect
import textwrap

import tree_sitter
from hypothesis import HealthCheck, given, settings, strategies as st

from lsp_server import languages

PYTHON = inspect.getsource(textwrap)  # real code, a few hundred lines
JS = "function f(a, b) {\n  const xs = [a, b];\n  return xs.map((x) => x * 2);\n}\n\nclass C { m() { return 1; } }\n"


def fresh(spec: languages.LanguageSpec, text: str) -> str:
    return str(tree_sitter.Parser(languages.grammar(spec)).parse(text.encode("utf-8", "surrogatepass")).root_node)


edits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 40),
                           st.sampled_from(["", "x", "(", ")", ":\n    ", "\n", "def g(", "é", "'''", "return 1\n"])),
                 min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=edits, language=st.sampled_from(["python", "javascript"]))
def test_incremental_parses_match_fresh_ones(edits: list[tuple[float, int, str]], language: str) -> None:
    spec = languages.spec_for(language)
    assert spec is not None
    text = PYTHON if language == "python" else JS
    languages.parse(spec, text)
    for where, cut, insert in edits:  # a chain of edits, each parsed from the last text's tree
        at = int(where * len(text))
        text = text[:at] + insert + text[at + cut :]
        tree = languages.parse(spec, text)
        assert tree is not None and str(tree.root_node) == fresh(spec, text)
        assert languages.count_syntax_errors(spec, text) == _fresh_errors(spec, text)


def _fresh_errors(spec: languages.LanguageSpec, text: str) -> int:
    tree = tree_sitter.Parser(languages.grammar(spec)).parse(text.encode("utf-8", "surrogatepass"))
    count, stack = 0, [tree.root_node]
    while stack:
        node = stack.pop()
        count += node.is_error or node.is_missing
        if node.has_error and not node.is_missing:
            stack.extend(node.children)
    return count


def test_the_same_text_is_parsed_once_and_old_texts_are_forgotten() -> None:
    spec = languages.spec_for("python")
    assert spec is not None
    texts = [f"x = {i}\n" * 50 for i in range(languages.RECENT_PARSES + 2)]
    first = languages.parse(spec, texts[0])
    assert languages.parse(spec, texts[0]) is first
    for t in texts[1:]:
        languages.parse(spec, t)
    assert all(entry[0] != texts[0].encode() for entry in languages._recent["python"])
    assert len(languages._recent["python"]) == languages.RECENT_PARSES
