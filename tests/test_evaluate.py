"""`codefill eval`: the sandbox, the data, the assembly of programs, SAFIM's comparison, and a whole run."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.evaluate import main
from engine.evaluation.datasets import TASK_SETS, DatasetError, Task, find_benchmarks, load_task_set, select
from engine.evaluation.execution import run_program
from engine.evaluation.harness import Limits, check_task, evaluate_set, finish_fill, parse_budgets
from engine.evaluation.metrics import api_match, exact_match, exact_match_ws, outputs_match, summarize

BENCH = find_benchmarks()
needs_bench = pytest.mark.skipif(BENCH is None, reason="no shared/benchmarks directory above the repository")


# ----------------------------------------------------------------------------------------------------------------
# The sandbox


def test_sandbox_passing_and_failing_programs() -> None:
    ok = run_program("import sys\nprint(sys.stdin.read().upper())", stdin="abc")
    assert ok.status == "ok" and ok.returncode == 0 and ok.stdout == "ABC\n"
    bad = run_program("assert 1 == 2, 'nope'")
    assert bad.status == "error" and bad.returncode == 1 and "AssertionError: nope" in bad.error_line()
    closed = run_program("print(repr(input()))")  # stdin is closed: EOF at once, never a hang
    assert closed.status == "error" and "EOFError" in closed.stderr


def test_sandbox_isolated_mode() -> None:
    r = run_program("import sys\nprint(sys.flags.isolated, sys.flags.no_user_site)")
    assert r.stdout.split() == ["1", "1"]


def test_sandbox_kills_an_infinite_loop_and_its_children() -> None:
    prog = ("import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(p.pid, flush=True)\n"
            "while True:\n    pass\n")
    r = run_program(prog, timeout=1.5)
    assert r.status == "timeout" and not r.ok and r.seconds < 10
    pid = int(r.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # SIGKILL lands within moments: gone, or a zombie waiting for init
        try:
            if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)
    pytest.fail(f"grandchild {pid} survived the time limit")


def test_sandbox_memory_limit() -> None:
    r = run_program("x = bytearray(1024 ** 3)\nprint('allocated')", memory_mb=256)
    assert r.status == "memory" and "allocated" not in r.stdout


def test_sandbox_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = run_program("import os\nopen('junk.txt', 'w').write('x')\nos.mkdir('d')\nprint(os.getcwd())")
    assert r.ok
    child_dir = Path(r.stdout.strip())
    assert child_dir != tmp_path and not child_dir.exists()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# The data and the assembly


@needs_bench
@pytest.mark.parametrize("name,count", [("single-line", 1033), ("multi-line", 5815), ("random-span", 1640),
                                        ("random-span-light", 164), ("safim-block", 805), ("safim-control", 750),
                                        ("safim-api", 181)])
def test_dataset_counts(name: str, count: int) -> None:
    assert BENCH is not None
    tasks = load_task_set(name, BENCH)
    assert len(tasks) == count
    assert len({t.task_id for t in tasks}) == count


@needs_bench
def test_safim_api_ids_are_keyed_by_file_and_line() -> None:
    assert BENCH is not None
    api, block = load_task_set("safim-api", BENCH), load_task_set("safim-block", BENCH)
    assert {t.source_id for t in api} & {t.source_id for t in block}  # the collision in the data
    assert not {t.task_id for t in api} & {t.task_id for t in block}
    assert all(t.task_id == f"api_completion:{t.line}" and t.check == "match" for t in api)
    assert all("\r" not in t.prefix + t.suffix for t in block)


@needs_bench
def test_canonical_single_line_solutions_pass_through_the_assembly() -> None:
    assert BENCH is not None
    spec = TASK_SETS["single-line"]
    tasks = load_task_set("single-line", BENCH)[:20]
    # The engine's single-line fill stops before the line break: the harness must give it back.
    fills = [t.reference.rstrip("\n") for t in tasks]
    assert all(finish_fill(spec, f) == t.reference for f, t in zip(fills, tasks))
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda ft: check_task(ft[1], finish_fill(spec, ft[0])), zip(fills, tasks)))
    assert [v["status"] for v in verdicts] == ["passed"] * 20
    assert not check_task(tasks[0], "    return None\n")["passed"]


@needs_bench
def test_safim_ground_truth_passes_unit_tests() -> None:
    assert BENCH is not None
    tasks = [t for name in ("safim-block", "safim-control") for t in load_task_set(name, BENCH)[:3]]
    assert all(t.unit_tests for t in tasks)
    with ThreadPoolExecutor(4) as pool:  # shortcut=False: really run the ground truth on every unit test
        verdicts = list(pool.map(lambda t: check_task(t, t.reference, shortcut=False), tasks))
    assert [v["status"] for v in verdicts] == ["passed"] * len(tasks), verdicts
    block = load_task_set("safim-block", BENCH)[0]
    assert not check_task(block, "raise RuntimeError('no')")["passed"]


def test_finish_fill_whole_lines_only() -> None:
    line, rand = TASK_SETS["single-line"], TASK_SETS["random-span"]
    assert finish_fill(line, "    return x") == "    return x\n"
    assert finish_fill(line, "return x") == "return x\n"  # indentation is never invented
    assert finish_fill(TASK_SETS["multi-line"], "    a = 1\n    b = 2\n    ") == "    a = 1\n    b = 2\n"
    assert finish_fill(line, "   ") == "" and finish_fill(line, "") == ""
    assert finish_fill(rand, "lem in x") == "lem in x"


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def test_outputs_match_like_execeval() -> None:
    assert outputs_match("0 3 2 2", "0 3 2 2\n")
    assert outputs_match("a  \nb", "a\n  b  ")
    assert outputs_match("YES", "yes") and not outputs_match("Yes please", "yes Please")
    assert outputs_match("0.5000000000000", "0.5") and outputs_match("1 2", "1\n2")
    assert not outputs_match("0.5", "0.51") and not outputs_match("1 2", "1 2 3")


def test_exact_and_api_match() -> None:
    assert exact_match("  x = 1\n", "x = 1") and not exact_match("x=1", "x = 1")
    assert exact_match_ws("x=1", "x = 1")
    assert api_match("np.sum(grad, axis = 0)", "np.sum(grad,axis=0)")
    assert api_match("f(a, k=1, j=2)", "f(a, j=2, k=1)")
    assert not api_match("np.mean(grad, axis=0)", "np.sum(grad, axis=0)")
    assert not api_match("np.sum(grad", "np.sum(grad, axis=0)")


def test_parse_budgets() -> None:
    assert parse_budgets(["single-line=16", "safim-api=64:multi,random-span=32:line"]) == {
        "single-line": (16, None), "safim-api": (64, False), "random-span": (32, True)}
    with pytest.raises(DatasetError):
        parse_budgets(["nonsense=3"])
    with pytest.raises(DatasetError):
        parse_budgets(["single-line=0"])


def test_select_first_or_seeded_sample() -> None:
    tasks = [Task("s", str(i), "", "", "", "match") for i in range(50)]
    assert [t.task_id for t in select(tasks, limit=3)] == ["0", "1", "2"]
    a, b = select(tasks, sample=5, seed=1), select(tasks, sample=5, seed=1)
    assert a == b and len(a) == 5 and [int(t.task_id) for t in a] == sorted(int(t.task_id) for t in a)


@dataclass
class _FakeFill:
    text: str
    tokens: list[int]
    forward_passes: int = 3


class _RecordingEngine:
    """Answers every hole with a fixed text and records the requests."""

    def __init__(self, text: str) -> None:
        self.text, self.requests = text, []  # type: ignore[var-annotated]

    def fill_batch(self, requests):  # type: ignore[no-untyped-def]
        self.requests.extend(requests)
        return [_FakeFill(self.text, [1, 2]) for _ in requests]


def test_budget_never_comes_from_the_reference() -> None:
    spec = TASK_SETS["safim-api"]
    tasks = [Task("safim-api", f"t{i}", "x = ", "\n", "f(" + "a, " * i * 20 + ")", "match") for i in range(4)]
    engine = _RecordingEngine("f()")
    with ThreadPoolExecutor(2) as pool:
        rows = evaluate_set(engine, spec, tasks, pool, Limits(), batch_size=3, quiet=True)
    assert {(r.max_tokens, r.single_line) for r in engine.requests} == {(spec.max_tokens, spec.single_line)}
    assert [r["task_id"] for r in rows] == ["t0", "t1", "t2", "t3"]
    assert rows[0]["passed"] and not rows[1]["passed"]
    s = summarize(rows)
    assert s["n"] == 4 and s["pass_at_1"] == 25.0 and s["median_forward_passes"] == 3


# ----------------------------------------------------------------------------------------------------------------
# The whole command with a real (tiny) engine


@needs_bench
def test_main_end_to_end(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    out, summary = tmp_path / "results.jsonl", tmp_path / "new" / "folder" / "summary.json"  # folders are made
    threads = torch.get_num_threads()
    try:  # one thread: on a busy CPU, torch's threads wait on each other (a fill takes 20x longer)
        rc = main(["--model", str(tiny_model_dir), "--device", "cpu", "--threads", "1", "--steps", "4",
                   "--benchmarks", str(BENCH), "--tasks", "single-line,safim-control,safim-api", "--limit", "3",
                   "--out", str(out), "--summary-json", str(summary), "--empty-baseline", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "max_tokens  32  single_line True" in printed and "the first 3 tasks" in printed
    assert "pass@1 %" in printed and "safim-api" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9
    for r in rows:
        assert {"task_id", "passed", "exact", "empty", "completion", "seconds", "forward_passes"} <= set(r)
        assert r["forward_passes"] >= 1 and r["seconds"] > 0
    single = [r for r in rows if r["task_set"] == "single-line"]
    assert all(r["completion"] == "" or r["completion"].endswith("\n") for r in single)
    data = json.loads(summary.read_text())
    assert data["results"]["single-line"]["n"] == 3 and data["results"]["single-line"]["of"] == 1033
    assert data["results"]["single-line"]["protocol"] == {"max_tokens": 32, "single_line": True, "whole_lines": True}
    assert "empty_fill_pass_at_1" in data["results"]["safim-control"]
    assert not any(p.name.startswith("codefill-eval-") for p in Path(os.getcwd()).iterdir())


def test_main_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tasks", "nope"]) == 2
    assert "unknown task set" in capsys.readouterr().err
    assert main(["--benchmarks", "/nonexistent/dir"]) == 2
