"""`codefill eval`: fill every hole with the engine (greedy), check the fills in child processes, report.

Fills go through the engine in order, `--batch-size` holes per `Engine.fill_batch` call; each fill is handed to a
pool of `--workers` threads that each drive one sandboxed child process (engine/evaluation/execution.py), so
checking overlaps with filling. Generated code never runs in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.cli import (DEVICE_HELP, DTYPE_HELP, device_name, dtype_name, int_at_least, non_negative_int, open_output,
                        output_file, positive_float, positive_int)
from engine.evaluation.datasets import (
    DEFAULT_TASK_SETS,
    HUMANEVAL_DIR,
    SAFIM_DIR,
    TASK_SETS,
    DatasetError,
    Task,
    TaskSetSpec,
    find_benchmarks,
    load_task_set,
    select,
    with_budget,
)
from engine.evaluation.execution import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, run_program
from engine.evaluation.metrics import api_match, exact_match, exact_match_ws, is_empty, outputs_match, summarize

PROGRESS_EVERY_S = 15.0


@dataclass(frozen=True)
class Limits:
    """Limits of one child process."""

    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = DEFAULT_MEMORY_MB


# ----------------------------------------------------------------------------------------------------------------
# From a fill to a verdict


def finish_fill(spec: TaskSetSpec, text: str) -> str:
    """What the harness inserts for the engine's fill `text`.

    Sets of whole-line holes (HumanEval single- and multi-line: the prompt ends with a line break and the suffix
    starts a line) get whole lines: blanks after the last line break are dropped and a line break is appended when
    missing (a single-line fill stops before its line break). Indentation is the model's own: never added, never
    removed. Every other set gets the fill as it is.
    """
    if not spec.whole_lines:
        return text
    body = text.rstrip(" \t")
    if not body.strip():
        return ""
    return body if body.endswith("\n") else body + "\n"


def humaneval_program(task: Task, completion: str) -> str:
    """The program a HumanEval-Infilling task runs: prompt + completion + suffix, the tests, the check call."""
    return task.prefix + completion + task.suffix + "\n" + task.test + "\n" + f"check({task.entry_point})\n"


def safim_program(task: Task, completion: str) -> str:
    """A SAFIM program with the hole filled."""
    return task.prefix + completion + task.suffix


def check_task(task: Task, completion: str, limits: Limits = Limits(), shortcut: bool = True) -> dict[str, Any]:
    """Whether `completion` passes `task`: {"passed", "status", "error"}.

    SAFIM stdin/stdout tasks run each unit test in turn and stop at the first failure; like SAFIM's harness, a
    completion equal to the ground truth passes without running (`shortcut`).
    """
    if task.check == "humaneval":
        r = run_program(humaneval_program(task, completion), None, limits.timeout, limits.memory_mb)
        return {"passed": r.ok, "status": "passed" if r.ok else r.status, "error": "" if r.ok else r.error_line()}
    if task.check == "match":
        ok = api_match(completion, task.reference)
        return {"passed": ok, "status": "passed" if ok else "no-match", "error": ""}
    if task.check == "stdio":
        if shortcut and completion == task.reference:
            return {"passed": True, "status": "passed", "error": ""}
        program = safim_program(task, completion)
        for i, (stdin, outputs) in enumerate(task.unit_tests):
            r = run_program(program, stdin, limits.timeout, limits.memory_mb)
            if not r.ok:
                return {"passed": False, "status": r.status, "error": f"test {i}: {r.error_line()}"}
            if not any(outputs_match(o, r.stdout) for o in outputs):
                return {"passed": False, "status": "wrong-answer", "error": f"test {i}: {r.stdout.strip()[:200]!r}"}
        return {"passed": True, "status": "passed", "error": ""}
    raise ValueError(f"unknown check {task.check!r}")


# ----------------------------------------------------------------------------------------------------------------
# One task set


class Progress:
    """A line on stderr every PROGRESS_EVERY_S seconds."""

    def __init__(self, name: str, total: int, quiet: bool) -> None:
        self.name, self.total, self.quiet = name, total, quiet
        self.last = time.perf_counter()

    def update(self, filled: int, rows: list[dict[str, Any]], force: bool = False) -> None:
        now = time.perf_counter()
        if self.quiet or (not force and now - self.last < PROGRESS_EVERY_S):
            return
        self.last = now
        passed = sum(r["passed"] for r in rows)
        pct = 100.0 * passed / len(rows) if rows else 0.0
        print(f"[{self.name}] filled {filled}/{self.total}, checked {len(rows)}, pass@1 {pct:.1f}%",
              file=sys.stderr, flush=True)


def evaluate_set(engine: Any, spec: TaskSetSpec, tasks: list[Task], pool: ThreadPoolExecutor, limits: Limits,
                 steps: int | None = None, batch_size: int = 1, empty_baseline: bool = False,
                 out: IO[str] | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    """Fill and check every task of one set; per-task rows in task order (also written to `out`)."""
    from engine.api import FillRequest

    rows: list[dict[str, Any]] = []
    pending: deque[tuple[Task, Any, str, float, Future, Future | None]] = deque()
    progress = Progress(spec.name, len(tasks), quiet)

    def drain(block: bool) -> None:
        while pending and (block or pending[0][4].done()):
            task, fill, completion, seconds, fut, empty_fut = pending.popleft()
            try:
                verdict = fut.result()
            except (OSError, subprocess.SubprocessError) as exc:  # the harness failed (no more processes...)
                print(f"[{spec.name}] {task.task_id}: check failed to run: {exc!r}", file=sys.stderr, flush=True)
                verdict = {"passed": False, "status": "harness-error", "error": repr(exc)[:300]}
            row = {
                "task_set": spec.name, "task_id": task.task_id, "source_id": task.source_id,
                "passed": verdict["passed"], "exact": exact_match(completion, task.reference),
                "exact_ws": exact_match_ws(completion, task.reference), "empty": is_empty(completion),
                "status": verdict["status"], "error": verdict["error"], "completion": completion, "fill": fill.text,
                "seconds": round(seconds, 4), "forward_passes": fill.forward_passes, "tokens": len(fill.tokens),
            }
            if empty_fut is not None:
                row["empty_fill_passed"] = empty_fut.result()["passed"]
            rows.append(row)
            if out is not None:
                out.write(json.dumps(row) + "\n")
            progress.update(len(rows) + len(pending), rows)

    for start in range(0, len(tasks), max(1, batch_size)):
        batch = tasks[start : start + max(1, batch_size)]
        requests = [FillRequest(t.prefix, t.suffix, spec.max_tokens, spec.single_line, steps) for t in batch]
        t0 = time.perf_counter()
        fills = engine.fill_batch(requests)
        seconds = time.perf_counter() - t0  # the wall time every request of the batch waited
        for task, fill in zip(batch, fills):
            completion = finish_fill(spec, fill.text)
            fut = pool.submit(check_task, task, completion, limits)
            empty_fut = pool.submit(check_task, task, "", limits) if empty_baseline else None
            pending.append((task, fill, completion, seconds, fut, empty_fut))
        drain(block=False)
    drain(block=True)
    if out is not None:
        out.flush()
    progress.update(len(rows), rows, force=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The command


def parse_budgets(specs: list[str]) -> dict[str, tuple[int, bool | None]]:
    """`SET=TOKENS[:line|:multi]`, comma-separated or repeated -> {set: (max_tokens, single_line or None)}."""
    out: dict[str, tuple[int, bool | None]] = {}
    for item in (s.strip() for spec in specs for s in spec.split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        tokens, _, mode = value.partition(":")
        if name not in TASK_SETS or not tokens.isdigit() or int(tokens) < 1 or mode not in ("", "line", "multi"):
            raise DatasetError(f"--budget {item}: expected SET=TOKENS[:line|:multi] with SET one of "
                               f"{', '.join(TASK_SETS)}")
        out[name] = (int(tokens), None if not mode else mode == "line")
    return out


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `codefill eval`."""
    defaults = ", ".join(f"{s.name}={s.max_tokens}{':line' if s.single_line else ''}" for s in TASK_SETS.values())
    p = argparse.ArgumentParser(prog="codefill eval", description=(
        "pass@1 (greedy) and exact match on HumanEval-Infilling and SAFIM (Python). Budgets come from the kind "
        "of each task set, never from the reference."))
    p.add_argument("--model", default=None, help="model directory (default: the built-in model)")
    p.add_argument("--device", type=device_name, default="auto", help=DEVICE_HELP)
    p.add_argument("--dtype", type=dtype_name, default="auto", help=DTYPE_HELP)
    p.add_argument("--steps", type=non_negative_int, default=0,
                   help="denoising steps (default 0: the engine's, from the span)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="on a GPU, run each step eagerly (no captured graphs)")
    p.add_argument("--benchmarks", default=None,
                   help="directory holding human-eval-infilling/ and safim/ (default: the nearest shared/benchmarks "
                        "above the repository)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASK_SETS),
                   help=f"comma-separated task sets from: {', '.join(TASK_SETS)} (default: %(default)s)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--limit", type=positive_int, default=0,
                     help="the first N tasks of each set, in file order (default: every task)")
    sel.add_argument("--sample", type=positive_int, default=0,
                     help="a seeded random sample of N tasks of each set (default: every task)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--budget", action="append", default=[], metavar="SET=TOKENS[:line|:multi]",
                   help=f"override a set's token budget and mode (defaults: {defaults})")
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="holes per engine call (default 1: the latency column is then per fill)")
    p.add_argument("--workers", type=positive_int, default=2,
                   help="child processes checking fills at once (default 2)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="seconds per child program")
    p.add_argument("--memory-mb", type=int_at_least(64), default=DEFAULT_MEMORY_MB,
                   help="address-space limit per child (at least 64)")
    p.add_argument("--empty-baseline", action="store_true",
                   help="also check the empty fill for every task (what predicting nothing would score)")
    p.add_argument("--out", type=output_file, default=None, help="per-task results as JSON lines")
    p.add_argument("--summary-json", type=output_file, default=None,
                   help="the summary (protocol and figures) as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                           capture_output=True, text=True, timeout=5, check=False)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name(engine: Any) -> str:
    dev = engine.runner.device
    if dev.type == "cuda":
        import torch

        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def describe_run(engine: Any, args: argparse.Namespace, specs: list[TaskSetSpec], benchmarks: Path) -> dict[str, Any]:
    """Everything that decides the figures, for the header and the summary."""
    c = engine.config
    params = engine.runner.model.cfg.num_parameters()
    if args.sample:
        selection = {"mode": "sample", "n": args.sample, "seed": args.seed}
    elif args.limit:
        selection = {"mode": "first", "n": args.limit}
    else:
        selection = {"mode": "all"}
    return {
        "model": str(engine.path), "model_parameters": params, "device": _device_name(engine),
        "dtype": engine.runner.precision,
        "decoding": {"greedy": True, "steps": args.steps or "engine default", "order": c.order,
                     "threshold": c.threshold, "cache": c.cache, "refresh_every": engine.refresh_every,
                     "tokens_per_step": engine.tokens_per_step,
                     "window": c.window, "max_span": c.max_span, "batch_size": args.batch_size,
                     "cuda_graphs": engine.runner.graphs is not None},
        "selection": selection,
        "execution": {"python": f"{sys.executable} -I", "timeout_s": args.timeout, "memory_mb": args.memory_mb,
                      "workers": args.workers},
        "protocol": {s.name: s.protocol() for s in specs},
        "benchmarks": str(benchmarks), "git_commit": _git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def print_header(run: dict[str, Any]) -> None:
    """The protocol, before any figure."""
    d, e, s = run["decoding"], run["execution"], run["selection"]
    sel = {"all": "all tasks", "first": f"the first {s.get('n')} tasks of each set (file order)",
           "sample": f"a seeded sample of {s.get('n')} tasks of each set (seed {s.get('seed')}, file order)"}
    print(f"codefill eval  model {run['model']} ({run['model_parameters'] / 1e6:.2f}M parameters)")
    print(f"  device {run['device']}, {run['dtype']}; greedy, steps {d['steps']}, order {d['order']}, "
          f"window {d['window']}, batch {d['batch_size']}")
    print(f"  tasks: {sel[s['mode']]}")
    print(f"  checks: child `python -I` in a temp dir, stdin closed, {e['timeout_s']:g} s, {e['memory_mb']} MiB, "
          f"{e['workers']} workers; SAFIM: each unit test on stdin, stdout compared as ExecEval does")
    print("  budgets come from the task set's kind, never from the reference:")
    for name, p in run["protocol"].items():
        extra = "; fill made whole lines (line break appended)" if p["whole_lines"] else ""
        print(f"    {name:<18} max_tokens {p['max_tokens']:>3}  single_line {p['single_line']!s:<5}{extra}")
    print(flush=True)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One line per task set."""
    baseline = any("empty_fill_pass_at_1" in r for r in results.values())
    head = f"{'task set':<18} {'n':>5} {'pass@1 %':>9} {'exact %':>8} {'exact-ws %':>10} {'empty %':>8}"
    head += f" {'latency ms':>11} {'passes':>7}" + (f" {'empty-fill pass %':>18}" if baseline else "")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        line = (f"{name:<18} {r['n']:>5} {r['pass_at_1']:>9.1f} {r['exact']:>8.1f} {r['exact_ws']:>10.1f} "
                f"{r['empty']:>8.1f} {r['median_latency_ms']:>11.0f} {r['median_forward_passes']:>7g}")
        if baseline:
            line += f" {r.get('empty_fill_pass_at_1', 0.0):>18.1f}"
        print(line)
    print("(latency and passes: medians per fill; latency is the wall time of the engine call)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `codefill eval`."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        names = [n.strip() for n in args.tasks.split(",") if n.strip()]
        unknown = [n for n in names if n not in TASK_SETS]
        if unknown or not names:
            raise DatasetError(f"--tasks: unknown task set {', '.join(unknown) or '(none)'}; "
                               f"choose from {', '.join(TASK_SETS)}")
        budgets = parse_budgets(args.budget)
        specs = [with_budget(TASK_SETS[n], *budgets.get(n, (None, None))) for n in names]
        bench = Path(args.benchmarks) if args.benchmarks else find_benchmarks()
        if bench is None or not bench.is_dir():
            raise DatasetError(f"benchmarks directory not found ({args.benchmarks or 'no shared/benchmarks above'}"
                               "); pass --benchmarks DIR")
        if bench.name in (HUMANEVAL_DIR, SAFIM_DIR):  # pointed at one benchmark's folder: use its parent
            bench = bench.parent
        full = [load_task_set(s.name, bench) for s in specs]
        task_lists = [select(tasks, args.limit, args.sample, args.seed) for tasks in full]
    except DatasetError as exc:
        print(f"codefill eval: {exc}", file=sys.stderr)
        return 2

    from engine.api import Engine

    settings: dict[str, Any] = {"threads": args.threads} if args.threads else {}
    if args.no_cuda_graphs:
        settings["cuda_graphs"] = False
    engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype, **settings)
    engine.fill("def f(x):\n    return ", "\n", max_tokens=8)  # warm-up, not timed
    run = describe_run(engine, args, specs, bench)
    print_header(run)

    limits = Limits(args.timeout, args.memory_mb)
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open_output(args.out)) if args.out else None
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="eval-check"))
        for spec, tasks, all_tasks in zip(specs, task_lists, full):
            rows = evaluate_set(engine, spec, tasks, pool, limits, args.steps or None, args.batch_size,
                                args.empty_baseline, out, args.quiet)
            results[spec.name] = {**summarize(rows), "of": len(all_tasks)}
    print_table(results)
    if args.summary_json:
        summary = {**run, "results": {n: {"protocol": run["protocol"][n], **r} for n, r in results.items()}}
        with open_output(args.summary_json) as f:
            f.write(json.dumps(summary, indent=1) + "\n")
    return 0
