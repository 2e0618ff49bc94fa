"""The settings a client may send (initializationOptions, workspace/didChangeConfiguration)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from lsp_server import languages

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Settings:
    """Everything a user can set; field names are the snake_case of the client's camelCase keys."""

    enabled: bool = True
    model_path: str | None = None  # None: the built-in model
    device: str = "auto"
    steps: int = 0  # denoising steps per fill; 0 lets the engine choose
    max_tokens: int = 128  # upper bound on any fill's token budget
    debounce_ms: int = 75
    languages: tuple[str, ...] | None = None  # LSP languageIds to serve; None: every supported one
    log_file: str | None = None
    candidates: int = 3  # fills offered on a manual (Invoked) trigger
    prefetch: bool = True  # fill the next line ahead while a suggestion is on screen (lsp_server.ahead)

    def serves(self, language_id: str | None) -> bool:
        """Whether fills are offered in documents of this languageId."""
        if not self.enabled:
            return False
        if self.languages is None:
            return True
        return (language_id or "").lower() in self.languages


_CAMEL = {
    "enabled": "enabled",
    "modelPath": "model_path",
    "device": "device",
    "steps": "steps",
    "maxTokens": "max_tokens",
    "debounceMs": "debounce_ms",
    "languages": "languages",
    "logFile": "log_file",
    "candidates": "candidates",
    "prefetch": "prefetch",
}


def _int_in(lo: int, hi: int):
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return value

    return check


def _optional_path(value: Any) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("a path (string)")
    return value


def _bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def is_device(value: Any) -> bool:
    """Whether value names a device codefill can run on (auto, cpu, cuda, cuda:N or mps)."""
    return isinstance(value, str) and (value in DEVICES or re.fullmatch(r"cuda:[0-9]+", value) is not None)


def _device(value: Any) -> Any:
    if not is_device(value):
        raise ValueError("one of " + ", ".join(DEVICES) + " or cuda:N")
    return value


def _languages(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of LSP languageIds")
    unknown = [v for v in value if languages.LANGUAGE_IDS.get(v.lower()) is None]
    if unknown:
        raise ValueError("supported languageIds (unknown: " + ", ".join(unknown) + ")")
    return tuple(v.lower() for v in value)


_CHECKS = {
    "enabled": _bool,
    "model_path": _optional_path,
    "device": _device,
    "steps": _int_in(0, 1024),
    "max_tokens": _int_in(1, 1024),
    "debounce_ms": _int_in(0, 5000),
    "languages": _languages,
    "log_file": _optional_path,
    "candidates": _int_in(1, 10),
    "prefetch": _bool,
}


@dataclass
class Parsed:
    """Settings read from a client, and one line per value that was rejected."""

    settings: Settings
    problems: list[str] = field(default_factory=list)


def section(raw: Any) -> Any:
    """The codefill section of a settings object: {"codefill": {...}} or the object itself."""
    if isinstance(raw, dict) and "codefill" in raw:  # whatever it holds: a list there is an error to report
        return raw["codefill"]
    return raw


def parse_settings(raw: Any, base: Settings | None = None) -> Parsed:
    """Settings from the client's camelCase object over base; bad values keep base's value."""
    base = base or Settings()
    raw = section(raw)
    if raw is None:
        return Parsed(base)
    if not isinstance(raw, dict):
        return Parsed(base, [f"the codefill settings should be an object, got {type(raw).__name__}; using defaults"])
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = _CAMEL.get(key)
        if name is None:
            continue  # other tools' settings may share the object
        try:
            changes[name] = _CHECKS[name](value)
        except ValueError as exc:
            problems.append(f"{key}={value!r} is not {exc}; using {getattr(base, name)!r}")
    return Parsed(dataclasses.replace(base, **changes), problems)
