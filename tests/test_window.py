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


@pytest.mark.parametrize("prefix", ["def f(x):\n    return ", "value = compute(", "total = su"])
def test_healing_takes_the_prefix_last_token_into_the_span(tok: CodeTokenizer, prefix: str) -> None:
    plain = build_window(tok, prefix, "\n", 8)
    w = build_window(tok, prefix, "\n", 8, heal=True)
    assert plain.healed == "" and w.healed
    taken = len(plain.prefix_ids) - len(w.prefix_ids)
    assert 1 <= taken <= 3 and w.prefix_ids == plain.prefix_ids[:-taken]
    assert tok.decode(w.prefix_ids) + w.healed == prefix
    assert tok.ids_starting_with(w.healed)  # some token can stand for the healed text
    assert w.span_len == plain.span_len == 8  # the healed token takes one of the span's slots


@pytest.mark.parametrize("prefix", ["x = 1\n", "", "x = 1\n\n", "def f():\n    ", "if a:\n\t"])
def test_no_healing_at_a_line_start_or_an_empty_prefix(tok: CodeTokenizer, prefix: str) -> None:
    w = build_window(tok, prefix, "\n", 8, heal=True)
    assert w.healed == "" and tok.decode(w.prefix_ids) == prefix


def test_no_healing_of_a_one_token_span(tok: CodeTokenizer) -> None:
    assert build_window(tok, "return ", "\n", 1, heal=True).healed == ""


def test_lone_surrogate_is_encoded_as_a_replacement_character(tok: CodeTokenizer) -> None:
    """An editor may send a lone surrogate (JSON "\\ud800"), which UTF-8 cannot hold: it is encoded as U+FFFD, one
    character for one, so the window is built and offsets still point into the text as given."""
    prefix, suffix = 'x = "\ud800"\ny = max(', "\n\ud800"
    w = build_window(tok, prefix, suffix, 16, window=256)
    assert tok.decode(w.prefix_ids) == prefix.replace("\ud800", "\ufffd")
    assert tok.decode(w.suffix_ids) == suffix.replace("\ud800", "\ufffd")
    ids, offsets = tok.encode_with_offsets("a\ud800b")
    assert ids == tok.encode("a\ufffdb") and offsets[-1][1] == 3
