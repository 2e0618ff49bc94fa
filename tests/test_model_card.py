"""The model card is written from the model's own records: every table row one line, every figure from a file."""

from __future__ import annotations

from pathlib import Path

from training.model_card import render


def _summary(steps: object, pass_at_1: float) -> dict:
    return {"decoding": {"steps": steps},
            "results": {"single-line": {"n": 1033, "pass_at_1": pass_at_1, "exact": 5.0, "empty": 2.0,
                                        "median_latency_ms": 300.0}}}


def test_card_rows_stay_one_line_and_name_their_steps(tiny_model_dir: Path) -> None:
    sources = [{"name": "Python standard library", "license": "PSF", "files": 3},
               {"name": "tiktoken", "license": "MIT License\n\n  Copyright (c) 2022 Someone", "files": 7}]
    card = render(tiny_model_dir, sources, [_summary("engine default", 9.39), _summary(16, 11.42)], "A note.")
    assert "| tiktoken | MIT License | 7 |" in card
    assert "Copyright" not in card
    assert "| single-line | 1033 | 9.39 |" in card
    assert "| single-line, `--steps 16` | 1033 | 11.42 |" in card
    table = [line for line in card.splitlines() if line.startswith("|")]
    assert all(line.endswith("|") for line in table)  # no row broken over lines
    assert card.rstrip().endswith("A note.")
    assert "Python source files" in card and "| source | license | files |" in card


def test_card_names_each_source_language_when_there_are_several(tiny_model_dir: Path) -> None:
    sources = [{"name": "Python standard library", "license": "PSF", "files": 3},
               {"name": "express 5.3.0", "license": "MIT", "files": 7, "language": "javascript"}]
    card = render(tiny_model_dir, sources, [], "")
    assert "Python and JavaScript source files" in card
    assert "| express 5.3.0 | JavaScript | MIT | 7 |" in card and "| Python standard library | Python | PSF | 3 |" in card
