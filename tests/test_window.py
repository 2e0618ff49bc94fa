"""Window layout: what fits, what is cut, and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.tokenizer import CodeTokenizer
from engine.window import build_window


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> CodeTokenizer:
    return CodeTokenizer.from_file(tiny_model_dir / "tokenizer.json")


def lines(n: int, tag: str) -> str:
    return "".join(f"{tag}_{i} = compute({i}, value)\n" for i in range(n))


def test_everything_fits_when_short(tok: CodeTokenizer) -> None:
    w = build_window(tok, "x = 1\n", "\ny = 2\n", 16, window=256)
    assert tok.decode(w.prefix_ids) == "x = 1\n"
    assert tok.decode(w.suffix_ids) == "\ny = 2\n"
    assert w.span_len == 16 and w.span_start == len(w.prefix_ids)
    assert w.prefix_cut_chars == 0 and w.suffix_cut_chars == 0


def test_long_context_is_cut_at_line_boundaries(tok: CodeTokenizer) -> None:
    prefix, suffix = lines(300, "a"), lines(300, "b")
    w = build_window(tok, prefix, suffix, 32, window=256)
    assert w.length <= 256
    kept_prefix, kept_suffix = tok.decode(w.prefix_ids), tok.decode(w.suffix_ids)
    assert prefix.endswith(kept_prefix) and kept_prefix.startswith("a_")  # starts at a line start
    assert suffix.startswith(kept_suffix) and kept_suffix.endswith("\n")  # ends after a line break
    assert w.prefix_cut_chars == len(prefix) - len(kept_prefix)
    assert w.suffix_cut_chars == len(suffix) - len(kept_suffix)
    # The prefix matters more: it keeps more than the suffix, but the suffix is never dropped.
    assert len(w.prefix_ids) > len(w.suffix_ids) > 0


def test_short_prefix_gives_its_room_to_the_suffix(tok: CodeTokenizer) -> None:
    w = build_window(tok, "x = 1\n", lines(300, "b"), 32, window=256)
    assert w.length > 200 and len(w.suffix_ids) > 150


def test_span_is_capped(tok: CodeTokenizer) -> None:
    w = build_window(tok, "a\n", "b\n", 500, window=256, max_span=128)
    assert w.span_len == 128


def test_huge_single_line_is_cut_inside_the_line(tok: CodeTokenizer) -> None:
    prefix = "x = '" + "y" * 5_000_000
    w = build_window(tok, prefix, "'\n", 8, window=256)
    assert 0 < len(w.prefix_ids) and w.length <= 256
    assert w.prefix_cut_chars > 4_000_000
