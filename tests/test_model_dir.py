"""Model directories without torch: the built-in model's path, engine.json, and the languages a model knows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import CheckpointError
from engine.model_dir import BUILTIN_MODEL, MODELS_DIR, language_note, read_engine_json, resolve_model_path, \
    trained_languages


def test_the_built_in_model_says_it_knows_python() -> None:
    if not (MODELS_DIR / BUILTIN_MODEL / "engine.json").exists():
        pytest.skip("no built-in model in this checkout")
    assert resolve_model_path(None) == MODELS_DIR / BUILTIN_MODEL
    assert trained_languages(None) == {"python"}
    assert language_note(None, "python") is None
    note = language_note(None, "go")
    assert note is not None and "codefill-base" in note and "python" in note and "go" in note


def test_engine_json_languages(tmp_path: Path) -> None:
    assert read_engine_json(tmp_path) == {} and trained_languages(tmp_path) is None  # says nothing: no note
    (tmp_path / "engine.json").write_text(json.dumps({"order": "confidence", "languages": ["Python", "Go"]}))
    assert trained_languages(tmp_path) == {"python", "go"} and language_note(tmp_path, "go") is None
    assert language_note(tmp_path, "rust") is not None
    (tmp_path / "engine.json").write_text(json.dumps({"languages": "python"}))
    with pytest.raises(CheckpointError, match="list of language names"):
        read_engine_json(tmp_path)
    assert trained_languages(tmp_path) is None  # a broken file is reported when the model loads, not here
    (tmp_path / "engine.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_engine_json(tmp_path)
    assert trained_languages(tmp_path / "missing") is None


def test_decoding_settings_beside_languages_still_load(tmp_path: Path) -> None:
    from engine.api import _model_defaults

    (tmp_path / "engine.json").write_text(json.dumps({"order": "margin", "languages": ["python"]}))
    assert _model_defaults(tmp_path, {"order", "steps"}) == {"order": "margin"}
    (tmp_path / "engine.json").write_text(json.dumps({"colour": "blue"}))
    with pytest.raises(CheckpointError, match="decoding settings"):
        _model_defaults(tmp_path, {"order", "steps"})


def test_a_file_is_not_a_model_directory(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(CheckpointError, match="a.py: not a directory"):
        resolve_model_path(tmp_path / "a.py")
    with pytest.raises(CheckpointError, match="no such model directory"):
        resolve_model_path(tmp_path / "missing")


def test_the_note_says_how_to_pick_another_model(tmp_path: Path) -> None:
    """The language server's wording by default; the command line passes its own."""
    (tmp_path / "engine.json").write_text(json.dumps({"languages": ["python"]}))
    assert "(another model: the modelPath setting, or --model)" in str(language_note(tmp_path, "go"))
    assert str(language_note(tmp_path, "go", how_to_switch="--model DIR")).endswith("(another model: --model DIR)")
