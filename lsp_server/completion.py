"""From a document and a cursor (or selection) to ready-to-insert fills: hole, engine calls, post-processing.

Shared by the language server and `codefill fill`, so the command line shows exactly what an editor would get.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from lsp_server import languages
from lsp_server.holes import Hole, find_hole
from lsp_server.postprocess import postprocess

log = logging.getLogger("codefill.completion")


class Filler(Protocol):
    """Anything with the engine's fill signature (engine.api.Engine or an EngineClient)."""

    def fill(self, prefix: str, suffix: str, max_tokens: int, single_line: bool = False, *,
             steps: int | None = None, temperature: float = 0.0, seed: int | None = None,
             cancel: threading.Event | None = None) -> Any: ...


@dataclass
class Completion:
    """The hole that was filled and the distinct texts that may replace its range (best first)."""

    hole: Hole
    inserts: list[str] = field(default_factory=list)
    engine_calls: int = 0
    seconds: float = 0.0
    raw: list[str] = field(default_factory=list)  # the engine's fills before post-processing

    @property
    def insert_text(self) -> str:
        """The best replacement for the hole's range ('' when there is none)."""
        return self.inserts[0] if self.inserts else ""

    def __bool__(self) -> bool:
        return bool(self.inserts)

    def to_json(self) -> dict[str, Any]:
        """For `codefill fill --json`."""
        return {"kind": self.hole.kind, "start": self.hole.start, "end": self.hole.end,
                "max_tokens": self.hole.max_tokens, "single_line": self.hole.single_line,
                "insert_text": self.insert_text, "candidates": self.inserts, "raw": self.raw,
                "engine_calls": self.engine_calls, "seconds": round(self.seconds, 4)}


@functools.lru_cache(maxsize=8)
def _errors_in(language_id: str | None, text: str) -> int | None:
    """Syntax errors of a document's text, remembered for the last few texts: requests while the text has not
    changed (the manual trigger after an automatic one, several candidates) parse it once."""
    spec = languages.spec_for(language_id)
    return languages.count_syntax_errors(spec, text) if spec else None


def plan_attempts(hole: Hole, candidates: int) -> list[tuple[int, float, int | None]]:
    """(token budget, temperature, seed) per engine call: greedy first, then other lengths, then samples."""
    attempts: list[tuple[int, float, int | None]] = [(hole.max_tokens, 0.0, None)]
    if candidates > 1:
        # The span length is the biggest lever on a diffusion fill: vary it, then sample.
        for budget in (hole.max_tokens // 2, hole.max_tokens // 4):
            if budget >= 4:
                attempts.append((budget, 0.0, None))
        attempts += [(hole.max_tokens, 0.8, seed) for seed in range(1, candidates + 1)]
        attempts = attempts[: candidates + 1]  # a few engine calls at most, even when fills repeat
    return attempts


def complete_at(engine: Filler, text: str, offset: int, language_id: str | None, *,
                selection_end: int | None = None, max_tokens: int | None = None, candidates: int = 1,
                steps: int | None = None, cancel: threading.Event | None = None) -> Completion:
    """Fill the hole at offset (or the selection up to selection_end); engine errors propagate."""
    from engine.errors import FillCancelled  # plain module, no torch

    spec = languages.spec_for(language_id)
    if max_tokens is None:
        hole = find_hole(text, offset, language_id, selection_end)
    else:
        hole = find_hole(text, offset, language_id, selection_end, max_tokens=max_tokens)
    errors_before = _errors_in(language_id, text) if spec else None
    result = Completion(hole)
    if not text.strip():
        return result  # no code to go on: a model can only make something up (the built-in one wrote `isisherher`)
    started = time.perf_counter()
    for budget, temperature, seed in plan_attempts(hole, candidates):
        if len(result.inserts) >= candidates or (cancel is not None and cancel.is_set()):
            break
        result.engine_calls += 1
        try:
            out = engine.fill(hole.prefix, hole.suffix, budget, hole.single_line, steps=steps,
                              temperature=temperature, seed=seed, cancel=cancel)
        except FillCancelled:
            break
        insert = postprocess(hole, out.text, text, spec, errors_before)
        log.debug("fill %s budget=%d: %r -> %r", hole.kind, budget, out.text, insert)
        result.raw.append(out.text)
        if insert is not None and insert not in result.inserts:
            result.inserts.append(insert)
    result.seconds = time.perf_counter() - started
    return result
