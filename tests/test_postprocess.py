"""Post-processing of fills: no repeats of the suffix, auto-closed brackets, indentation, syntax check."""

from __future__ import annotations

import pytest

from lsp_server import languages
from lsp_server.holes import find_hole
from lsp_server.postprocess import bracket_scan, dedupe_against_suffix, postprocess
from lsp_server.python_check import breaks_python, statement_around


def _apply(language_id: str | None, marked: str, fill: str) -> tuple[str | None, str | None]:
    """(insert text, document after the insert) for a raw engine fill at `|`."""
    text, offset = marked.replace("|", ""), marked.index("|")
    hole = find_hole(text, offset, language_id)
    insert = postprocess(hole, fill, text, languages.spec_for(language_id))
    if insert is None:
        return None, None
    return insert, text[: hole.start] + insert + text[hole.end :]


# (languageId, marked document, raw fill, expected document after, or None when the fill is dropped)
CASES = [
    # The model writes the auto-closed bracket again: it is replaced, not doubled.
    ("python", "x = foo(|)\n", "a, b)", "x = foo(a, b)\n"),
    ("python", "x = foo(|)\n", "a, b", "x = foo(a, b)\n"),
    ("python", "x = foo(|)\n", "bar(a))", "x = foo(bar(a))\n"),
    ("javascript", "f(|);\n", "a, b);", "f(a, b);\n"),
    # ... also when the fill closes them around its own text, and ends with the `;` already there.
    ("javascript", "f(g(|));\n", "x);", "f(g(x));\n"),
    ("javascript", "f(g(|));\n", "h(x);", "f(g(h(x)));\n"),
    ("rust", "fn f() {\n    let v = vec![|];\n}\n", "1, 2, 3]", "fn f() {\n    let v = vec![1, 2, 3];\n}\n"),
    # In a string, a fill that runs on into the call's closers without the closing quote stops at the quote.
    ("python", 'print("Hello, |")\n', "name)", 'print("Hello, name")\n'),
    ("javascript", 'f("a|");\n', "b);", 'f("ab");\n'),
    ("python", 'd["|"]\n', "key]", 'd["key"]\n'),
    ("python", 'f("|")\n', "(a)", 'f("(a)")\n'),  # brackets the fill opens itself are string text
    ("python", 'name = "|"\n', 'hello"', 'name = "hello"\n'),  # the closing quote written again
    # tree-sitter reads `b =` above a call as one assignment; Python does not: the fill is dropped.
    ("python", "class A:\n    def f(self, a):\n        x = 1\n        |\n        g(x)\n", "b =", None),
    ("python", "@dec\ndef f(a):\n    x = 1\n    |\n    print(x)\n\n\nf(2)\n", "y = x =", None),
    ("python", "def f(a):\n    x = 1\n    |\n    g(x)\n", "x += a", "def f(a):\n    x = 1\n    x += a\n    g(x)\n"),
    # ... nor what Python's compiler rejects or warns about: `break` outside a loop, a call of a literal.
    ("python", "def f(a):\n    x = 1\n    |\n    return x\n", "break", None),
    ("python", "def f(a):\n    for x in a:\n        |\n    return a\n", "break",
     "def f(a):\n    for x in a:\n        break\n    return a\n"),
    ("python", "def area(w, h):\n    return |\n", "[](w)", None),
    ("python", "def f(a):\n    x = |\n    return x\n", "[]()", "def f(a):\n    x = []\n    return x\n"),  # repaired
    ("python", "def f(a):\n    x = |\n    return x\n", "set()", "def f(a):\n    x = set()\n    return x\n"),
    # While a statement is typed the function does not compile: a fill must make it compile, not leave it open.
    ("python", "def f(a):\n    x = |\n    return x\n", "kernel.", None),
    ("python", "def f(a):\n    x = |\n    return x\n", "a + 1", "def f(a):\n    x = a + 1\n    return x\n"),
    ("python", "class A:\n    def f(self):\n        return 1\n\n    def g(self|\n", ", x):",
     "class A:\n    def f(self):\n        return 1\n\n    def g(self, x):\n"),  # a header: its body comes next
    ("python", 'def f(a):\n    s = "\\d"\n    |\n', "t = 1", 'def f(a):\n    s = "\\d"\n    t = 1\n'),  # its own warning
    # Fills that do nothing are not offered: a name assigned to itself, a comment marker with no comment.
    ("python", "def f(timeout):\n    |\n    return timeout\n", "timeout = timeout", None),
    ("python", "def f(a):\n    x = |\n", "x", None),
    ("javascript", "function f(a) {\n  |\n}\n", "this.a = this.a;", None),
    ("python", "def f(a):\n    x = 1\n    |\n    return x\n", "#", None),
    ("python", "def f(a):\n    x = 1  |\n", "#", None),
    ("c", "int f(void) {\n    |\n}\n", "/* */", None),
    ("python", "def f(a):\n    x = 1  |\n", "# one", "def f(a):\n    x = 1  # one\n"),
    ("python", "class A:\n    def f(self, name):\n        |\n", "self.name = name",
     "class A:\n    def f(self, name):\n        self.name = name\n"),
    # A block fill that ends by leaving the block above more of that block's code would make it unreachable.
    ("python", "def f(a):\n    x = 1\n    |\n    y = 2\n    return y\n", "return x", None),
    ("python", "def f(a):\n    x = 1\n    |\n\n    # c\n    y = 2\n", "z = 3\n    return x",
     "def f(a):\n    x = 1\n    z = 3\n\n    # c\n    y = 2\n"),
    ("python", "def f(a):\n    x = 1\n    if x:\n        |\n    return x\n", "return 2",
     "def f(a):\n    x = 1\n    if x:\n        return 2\n    return x\n"),
    ("python", "def f(a):\n    x = 1\n    |\n", "return x", "def f(a):\n    x = 1\n    return x\n"),
    ("javascript", "function f(a) {\n  const x = 1;\n  |\n  return x;\n}\n", "return a;", None),
    ("javascript", "function f(a) {\n  |\n  function g() {\n    return a;\n  }\n}\n", "return g();",
     "function f(a) {\n  return g();\n  function g() {\n    return a;\n  }\n}\n"),  # hoisted: reachable
    ("c", "int f(int a) {\n    switch (a) {\n    case 1:\n        a++;\n        |\n    case 2:\n        return 0;\n"
     "    }\n    return a;\n}\n", "break;", "int f(int a) {\n    switch (a) {\n    case 1:\n        a++;\n"
     "        break;\n    case 2:\n        return 0;\n    }\n    return a;\n}\n"),
    # A one-line block fill that assigns again exactly as a line just above does is dropped; other repeats stay.
    ("python", "class A:\n    def __init__(self, config, n):\n        self.config = config\n        self.n = n\n        |\n"
     "        self.x = 1\n", "self.config = config", None),
    ("python", "def f(a):\n    i = 0\n    i += 1\n    |\n", "i += 1", "def f(a):\n    i = 0\n    i += 1\n    i += 1\n"),
    # A name with a piece written twice, where the document has the name without it, is the document's name.
    ("python", "def f(self, info):\n    self.fs.info(info)\n    x = |\n", "self.fs.infoinfo(info)",
     "def f(self, info):\n    self.fs.info(info)\n    x = self.fs.info(info)\n"),
    ("python", "def f(self, loop):\n    |\n", "self.looploop = loop", "def f(self, loop):\n    self.loop = loop\n"),
    ("python", "def f(bookkeeper):\n    x = |\n", "bookkeeper + mama", "def f(bookkeeper):\n    x = bookkeeper + mama\n"),
    # Unclosed brackets in the fill are closed rather than breaking the file.
    ("python", "x = foo(|)\n", "a, (b", "x = foo(a, (b))\n"),
    # A stray closer that would break the parse is dropped.
    ("python", "def f(a):\n    return a +|\n", " 1)", "def f(a):\n    return a + 1\n"),
    # The rest of the line, repeated by the model, is not doubled.
    ("c", "int f(int a) {\n    return a +|;\n}\n", " 1;", "int f(int a) {\n    return a + 1;\n}\n"),
    # Lines that repeat the code below the hole are cut off.
    ("python", "def f(a):\n    |\n    return x\n", "x = a * 2\n    return x", "def f(a):\n    x = a * 2\n    return x\n"),
    ("javascript", "function f(a) {|}\n", "return a;\n}", "function f(a) {\n  return a;\n}\n"),
    ("go", "package main\n\nfunc f() int {\n\t|\n}\n", "return 1\n}", "package main\n\nfunc f() int {\n\treturn 1\n}\n"),
    # A fill that is only the next line again (the cursor in the indentation of a line: lines go above it) is dropped.
    ("python", "def f(a, b):\n    |total = a + b\n", "total = a + b", None),
    ("python", "def f(a):\n    |\n    return x\n", "return x", None),
    # Multi-line fills stay inside the block they start in.
    ("python", "def f(a):\n|\n\ndef g():\n    pass\n", "return a\n\ndef g():\n    pass",
     "def f(a):\n    return a\n\ndef g():\n    pass\n"),
    ("python", "def f(a):|\n", "\n    y = a\n    return y\nprint(2)", "def f(a):\n    y = a\n    return y\n"),
    ("javascript", "function f(a) {\n  |\n}\n", "if (a) {\n    return 1;\n  }\n  return 2;\n}",
     "function f(a) {\n  if (a) {\n    return 1;\n  }\n  return 2;\n}\n"),
    # A string the fill leaves open on its line loses a stray closing quote or gets the missing one, where that
    # parses better (here the line is broken before the fill, so "no worse" alone would keep `name'`).
    ("python", "def f(name):\n    msg = 'hi ' + |\n    return msg\n", "name'",
     "def f(name):\n    msg = 'hi ' + name\n    return msg\n"),
    ("python", "def f():\n    msg = |\n    return msg\n", "'world", "def f():\n    msg = 'world'\n    return msg\n"),
    ("javascript", "const m = |;\n", '"it\\"s', 'const m = "it\\"s";\n'),
    # ... but a quote inside another kind of string, or escaped, is no stray one.
    ("python", "x = |\n", '"don\'t"', 'x = "don\'t"\n'),
    # A Rust lifetime is no quote: brackets after it are still closed, and a stray closer still dropped.
    ("rust", "struct W<'a>(&'a str);\nfn f<'a>(s: &'a str) -> W<'a> {\n    |\n}\n", "W::<'a>(s",
     "struct W<'a>(&'a str);\nfn f<'a>(s: &'a str) -> W<'a> {\n    W::<'a>(s)\n}\n"),
    ("rust", "fn f<'a>(s: &'a str) -> &'a str {\n    let t: &'a str = s.trim_matches(|);\n    t\n}\n", "'(');",
     "fn f<'a>(s: &'a str) -> &'a str {\n    let t: &'a str = s.trim_matches('(');\n    t\n}\n"),
    # A single-line hole keeps one line.
    ("python", "x = |\n", "1\ny = 2", "x = 1\n"),
    # Undecodable bytes and control characters end a fill.
    ("python", "x = |\n", "12\ufffd3", "x = 12\n"),
    ("python", "x = |\n", "\x06abc", None),
    # An empty fill, or one that cannot be made to parse, is no fill.
    ("python", "x = |\n", "", None),
    ("python", "def f(a):\n    |\n", "return )(", None),
]


@pytest.mark.parametrize("language_id, marked, fill, expected", CASES)
def test_postprocess_table(language_id, marked, fill, expected) -> None:
    _, after = _apply(language_id, marked, fill)
    assert after == expected
    if after is not None:
        spec = languages.spec_for(language_id)
        before_text = marked.replace("|", "")
        assert languages.count_syntax_errors(spec, after) <= languages.count_syntax_errors(spec, before_text)


@pytest.mark.parametrize("eol", ["\r\n", "\r"], ids=["crlf", "cr"])
@pytest.mark.parametrize("language_id, marked, fill, expected", CASES)
def test_insert_uses_the_documents_line_break(eol, language_id, marked, fill, expected) -> None:
    """In a CRLF (or lone-CR) file the same fill lands the same way, with the file's own line breaks."""
    spec = languages.spec_for(language_id)
    if spec is not None and expected is not None and (
        languages.count_syntax_errors(spec, expected.replace("\n", eol)) > languages.count_syntax_errors(spec, expected)
    ):
        pytest.skip("the grammar takes a lone \\r for whitespace (tree-sitter-python then cannot dedent)")
    _, after = _apply(language_id, marked.replace("\n", eol), fill)
    assert after == (expected.replace("\n", eol) if expected is not None else None)


def test_trailing_punctuation_does_not_stop_closer_stripping() -> None:
    """The tail of closers and `;` that repeats the auto-closed `));` goes; the closer of the fill's own `g(` stays."""
    marked = "const s = xs.reduce((|));\n"
    text = marked.replace("|", "")
    hole = find_hole(text, marked.index("|"), "javascript")
    assert dedupe_against_suffix(hole, "a, b) => a + b);", text) == "a, b) => a + b"
    assert dedupe_against_suffix(hole, "a, b) => g(b);", text) == "a, b) => g(b)"


def test_fill_never_parses_worse_than_before() -> None:
    """Whatever the model writes, the accepted insert leaves no more syntax errors than there were."""
    marked = "def f(a, b):\n    total = 0\n    |\n    return total\n"
    text = marked.replace("|", "")
    spec = languages.spec_for("python")
    before = languages.count_syntax_errors(spec, text)
    for fill in ["for x in a:\n        total += x", "if (a:\n        pass", "]]]", "total += (a", "'''", "x = [1,\n"]:
        hole = find_hole(text, marked.index("|"), "python")
        insert = postprocess(hole, fill, text, spec)
        if insert is not None:
            after = text[: hole.start] + insert + text[hole.end :]
            assert languages.count_syntax_errors(spec, after) <= before, (fill, insert)


def test_multi_line_fill_keeps_block_indentation() -> None:
    insert, after = _apply("python", "class A:\n    def f(self):\n        |\n", "x = 1\n        y = 2\n        return x + y")
    assert after == "class A:\n    def f(self):\n        x = 1\n        y = 2\n        return x + y\n"
    assert insert is not None and all(line.startswith("        ") for line in insert.split("\n")[1:])


def test_a_fill_indented_with_spaces_gets_the_files_tabs() -> None:
    """The model learnt from space-indented code; in a tab-indented file its later lines get tabs (mixed, Python
    refuses them), and in a space-indented file a tab becomes the file's unit."""
    _, after = _apply("python", "def f(a):\n\tif a:\n\t\t|\n", "x = 1\n        return x")
    assert after == "def f(a):\n\tif a:\n\t\tx = 1\n\t\treturn x\n"
    _, after = _apply("go", "func f() {\n\tfor {\n\t\t|\n\t}\n}\n", "x := 1\n\t\tif x > 0 {\n            break\n\t\t}")
    assert after == "func f() {\n\tfor {\n\t\tx := 1\n\t\tif x > 0 {\n\t\t\tbreak\n\t\t}\n\t}\n}\n"
    _, after = _apply("javascript", "function f() {\n  if (a) {\n    |\n  }\n}\n", "x = 1;\n\t\treturn x;")
    assert after == "function f() {\n  if (a) {\n    x = 1;\n    return x;\n  }\n}\n"


def test_unknown_language_skips_the_syntax_check_but_still_dedupes() -> None:
    _, after = _apply("lua", "x = f(|)\n", "a, b)")
    assert after == "x = f(a, b)\n"


def test_bracket_scan_ignores_strings() -> None:
    assert bracket_scan("f(')', a") == ("", "(")
    assert bracket_scan("a)]") == (")]", "")
    assert bracket_scan("[x](y)") == ("", "")
    # In Rust a `'` is a quote only where a character literal starts; otherwise it is a lifetime.
    assert bracket_scan("W::<'a>(s") == ("", "")  # read as a string to the end of the line
    assert bracket_scan("W::<'a>(s", lifetimes=True) == ("", "(")
    assert bracket_scan("f(')', '\\'', '\\u{29}', &'a x", lifetimes=True) == ("", "(")


def test_a_fill_in_a_gnu_style_file_writes_eight_columns_as_a_tab() -> None:
    """The model's later lines keep their width in columns, written as the file writes them: 8 spaces as a tab,
    6 as spaces (not each tab as one two-space unit)."""
    text = "int\nf (void)\n{\n  if (x)\n    {\n\n    }\n  if (y)\n    {\n      z ();\n\tw ();\n    }\n}\n"
    offset = text.index("    {\n\n") + len("    {\n")
    hole = find_hole(text, offset, "c")
    assert hole.tab_columns == 8 and hole.indent == "      "
    spec = languages.spec_for("c")
    fill = "if (a)\n        b ();\n      c ();"
    assert postprocess(hole, fill, text, spec, languages.count_syntax_errors(spec, text)) == \
        "      if (a)\n\tb ();\n      c ();"


def test_python_check_reads_only_the_statement_around_the_fill() -> None:
    text = "import os\n\n\n@dec\ndef f(a):\n    x = 1\n\n# note\n    return x\nelse_value = 2\n\n\nclass B:\n    pass\n"
    start = text.index("x = 1")
    assert statement_around(text, start, start + 5) == "@dec\ndef f(a):\n    x = 1\n\n# note\n    return x"
    end_of_b = text.index("pass")
    assert statement_around(text, end_of_b, end_of_b) == "class B:\n    pass\n"
    # A method alone, dedented: the cost follows the function, not the class or the file.
    methods = "class C:\n    @property\n    def f(self):\n        if self:\n            y = 2\n        else:\n" \
              "            y = 3\n        return y\n\n    def g(self):\n        pass\n"
    at = methods.index("y = 2")
    assert statement_around(methods, at, at) == "@property\ndef f(self):\n    if self:\n        y = 2\n    else:\n" \
                                                "        y = 3\n    return y\n"
    # Text of a string at column 0 cuts the function short: what is cut out does not parse, the fill is let be.
    text = 'def f():\n    s = \"\"\"\ncol 0\n\"\"\"\n    \n    return s\n'
    at = text.index("    \n") + 4
    assert not breaks_python(text, at, at, text[:at] + "x =" + text[at:], 3)
    # Code that Python rejects around the hole before the fill: the fill is not held against it.
    broken = "def f(:\n    \n"
    assert not breaks_python(broken, 12, 12, broken[:12] + "x =" + broken[12:], 3)
