"""A scripted stand-in for engine.api.Engine, for tests of the server's own behaviour.

The document says what the fake writes: the first `codefill-fake: <JSON string>` marker found in
prefix + suffix is the fill (a JSON list gives one item per call, for candidates);
`codefill-fake-by-line: {"<line>": <JSON string>, ...}` gives the fill by the cursor's line (0-based; no entry:
an empty fill), for the server's fills made ahead for the next line; and
`codefill-fake-sleep: <seconds>` makes each fill take that long (honouring cancel). Every call is
appended as a JSON line to the file named by $CODEFILL_FAKE_LOG. $CODEFILL_FAKE_LOAD_SECONDS slows
the load; a model path starting with "broken" fails it with CheckpointError.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field

from engine.errors import CheckpointError, FillCancelled

_FILL = re.compile(r"codefill-fake: (\".*?(?<!\\)\"|\[.*?\])\s*$", re.M)
_BY_LINE = re.compile(r"codefill-fake-by-line: (\{.*?\})\s*$", re.M)
_SLEEP = re.compile(r"codefill-fake-sleep: ([0-9.]+)")


@dataclass
class FakeFill:
    text: str
    tokens: list[int] = field(default_factory=list)
    forward_passes: int = 1
    seconds: float = 0.0


class FakeEngine:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}  # per prefix + suffix: a list marker gives one item per call

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 3)

    def fill(self, prefix: str, suffix: str, max_tokens: int = 32, single_line: bool = False, *,
             steps: int | None = None, temperature: float = 0.0, seed: int | None = None,
             cancel: threading.Event | None = None) -> FakeFill:
        context = prefix + suffix
        index = self.calls.get(context, 0)
        self.calls[context] = index + 1
        log = os.environ.get("CODEFILL_FAKE_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"prefix_tail": prefix[-80:], "suffix_head": suffix[:80], "max_tokens": max_tokens,
                                    "single_line": single_line, "steps": steps, "temperature": temperature}) + "\n")
        sleep = _SLEEP.search(context)
        if sleep:
            deadline = time.monotonic() + float(sleep.group(1))
            while time.monotonic() < deadline:
                if cancel is not None and cancel.is_set():
                    raise FillCancelled("cancelled")
                time.sleep(0.01)
        by_line = _BY_LINE.search(context)
        if by_line:
            text = json.loads(by_line.group(1)).get(str(prefix.count("\n")), "")
            return FakeFill(text.split("\n", 1)[0] if single_line else text)
        match = _FILL.search(context)
        if not match:
            return FakeFill("")
        value = json.loads(match.group(1))
        text = value[index % len(value)] if isinstance(value, list) else value
        if single_line:
            text = text.split("\n", 1)[0]
        return FakeFill(text)


def make_engine(path: str | None = None, device: str = "auto", steps: int = 0) -> FakeEngine:
    time.sleep(float(os.environ.get("CODEFILL_FAKE_LOAD_SECONDS", "0")))
    if path and os.path.basename(path).startswith("broken"):
        raise CheckpointError(f"{path}: no config.json")
    return FakeEngine()
