"""The benchmark task sets: where their files are, how a record becomes a hole, and the budget each kind gets.

No oracle: a task set's budget (max_tokens) and mode (single_line, whole_lines) come from the kind of the set
alone, never from a task's reference. The defaults follow the hole each kind makes:

- single-line (HumanEval): one whole line; the engine stops at a line break; 32 tokens (99% of the references fit).
- multi-line (HumanEval): whole lines; 128 tokens, the engine's largest span.
- random-span (HumanEval, and its light variant): any character span; 64 tokens.
- safim-block: a block body, often several lines; 128 tokens.
- safim-control: a control-flow header (`i in graph[i]:`), one line in SAFIM's Python; 32 tokens, single line.
- safim-api: an API call's arguments or the call, one line (2 of 181 references span lines); 32, single line.

`whole_lines` marks the HumanEval line sets, where the prompt ends with a line break and the suffix starts a line:
a fill there is made whole lines by the harness (trailing blanks after the last line break dropped, a line break
appended when missing), which the kind of hole implies, not the reference.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HUMANEVAL_DIR = "human-eval-infilling"
SAFIM_DIR = "safim"
COMPLETION_MARK = "{{completion}}"


@dataclass(frozen=True)
class TaskSetSpec:
    """One task set: its file (relative to the benchmarks directory), family and decoding protocol."""

    name: str
    file: str
    family: str  # "humaneval" or "safim"
    max_tokens: int
    single_line: bool
    whole_lines: bool = False

    def protocol(self) -> dict[str, Any]:
        """The settings a run used for this set, for the header and the JSON summary."""
        return {"max_tokens": self.max_tokens, "single_line": self.single_line, "whole_lines": self.whole_lines}


TASK_SETS: dict[str, TaskSetSpec] = {s.name: s for s in [
    TaskSetSpec("single-line", f"{HUMANEVAL_DIR}/HumanEval-SingleLineInfilling.jsonl.gz", "humaneval", 32, True, True),
    TaskSetSpec("multi-line", f"{HUMANEVAL_DIR}/HumanEval-MultiLineInfilling.jsonl.gz", "humaneval", 128, False, True),
    TaskSetSpec("random-span", f"{HUMANEVAL_DIR}/HumanEval-RandomSpanInfilling.jsonl.gz", "humaneval", 64, False),
    TaskSetSpec("random-span-light", f"{HUMANEVAL_DIR}/HumanEval-RandomSpanInfillingLight.jsonl.gz", "humaneval",
                64, False),
    TaskSetSpec("safim-block", f"{SAFIM_DIR}/block_completion.jsonl.gz", "safim", 128, False),
    TaskSetSpec("safim-control", f"{SAFIM_DIR}/control_completion.jsonl.gz", "safim", 32, True),
    TaskSetSpec("safim-api", f"{SAFIM_DIR}/api_completion.jsonl.gz", "safim", 32, True),
]}
DEFAULT_TASK_SETS = ["single-line", "multi-line", "random-span", "safim-block", "safim-control", "safim-api"]


@dataclass(frozen=True)
class Task:
    """One hole: the text around it, the reference (for exact match only) and how a fill is checked."""

    task_set: str
    task_id: str
    prefix: str
    suffix: str
    reference: str
    check: str  # "humaneval" (run the tests), "stdio" (SAFIM unit tests on stdin/stdout), "match" (SAFIM API)
    test: str = ""
    entry_point: str = ""
    unit_tests: tuple[tuple[str, tuple[str, ...]], ...] = ()
    source_id: str = ""  # the id in the file (SAFIM API ids collide with block ids: task_id is file:line)
    line: int = 0  # 1-based line in the file
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


class DatasetError(ValueError):
    """A benchmark directory or file is missing or malformed."""


def find_benchmarks(start: Path | None = None) -> Path | None:
    """The nearest `shared/benchmarks` directory above `start` (default: this repository), or None."""
    starts = [start] if start is not None else [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for s in starts:
        for d in [s, *s.parents]:
            cand = d / "shared" / "benchmarks"
            if cand.is_dir():
                return cand
    return None


def read_jsonl_gz(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, record) for each non-blank line of a gzipped (or plain) JSON lines file."""
    if not path.is_file():
        raise DatasetError(f"{path}: benchmark file not found")
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return rows


def _humaneval_task(spec: TaskSetSpec, n: int, r: dict[str, Any]) -> Task:
    return Task(spec.name, r["task_id"], r["prompt"], r["suffix"], r["canonical_solution"], "humaneval",
                test=r["test"], entry_point=r["entry_point"], source_id=r["task_id"], line=n)


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def _safim_task(spec: TaskSetSpec, stem: str, n: int, r: dict[str, Any]) -> Task:
    # CRLF -> LF as SAFIM's executor (ExecEval) does before running; the model sees what will run.
    program = _lf(r["eval_prompt"])
    if program.count(COMPLETION_MARK) != 1:
        raise DatasetError(f"{stem}:{n}: eval_prompt has {program.count(COMPLETION_MARK)} {COMPLETION_MARK} marks")
    prefix, suffix = program.split(COMPLETION_MARK)
    tests = tuple((str(t.get("input", "")), tuple(str(o) for o in t.get("output", [])))
                  for t in r.get("unit_tests") or [])
    check = "stdio" if tests else "match"
    return Task(spec.name, f"{stem}:{n}", prefix, suffix, _lf(r["ground_truth"]), check, unit_tests=tests,
                source_id=str(r.get("task_id", "")), line=n)


def load_task_set(name: str, benchmarks: Path) -> list[Task]:
    """Every task of one set, in file order (SAFIM: Python only)."""
    if name not in TASK_SETS:
        raise DatasetError(f"unknown task set {name!r}: choose from {', '.join(TASK_SETS)}")
    spec = TASK_SETS[name]
    path = Path(benchmarks) / spec.file
    rows = read_jsonl_gz(path)
    if spec.family == "humaneval":
        return [_humaneval_task(spec, n, r) for n, r in rows]
    stem = path.name.split(".")[0]
    return [_safim_task(spec, stem, n, r) for n, r in rows if r.get("lang") == "python"]


def select(tasks: list[Task], limit: int = 0, sample: int = 0, seed: int = 0) -> list[Task]:
    """The first `limit` tasks, or a seeded random `sample` of them kept in file order, or all."""
    if sample and sample < len(tasks):
        keep = sorted(random.Random(seed).sample(range(len(tasks)), sample))
        return [tasks[i] for i in keep]
    if limit:
        return tasks[:limit]
    return tasks


def with_budget(spec: TaskSetSpec, max_tokens: int | None = None, single_line: bool | None = None) -> TaskSetSpec:
    """The spec with a budget overridden from the command line."""
    return replace(spec, max_tokens=spec.max_tokens if max_tokens is None else max_tokens,
                   single_line=spec.single_line if single_line is None else single_line)
