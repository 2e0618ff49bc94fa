"""LSP languageId -> tree-sitter grammar, and the node kinds that make holes."""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Callable

import tree_sitter

# Documents larger than this are not parsed: hole finding falls back to indentation, and the
# syntax check of a fill is skipped (a 5 MB minified line must not stall the server).
MAX_PARSE_CHARS = 1_000_000


@dataclass(frozen=True)
class LanguageSpec:
    """One language: its grammar and the syntax node kinds that shape a hole."""

    name: str
    module: str  # the grammar wheel's module
    function: str  # the function in it that returns the language pointer
    block_kinds: frozenset[str]  # statement blocks and bodies
    argument_kinds: frozenset[str]  # argument and parameter lists
    comment_kinds: frozenset[str] = frozenset({"comment", "line_comment", "block_comment"})
    string_kinds: frozenset[str] = frozenset({"string", "string_literal", "template_string", "raw_string_literal"})
    indent_blocks: bool = False  # True where a trailing ':' opens a block (Python)
    indent_unit: str = "    "  # used when the document shows none


def _spec(name, module, function, blocks, args, **kw) -> LanguageSpec:
    return LanguageSpec(name, module, function, frozenset(blocks), frozenset(args), **kw)


_JS_BLOCKS = {"statement_block", "class_body", "switch_body"}
_JS_ARGS = {"arguments", "formal_parameters"}

SPECS: dict[str, LanguageSpec] = {
    "python": _spec(
        "python", "tree_sitter_python", "language", {"block"}, {"argument_list", "parameters"},
        string_kinds=frozenset({"string", "string_content"}), indent_blocks=True,
    ),
    "javascript": _spec("javascript", "tree_sitter_javascript", "language", _JS_BLOCKS, _JS_ARGS, indent_unit="  "),
    "typescript": _spec(
        "typescript", "tree_sitter_typescript", "language_typescript",
        _JS_BLOCKS | {"interface_body", "enum_body"}, _JS_ARGS, indent_unit="  ",
    ),
    "tsx": _spec(
        "tsx", "tree_sitter_typescript", "language_tsx",
        _JS_BLOCKS | {"interface_body", "enum_body"}, _JS_ARGS, indent_unit="  ",
    ),
    "go": _spec(
        "go", "tree_sitter_go", "language", {"block", "statement_list", "field_declaration_list"},
        {"argument_list", "parameter_list"},
        string_kinds=frozenset({"interpreted_string_literal", "raw_string_literal"}), indent_unit="\t",
    ),
    "rust": _spec(
        "rust", "tree_sitter_rust", "language", {"block", "declaration_list", "field_declaration_list"},
        {"arguments", "parameters"},
    ),
    "java": _spec(
        "java", "tree_sitter_java", "language", {"block", "class_body", "constructor_body", "interface_body"},
        {"argument_list", "formal_parameters"},
    ),
    "c": _spec(
        "c", "tree_sitter_c", "language", {"compound_statement", "field_declaration_list"},
        {"argument_list", "parameter_list"},
    ),
    "cpp": _spec(
        "cpp", "tree_sitter_cpp", "language",
        {"compound_statement", "field_declaration_list", "declaration_list"},
        {"argument_list", "parameter_list"},
    ),
}

# LSP languageId (as editors send it) -> our language name.
LANGUAGE_IDS: dict[str, str] = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",  # the JavaScript grammar parses JSX
    "js": "javascript",  # Emacs eglot names js-mode's language so
    "typescript": "typescript",
    "ts": "typescript",
    "typescriptreact": "tsx",
    "tsx": "tsx",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "c++": "cpp",
    "cuda-cpp": "cpp",
}

# File extension -> languageId, for documents read from disk without a didOpen.
EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascriptreact", ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "typescriptreact", ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
}

_languages: dict[str, tree_sitter.Language] = {}
_lock = threading.Lock()
RECENT_PARSES = 4  # texts and trees kept per language for parse()
_recent: dict[str, list[tuple[bytes, tree_sitter.Tree]]] = {}


def spec_for(language_id: str | None) -> LanguageSpec | None:
    """The spec for an LSP languageId, or None for a language without a grammar."""
    if not language_id:
        return None
    name = LANGUAGE_IDS.get(language_id.lower())
    return SPECS.get(name) if name else None


def language_id_for_path(path: str) -> str | None:
    """Guess an LSP languageId from a file name."""
    dot = path.rfind(".")
    return EXTENSIONS.get(path[dot:].lower()) if dot >= 0 else None


def grammar(spec: LanguageSpec) -> tree_sitter.Language:
    """The tree-sitter Language of a spec, loaded once."""
    with _lock:
        lang = _languages.get(spec.name)
        if lang is None:
            fn: Callable[[], object] = getattr(importlib.import_module(spec.module), spec.function)
            lang = tree_sitter.Language(fn())
            _languages[spec.name] = lang
        return lang


def parse(spec: LanguageSpec, text: str) -> tree_sitter.Tree | None:
    """Parse a document; None when it is too large to parse on a keystroke.

    The last few parses of each language are kept: the same text again costs nothing, and a text that differs
    from one of them by one edit (the next keystroke, a candidate fill in the hole) is parsed incrementally
    from its tree, which on a large file is an order of magnitude faster than parsing from scratch.
    """
    if len(text) > MAX_PARSE_CHARS:
        return None
    data = text.encode("utf-8", "surrogatepass")
    with _lock:
        recent = _recent.setdefault(spec.name, [])
        for i, (old, old_tree) in enumerate(recent):
            if old == data:
                recent.insert(0, recent.pop(i))
                return old_tree
        # The kept text with the most bytes in common (prefix + suffix), each compared once.
        diffs = [(_diff(old, data), old, tree) for old, tree in recent]
        best = max(diffs, key=lambda d: sum(d[0]), default=None)
        old_tree = None
        if best is not None and sum(best[0]) >= len(data) // 2:
            (prefix, suffix), old, base_tree = best
            old_tree = base_tree.copy()  # edit a copy: the cached tree may be read by another request
            old_tree.edit(**_edit(old, data, prefix, suffix))
    # A Parser is cheap and not thread-safe: one per call.
    parser = tree_sitter.Parser(grammar(spec))
    tree = parser.parse(data, old_tree) if old_tree is not None else parser.parse(data)
    with _lock:
        recent.insert(0, (data, tree))
        del recent[RECENT_PARSES:]
    return tree


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of a and b (compared a block at a time, in C)."""
    n = min(len(a), len(b))
    lo, step = 0, 4096
    while lo < n and a[lo : lo + step] == b[lo : lo + step]:
        lo += step
    hi = min(lo + step, n)
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the longest common suffix of a and b, at most limit."""
    n, step = 0, 4096
    while n < limit:
        m = min(step, limit - n)
        if a[len(a) - n - m : len(a) - n] != b[len(b) - n - m : len(b) - n]:
            break
        n += m
    while n < limit and a[len(a) - n - 1] == b[len(b) - n - 1]:
        n += 1
    return n


def _diff(old: bytes, new: bytes) -> tuple[int, int]:
    """Lengths of the common prefix and of the common suffix after it (the two never overlap)."""
    prefix = _common_prefix(old, new)
    return prefix, _common_suffix(old, new, min(len(old), len(new)) - prefix)


def _point(data: bytes, offset: int) -> tuple[int, int]:
    """(row, byte column) of a byte offset, as tree-sitter counts them."""
    return data.count(b"\n", 0, offset), offset - (data.rfind(b"\n", 0, offset) + 1)


def _edit(old: bytes, new: bytes, start: int, suffix: int) -> dict[str, object]:
    """The single edit that turns old into new (given _diff's prefix and suffix), as Tree.edit's arguments."""
    old_end, new_end = len(old) - suffix, len(new) - suffix
    return {"start_byte": start, "old_end_byte": old_end, "new_end_byte": new_end,
            "start_point": _point(old, start), "old_end_point": _point(old, old_end),
            "new_end_point": _point(new, new_end)}


def count_syntax_errors(spec: LanguageSpec, text: str) -> int | None:
    """Number of ERROR and MISSING nodes in the parse of text; None when not parsed."""
    tree = parse(spec, text)
    if tree is None:
        return None
    root = tree.root_node
    if not root.has_error:
        return 0
    count = 0
    cursor = root.walk()
    while True:
        node = cursor.node
        if node is not None and (node.is_error or node.is_missing):
            count += 1
        descend = node is not None and node.has_error and not node.is_missing
        if descend and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return count
