"""Model directories: where the built-in models live, and what a directory's engine.json says. No torch here, so
the language server can read a model's languages before (or without) loading it."""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import CheckpointError

MODELS_DIR = Path(__file__).parent / "models"
BUILTIN_MODEL = "codefill-base"
ENGINE_FILE = "engine.json"
LANGUAGES_KEY = "languages"  # engine.json: the programming languages the model was trained on (tree-sitter names)


def resolve_model_path(name: str | Path | None) -> Path:
    """A model directory from a path or a built-in name (None: the built-in model)."""
    if name is None:
        name = BUILTIN_MODEL
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    builtin = MODELS_DIR / str(name)
    if builtin.is_dir():
        return builtin
    if path.exists():
        raise CheckpointError(f"{name}: not a directory (a model directory holds config.json, the weights and "
                              "tokenizer.json)")
    known = sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir()) if MODELS_DIR.is_dir() else []
    raise CheckpointError(f"{name}: no such model directory (built-in models: {', '.join(known) or 'none'})")


def read_engine_json(model_path: Path) -> dict[str, object]:
    """<model>/engine.json as an object ({} when the directory has none); raises CheckpointError when unreadable."""
    path = model_path / ENGINE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected an object")
    languages = data.get(LANGUAGES_KEY)
    if languages is not None and not (isinstance(languages, list) and all(isinstance(x, str) for x in languages)):
        raise CheckpointError(f"{path}: {LANGUAGES_KEY!r} must be a list of language names")
    return data


def trained_languages(name: str | Path | None) -> frozenset[str] | None:
    """The languages a model directory says it was trained on, or None when it does not say (an external
    checkpoint, an unreadable engine.json, a missing directory: nothing to warn about here; loading reports those)."""
    try:
        languages = read_engine_json(resolve_model_path(name)).get(LANGUAGES_KEY)
    except CheckpointError:
        return None
    return frozenset(str(x).lower() for x in languages) if isinstance(languages, list) else None


def language_note(name: str | Path | None, language: str,
                  how_to_switch: str = "the modelPath setting, or --model") -> str | None:
    """A warning for filling `language` (a tree-sitter name such as "go") with a model whose engine.json names the
    languages it was trained on and not this one; None when the model knows it or does not say. how_to_switch: how
    the caller's user picks another model (the language server's wording by default; `codefill fill`: --model)."""
    known = trained_languages(name)
    if known is None or language.lower() in known:
        return None
    model = Path(name).name if name is not None else BUILTIN_MODEL
    return (f"the model {model} was trained on {', '.join(sorted(known))} code only: its fills in {language} will "
            f"be poor (another model: {how_to_switch})")
