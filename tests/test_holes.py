"""Hole finding: table-driven, per language. `|` marks the cursor, `«...»` a selection."""

from __future__ import annotations

import pytest

from lsp_server import languages
from lsp_server.holes import (
    BLOCK_TOKENS,
    BODY_TOKENS,
    LINE_TOKENS,
    PREFIX_CHARS,
    SUFFIX_CHARS,
    detect_indent_unit,
    find_hole,
    for_model,
    indent_style,
    line_break,
)


def _split(marked: str) -> tuple[str, int, int | None]:
    if "«" in marked:
        a = marked.index("«")
        text = marked.replace("«", "")
        b = text.index("»")
        return text.replace("»", ""), a, b
    return marked.replace("|", ""), marked.index("|"), None


# (languageId, marked source, kind, single_line, replaced text, lead, trail, keep)
CASES = [
    # Python
    ("python", "def f(a):\n    return a +|\n", "line", True, "", "", "", ""),
    ("python", "def f(a):\n    x = foo(|)\n", "arguments", True, ")", "", "", ")"),
    # `foo(` ending a line (no auto-closed bracket): the arguments go on as a line, not on a new one.
    ("python", "def f(a):\n    x = foo(|\n    return x\n", "line", True, "", "", "", ""),
    ("python", "class A:\n    def g(|\n", "line", True, "", "", "", ""),
    ("python", "def f(a):\n    print(a|)\n", "line", True, ")", "", "", ")"),
    ("python", "def f(a):\n    x = a|.b + 1\n", "line", True, "", "", "", ""),
    ("python", "def f(a):\n    |\n", "body", False, "", "", "", ""),
    ("python", "def f(a):\n|\n", "body", False, "", "    ", "", ""),
    ("python", "def f(a):|\n\nx = 1\n", "body", False, "", "\n    ", "", ""),
    ("python", "def f(a):\n    x = 1\n    |\n    return x\n", "block", False, "", "", "", ""),
    ("python", "def f(a):\n    x = 1\n|\n    return x\n", "block", False, "", "    ", "", ""),
    ("python", "def f(a):\n    # add the |\n    return a\n", "line", True, "", "", "", ""),
    ("python", "s = 'ab|c'\n", "line", True, "", "", "", ""),
    ("python", "def f(a):\n    return «a + 1»\n", "selection", True, "a + 1", "", "", ""),
    # Whole lines selected: the indentation where the selection starts and the line break where it ends stay.
    ("python", "def f(a):\n«    b = 1\n»    return b\n", "selection", False, "    b = 1\n", "    ", "\n", ""),
    ("python", "def f(a):\n  «  b = 1\n    c = 2\n»    return b\n", "selection", False, "  b = 1\n    c = 2\n", "  ",
     "\n", ""),
    ("python", "def f(a):\n«    b = 1»\n    return b\n", "selection", True, "    b = 1", "    ", "", ""),
    ("python", "def f(a):\n    b = «1\n»    return b\n", "selection", False, "1\n", "", "\n", ""),
    ("python", "def f(a):\n«    x = 1\n    return x»\n", "selection", False, "    x = 1\n    return x", "    ", "",
     ""),
    # JavaScript and JSX
    ("javascript", "function f(a) {|}\n", "body", False, "", "\n  ", "\n", ""),
    ("javascript", "function f(a) {\n  |\n}\n", "body", False, "", "", "", ""),
    ("javascript", "function f(a) {\n  foo(|);\n}\n", "arguments", True, ");", "", "", ");"),
    ("javascript", "function f(a) {\n  const x = [1, 2].map(|)\n}\n", "arguments", True, ")", "", "", ")"),
    ("javascriptreact", "const A = () => {\n  return <div>{|}</div>;\n};\n", "line", True, "", "", "", ""),
    # TypeScript and TSX
    ("typescript", "function f(a: number): number {\n  return a *|\n}\n", "line", True, "", "", "", ""),
    ("typescript", "class A {\n  m(x: string) {\n    \n  |\n  }\n}\n", "body", False, "", "", "", ""),
    ("typescriptreact", "export function A() {\n  const [v, setV] = useState(|);\n}\n", "arguments", True,
     ");", "", "", ");"),
    # Go
    ("go", "package main\n\nfunc f() int {\n\t|\n}\n", "body", False, "", "", "", ""),
    ("go", "package main\n\nfunc f() {\n\tfmt.Println(|)\n}\n", "arguments", True, ")", "", "", ")"),
    ("go", "package main\n\nfunc f() {\n\tx := 1\n\t|\n\treturn\n}\n", "block", False, "", "", "", ""),
    # Rust
    ("rust", "fn f() {\n    let x = vec![|];\n}\n", "line", True, "];", "", "", "];"),
    ("rust", "fn f(a: i32) -> i32 {|\n}\n", "body", False, "", "\n    ", "", ""),
    ("rust", "fn f() {\n    g(|);\n}\n", "arguments", True, ");", "", "", ");"),
    # Java
    ("java", "class A {\n    int f(int a) {\n        \n    }\n}\n".replace("        \n", "        |\n"), "body", False,
     "", "", "", ""),
    ("java", "class A {\n    void f() {\n        System.out.println(|);\n    }\n}\n", "arguments", True, ");", "", "",
     ");"),
    # C and C++
    ("c", "int f(int a) {\n    if (a|) {\n    }\n}\n", "line", True, "", "", "", ""),
    ("c", "int f(int a) {\n    return a +|;\n}\n", "line", True, "", "", "", ""),  # `;` is not auto-closed
    ("typescript", "const o = {|};\n", "line", True, "};", "", "", "};"),
    ("c", "int f(int a) {|}\n", "body", False, "", "\n    ", "\n", ""),
    ("cpp", "int f() {\n    std::vector<int> v;\n    |\n    return 0;\n}\n", "block", False, "", "", "", ""),
    ("cpp", "int f() { // note|\n}\n", "line", True, "", "", "", ""),
    # A block opened on a continuation line is indented from the line where its statement starts (PEP 8's aligned
    # and hanging signatures, Go's and C's wrapped parameters), not from the continuation.
    ("python", "def g():\n    pass\n\ndef f(a,\n      b):|\n\nx = 1\n", "body", False, "", "\n    ", "", ""),
    ("python", "def f(\n        a, b,\n        c):|\n    return a\n", "block", False, "", "\n    ", "", ""),
    ("python", "def f(a,\n      b):\n|\n\ndef g():\n    pass\n", "body", False, "", "    ", "", ""),
    ("python", "def f():\n    x = foo(a,\n            b)\n|\n    return x\n", "block", False, "", "    ", "", ""),
    ("go", "package main\n\nfunc g() {\n\treturn\n}\n\nfunc f(a int,\n\tb int) int {|}\n", "body", False, "",
     "\n\t", "\n", ""),
    ("c", "int g(void) {\n    return 0;\n}\n\nint f(int a,\n      int b) {|}\n", "body", False, "", "\n    ", "\n", ""),
    ("rust", "fn g() {\n    h();\n}\n\nfn longest<'a>(x: &'a str,\n           y: &'a str) -> &'a str {|}\n", "body",
     False, "", "\n    ", "\n", ""),
    ("java", "class A {\n    void f(int a,\n           int b) {|\n    }\n}\n", "body", False, "", "\n        ", "", ""),
    # A colon inside brackets or after a lambda's parameters opens no block.
    ("python", "def f(xs):\n    return sorted(xs, key=lambda x:|\n", "line", True, "", "", "", ""),
    ("python", "f = lambda x:|\n", "line", True, "", "", "", ""),
    ("python", "d = {'a': 1, 'b':|\n", "line", True, "", "", "", ""),
    ("python", "if f(lambda x: x):|\n", "body", False, "", "\n    ", "", ""),
    # The cursor inside a line's indentation: a blank line keeps its whole indentation; before code, the lines go
    # above it, indented as it is, and the code keeps its line (inserted at the cursor, it ran into the fill).
    ("python", "def f(xs):\n    y = 1\n  |  \n", "block", False, "  ", "  ", "", ""),
    ("python", "def f(xs):\n    y = 1\n  |  return y\n", "block", False, "  ", "  ", "\n    ", ""),
    ("python", "def f(xs):\n    y = 1\n|    return y\n", "block", False, "    ", "    ", "\n    ", ""),
    ("python", "def f(xs):\n    y = 1\n    |return y\n", "block", False, "", "", "\n    ", ""),
    ("go", "package main\n\nfunc f() int {\n\tx := 1\n|\treturn x\n}\n", "block", False, "\t", "\t", "\n\t", ""),
    # No grammar: indentation and brackets only
    ("lua", "function f()\n  x = g(|)\nend\n", "arguments", True, ")", "", "", ")"),
    (None, "foo:\n|\n", "body", False, "", "    ", "", ""),
    ("plaintext", "first line and |\n", "line", True, "", "", "", ""),
]


@pytest.mark.parametrize("language_id, marked, kind, single, replaced, lead, trail, keep", CASES)
def test_hole_table(language_id, marked, kind, single, replaced, lead, trail, keep) -> None:
    text, a, b = _split(marked)
    hole = find_hole(text, a, language_id, b)
    assert (hole.kind, hole.single_line) == (kind, single)
    assert text[hole.start : hole.end] == replaced
    assert (hole.lead, hole.trail, hole.keep) == (lead, trail, keep)
    assert hole.start == min(a, b if b is not None else a)
    # The engine sees the document on both sides, with what the server adds around the fill.
    assert hole.prefix == for_model(text[: hole.start] + lead, hole.unit)
    assert hole.suffix == for_model(trail + keep + text[hole.end :], hole.unit)
    budget = {"line": LINE_TOKENS, "arguments": 24, "body": BODY_TOKENS, "block": BLOCK_TOKENS}.get(kind)
    if budget is not None:
        assert hole.max_tokens == budget


@pytest.mark.parametrize("language_id, marked, kind, single, replaced, lead, trail, keep", CASES)
def test_filled_hole_parses_as_well_as_before(language_id, marked, kind, single, replaced, lead, trail, keep) -> None:
    """A plausible fill put through the hole's insert_text lands where a programmer would put it."""
    text, a, b = _split(marked)
    hole = find_hole(text, a, language_id, b)
    spec = languages.spec_for(language_id)
    if spec is None or kind not in ("body", "block"):
        return
    statement = {"python": "pass", "go": "x := 1", "rust": "let x = 1;"}.get(spec.name, "x = 1;")
    if spec.name == "typescript" or spec.name == "javascript" or spec.name == "tsx":
        statement = "let y = 1;"
    if spec.name in ("java", "c", "cpp"):
        statement = "int y = 1;"
    filled = text[: hole.start] + hole.insert_text(statement) + text[hole.end :]
    assert languages.count_syntax_errors(spec, filled) <= languages.count_syntax_errors(spec, text)
    line_of_fill = filled[: hole.start + len(hole.lead) + 1].rsplit("\n", 1)[-1]
    assert line_of_fill.startswith(hole.indent) and hole.indent.strip() == ""
    assert hole.indent != "" or text[: hole.start].rstrip().endswith(":") is False


@pytest.mark.parametrize("eol", ["\r\n", "\r"], ids=["crlf", "cr"])
@pytest.mark.parametrize("language_id, marked, kind, single, replaced, lead, trail, keep", CASES)
def test_hole_is_the_same_with_any_line_break(eol, language_id, marked, kind, single, replaced, lead, trail,
                                              keep) -> None:
    """Lines end at \\n, \\r\\n or \\r, as in LSP: a CRLF or lone-CR file gets the hole an LF file gets (the server's
    lead and trail stay \\n until post-processing)."""
    text, a, b = _split(marked.replace("\n", eol))
    hole = find_hole(text, a, language_id, b)
    assert (hole.kind, hole.single_line) == (kind, single)
    assert text[hole.start : hole.end] == replaced.replace("\n", eol)
    assert (hole.lead, hole.trail, hole.keep) == (lead, trail, keep)


@pytest.mark.parametrize("language_id, marked, lead", [
    ("c", "int f(int a) {\n    g(); // {\n|\n}\n", "    "),
    ("javascript", "function f() {\n  g(); /* ( */ h(a,\n    b); // x:\n|\n}\n", "  "),
    ("python", "def f():\n    g()  # see {\n|\n", "    "),
    ("rust", "fn f(c: char) -> bool {\n    c == '(' && g(c)\n|\n}\n", "    "),
])
def test_comments_and_quoted_brackets_do_not_shape_a_blank_line(language_id, marked, lead) -> None:
    """A bracket in a comment, a string or a character literal neither opens a block nor continues a statement."""
    text, a, b = _split(marked)
    hole = find_hole(text, a, language_id, b)
    assert (hole.kind, hole.lead) == ("block", lead)


def test_line_break_is_the_documents_first() -> None:
    assert line_break("a\r\nb\nc\r") == "\r\n"
    assert line_break("a\rb\r\n") == "\r"
    assert line_break("a\nb\r\n") == "\n"
    assert line_break("no break") == "\n"


def test_cursor_out_of_range_is_clamped() -> None:
    text = "x = 1\n"
    assert find_hole(text, -5, "python").start == 0
    assert find_hole(text, 10_000, "python").start == len(text)


def test_budget_is_capped_by_settings() -> None:
    hole = find_hole("def f():\n    \n", 13, "python", max_tokens=16)
    assert hole.max_tokens == 16


def test_selection_budget_grows_with_the_selection() -> None:
    short = find_hole("x = 1\n", 4, "python", 5)
    long_text = "x = " + "a + " * 60 + "1\n"
    long = find_hole(long_text, 4, "python", len(long_text) - 1)
    assert short.max_tokens < long.max_tokens <= BLOCK_TOKENS


def test_huge_line_is_clipped_and_not_parsed() -> None:
    text = "x = [" + "1, " * 2_000_000 + "]\n"
    hole = find_hole(text, 1000, "python")
    assert hole.kind == "line" and hole.single_line
    assert len(hole.prefix) <= PREFIX_CHARS and len(hole.suffix) <= SUFFIX_CHARS
    assert hole.suffix == text[hole.end :][: len(hole.suffix)]


def test_indent_unit_detection() -> None:
    assert detect_indent_unit("a:\n  b\n  c:\n    d\n") == "  "
    assert detect_indent_unit("func f() {\n\tx\n}\n") == "\t"
    assert detect_indent_unit("x\n", default="  ") == "  "
    # A licence header's ` * ` lines and a continuation line aligned with its bracket are not the unit.
    java = "/*\n * Licence.\n */\nclass A {\n   /** Doc. */\n    int f(int a,\n          int b) {\n        return a;\n    }\n}\n"
    assert detect_indent_unit(java) == "    "
    assert detect_indent_unit("/**\n * Doc.\n */\nfunction f() {\n  return 1;\n}\n") == "  "
    # Only continuation lines indented: the default, not their alignment.
    assert detect_indent_unit("def f(first,\n      second):\n", default="    ") == "    "


def test_every_language_id_has_a_grammar_that_parses() -> None:
    for language_id in languages.LANGUAGE_IDS:
        spec = languages.spec_for(language_id)
        assert spec is not None
        assert languages.count_syntax_errors(spec, "") == 0
        assert languages.count_syntax_errors(spec, "(((") > 0


def test_language_ids_editors_send_find_their_grammar() -> None:
    """VS Code's ids, and the short ones other clients send (eglot names js-mode's language `js`)."""
    for language_id, name in [("javascript", "javascript"), ("js", "javascript"), ("javascriptreact", "javascript"),
                              ("ts", "typescript"), ("typescriptreact", "tsx"), ("C++", "cpp"), ("cuda-cpp", "cpp")]:
        spec = languages.spec_for(language_id)
        assert spec is not None and spec.name == name, language_id
    assert languages.spec_for("cobol") is None and languages.spec_for("") is None


@pytest.mark.parametrize(
    ("language_id", "document", "filled"),
    [
        ("c", "int f(int a) {\n|}\n", "int f(int a) {\n    return a;\n}\n"),
        ("javascript", "function f(a) {\n|}\n", "function f(a) {\n  return a;\n}\n"),
        ("go", "func f() {\n\tx := 1\n|}\n", "func f() {\n\tx := 1\n\treturn a;\n}\n"),
        ("c", "void f() {\n    if (x) {\n        a();\n    |}\n}\n",
         "void f() {\n    if (x) {\n        a();\n        return a;\n    }\n}\n"),
        ("rust", "fn f() {\n|    }\n", "fn f() {\n    return a;\n    }\n"),
        ("javascript", "const o = {\n|}\n", "const o = {\n  return a;\n}\n"),  # an object: entries, alike
        ("python", "x = {\n    'a': 1,\n|}\n", "x = {\n    'a': 1,\n    return a;\n}\n"),
        ("python", "def f():\n    return g(\n|    )\n", "def f():\n    return g(\n        return a;\n    )\n"),
    ],
)
def test_cursor_before_a_closing_brace_fills_lines_above_it(language_id: str, document: str, filled: str) -> None:
    """Nothing left of the cursor and a closing bracket right of it: the fill gets lines of its own inside the block
    (object, call), and the bracket keeps its line and indentation (it was written in front of it: `return a;}`)."""
    offset = document.index("|")
    text = document.replace("|", "")
    hole = find_hole(text, offset, language_id)
    assert not hole.single_line and hole.kind in ("body", "block")
    assert text[: hole.start] + hole.insert_text("return a;") + text[hole.end :] == filled


# GNU style: steps of two spaces, each 8 columns written as a tab.
GNU_C = """int
main (int argc, char **argv)
{
  int i;
  for (i = 0; i < argc; i++)
    {
      if (argv[i][0] == '-')
\t{
\t  puts (argv[i]);
\t  continue;
\t}
      puts (argv[i]);
    }
  return 0;
}
"""


def test_indent_style_tells_gnu_tabs_from_tab_indentation() -> None:
    assert indent_style(GNU_C) == ("  ", 8)
    kernel = "int f(void)\n{\n\tif (x) {\n\t\ty();\n\t}\n\treturn 0;\n}\n"
    assert indent_style(kernel) == ("\t", 0)
    stray = kernel + "".join(f"int g{n}(void)\n{{\n  return {n};\n}}\n" for n in range(2))  # two odd lines
    assert indent_style(stray) == ("\t", 0)
    assert indent_style("def f():\n    return 1\n") == ("    ", 0)
    # Tabs in a docstring's table, code in spaces at 4 and 8 columns (fontTools): spaces, not GNU's tabs for eights.
    table = 'FORMAT = """\n' + "\tversion:\tH\n" * 6 + '"""\n\n\nclass A:\n' \
            + "".join(f"    def f{n}(self):\n        x = 1\n        return x\n" for n in range(4))
    assert indent_style(table) == ("    ", 0)


def test_gnu_style_blocks_are_indented_in_columns_with_tabs_for_eights() -> None:
    """A blank line inside the braces at 8 columns: its statements go at 10 columns, a tab and two spaces (the
    unit was taken for a tab, 8 columns deeper than GNU's 2)."""
    text = GNU_C.replace("\t  continue;\n", "\t  continue;\n\n")
    offset = text.index("\t  continue;\n") + len("\t  continue;\n")
    hole = find_hole(text, offset, "c")
    assert hole.kind == "block" and hole.indent == "\t  " and hole.unit == "  " and hole.tab_columns == 8
    brace = GNU_C.index("      puts (argv[i]);\n    }")  # the end of the for's body: a new line at 6 columns
    text = GNU_C[:brace] + "      if (x)\n\t{\n\n\t}\n" + GNU_C[brace:]
    hole = find_hole(text, brace + len("      if (x)\n\t{\n"), "c")
    assert hole.kind == "body" and hole.indent == "\t  "


def test_a_tab_indented_document_reaches_the_model_in_spaces() -> None:
    """Leading tabs become four spaces each in what the engine reads; tabs inside a line stay, and a document
    indented with spaces is sent as it is."""
    text = "def f(x):\n\tif x:\n\t\t\n\treturn '\\t'.join(x)\t# tab\n"
    hole = find_hole(text, text.index("\t\t\n") + 2, "python")
    assert hole.indent == "\t\t" and hole.prefix.endswith("def f(x):\n    if x:\n        ")
    assert hole.suffix.startswith("\n    return '\\t'.join(x)\t# tab\n")
    spaced = text.replace("\t\t\n", "        \n").replace("\tif", "    if").replace("\treturn", "    return")
    assert find_hole(spaced, spaced.index("        \n") + 8, "python").suffix == spaced[spaced.index("        \n") + 8:]
