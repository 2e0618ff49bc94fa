"""Tokenized corpus as flat arrays, with the token ranges of syntax nodes found by tree-sitter."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.tokenizer import CodeTokenizer

# Python node kinds whose text makes a good hole: statements, blocks, calls, argument lists, expressions.
PY_SPAN_QUERY = """
[
  (expression_statement) (return_statement) (if_statement) (for_statement) (while_statement)
  (try_statement) (with_statement) (raise_statement) (assert_statement) (import_statement)
  (import_from_statement) (function_definition) (class_definition) (block) (call) (argument_list)
  (parameters) (comparison_operator) (boolean_operator) (binary_operator) (list_comprehension)
  (dictionary) (list) (subscript) (attribute) (lambda) (conditional_expression) (elif_clause)
  (else_clause) (except_clause) (assignment) (augmented_assignment) (generator_expression)
] @span
"""
# The same for JavaScript (tree-sitter-javascript's node kinds).
JS_SPAN_QUERY = """
[
  (expression_statement) (return_statement) (if_statement) (for_statement) (for_in_statement)
  (while_statement) (try_statement) (throw_statement) (switch_statement) (lexical_declaration)
  (variable_declaration) (function_declaration) (class_declaration) (method_definition) (statement_block)
  (call_expression) (arguments) (formal_parameters) (binary_expression) (arrow_function) (object) (array)
  (subscript_expression) (member_expression) (ternary_expression) (else_clause) (catch_clause)
  (assignment_expression) (augmented_assignment_expression) (template_string) (import_statement) (pair)
] @span
"""
# language -> (grammar module, its language function, span query)
SPAN_GRAMMARS = {"python": ("tree_sitter_python", "language", PY_SPAN_QUERY),
                 "javascript": ("tree_sitter_javascript", "language", JS_SPAN_QUERY)}
MAX_SPAN_TOKENS = 96


@dataclass
class TokenArrays:
    """All documents of one split: tokens, document starts, and syntax spans as global token ranges."""

    tokens: np.ndarray  # [N] uint16/int32
    doc_starts: np.ndarray  # [D+1] int64
    spans: np.ndarray  # [M, 2] int64, global [start, end)

    def save(self, path: Path) -> None:
        """Write one .npz, whole or not at all (a temporary file renamed: an interrupted write leaves no file that
        training.pipeline would take for finished)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")  # np.savez adds .npz to a name without it
        np.savez(tmp, tokens=self.tokens, doc_starts=self.doc_starts, spans=self.spans)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "TokenArrays":
        """Read what save wrote."""
        z = np.load(path)
        return cls(z["tokens"], z["doc_starts"], z["spans"])


def _parser(language: str = "python"):  # type: ignore[no-untyped-def]
    """A tree-sitter parser and a cursor over the language's span query."""
    import importlib

    from tree_sitter import Language, Parser, Query, QueryCursor

    module, function, query = SPAN_GRAMMARS[language]
    lang = Language(getattr(importlib.import_module(module), function)())
    return Parser(lang), QueryCursor(Query(lang, query))


def syntax_spans(text: str, offsets: list[tuple[int, int]], parser, cursor) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Token ranges [i, j) covering syntax nodes of at most MAX_SPAN_TOKENS tokens: sorted, each once (nested
    nodes often cover the same tokens, and tree-sitter's capture order is not stable from run to run)."""
    data = text.encode("utf-8")
    tree = parser.parse(data)
    if text.isascii():
        to_char = None
    else:  # byte offset -> character offset
        lens = np.fromiter((len(c.encode("utf-8")) for c in text), dtype=np.int64, count=len(text))
        byte_starts = np.concatenate([[0], np.cumsum(lens)])
        to_char = byte_starts
    starts = np.array([o[0] for o in offsets], dtype=np.int64)
    ends = np.array([o[1] for o in offsets], dtype=np.int64)
    out = []
    for node in cursor.captures(tree.root_node).get("span", []):
        a, b = node.start_byte, node.end_byte
        if to_char is not None:
            a, b = int(np.searchsorted(to_char, a)), int(np.searchsorted(to_char, b))
        i = int(np.searchsorted(ends, a, side="right"))  # first token ending after the node starts
        j = int(np.searchsorted(starts, b, side="left"))  # first token starting at or after the node ends
        if 0 < j - i <= MAX_SPAN_TOKENS:
            out.append((i, j))
    return sorted(set(out))


def tokenize_split(texts: list[str], tok: CodeTokenizer, language: str = "python") -> TokenArrays:
    """Encode every document (with an end token after each) and find its syntax spans (texts in `language`)."""
    parser, cursor = _parser(language)
    all_ids: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    doc_starts = [0]
    batch = 256
    for k in range(0, len(texts), batch):
        chunk = texts[k : k + batch]
        encs = tok.tok.encode_batch(chunk, add_special_tokens=False)
        for text, enc in zip(chunk, encs):
            base = doc_starts[-1]
            spans.extend((base + i, base + j) for i, j in syntax_spans(text, enc.offsets, parser, cursor))
            ids = np.asarray(enc.ids + [tok.end_id], dtype=np.int32)
            all_ids.append(ids)
            doc_starts.append(base + len(ids))
    dtype = np.uint16 if tok.vocab_size < 65536 else np.int32
    return TokenArrays(
        tokens=np.concatenate(all_ids).astype(dtype),
        doc_starts=np.asarray(doc_starts, dtype=np.int64),
        spans=np.asarray(spans, dtype=np.int64).reshape(-1, 2),
    )


def merge(parts: list[TokenArrays]) -> TokenArrays:
    """One TokenArrays holding the documents of every part, in order, spans rebased."""
    tokens, starts, spans = [], [np.zeros(1, dtype=np.int64)], []
    base = 0
    for part in parts:
        tokens.append(part.tokens)
        starts.append(np.asarray(part.doc_starts[1:], dtype=np.int64) + base)
        spans.append(np.asarray(part.spans, dtype=np.int64).reshape(-1, 2) + base)
        base += int(part.doc_starts[-1])
    dtype = np.result_type(*(t.dtype for t in tokens)) if tokens else np.uint16
    return TokenArrays(tokens=np.concatenate(tokens).astype(dtype) if tokens else np.zeros(0, dtype),
                       doc_starts=np.concatenate(starts), spans=np.concatenate(spans))


def _tokenize_chunk(args: tuple[list[str], str, str]) -> TokenArrays:
    texts, tokenizer_path, language = args
    return tokenize_split(texts, CodeTokenizer.from_file(Path(tokenizer_path)), language)


def tokenize_parallel(texts: list[str], tokenizer_path: Path, workers: int = 0, chunk: int = 500,
                      language: str = "python") -> TokenArrays:
    """tokenize_split over worker processes (0: one per CPU), documents kept in order."""
    workers = workers or os.cpu_count() or 1
    chunks = [(texts[i : i + chunk], str(tokenizer_path), language) for i in range(0, len(texts), chunk)]
    if workers == 1 or len(chunks) <= 1:
        return merge([_tokenize_chunk(c) for c in chunks])
    # spawn: a forked child would inherit the parent's tokenizer thread pool state (and torch's)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return merge(list(pool.map(_tokenize_chunk, chunks)))
