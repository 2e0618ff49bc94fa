"""`codefill bench lsp`: request-to-answer latency of textDocument/inlineCompletion through the real server.

A pygls LanguageClient starts `python -m lsp_server` over stdio, initializes it with the debounce set to 0 (or
--debounce-ms: the wait is then part of every latency), waits for the model load to end ($/progress), opens a real
Python file (a standard library module) and, for each sample, makes a hole with an incremental didChange the way
typing would, asks for an inline completion at it, times the request to its answer, and undoes the edit. One-line
holes cut a statement mid-line; multi-line holes are a new blank line inside a block. Each hole is timed with the
server's prefetch setting on (the default) and off, in alternating order, each time right after an untimed request
at another hole: with prefetch on, that answer starts a fill of the next line ahead, which the timed request, made
at once, cancels, so "off" shows what the work done ahead costs the requests that follow. Every hole is a different
place in the file, so the server's type-through cache never answers for the engine.

"Next line" follows a user through one suggestion: a one-line hole is made and filled (not timed), the user reads
the ghost text for --pause-ms, accepts it and presses Enter (the new line indented as VS Code's Python rules do:
like the line, one level more after a colon, one less after return, raise, pass, break or continue), and the
request on the new line is timed. Samples alternate between the server's prefetch setting on and off (the fill of
the next line made ahead while a suggestion is on screen, lsp_server.ahead), so both see the same load.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsprotocol import types

from benchmarks.timing import summarize
from benchmarks.workload import REPO, code_text

URI = "file:///codefill-bench/argparse.py"
KINDS = {"one-line": ("line",), "multi-line": ("block",)}
_DEDENT_AFTER = re.compile(r"\s*(return|raise|pass|break|continue)\b")


@dataclass(frozen=True)
class HoleEdit:
    """An edit that makes a hole, the cursor in it, and the edit that undoes it."""

    kind: str  # one-line, multi-line
    make: tuple[int, int, int, int, str]  # start line, start char, end line, end char, new text
    undo: tuple[int, int, int, int, str]
    cursor: tuple[int, int]
    hole_kind: str  # what lsp_server.holes.find_hole calls it


def plan(text: str, per_kind: int) -> list[HoleEdit]:
    """per_kind holes of each kind spread over the middle of text, each checked with the server's own hole finder."""
    from lsp_server.holes import find_hole

    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    lo, hi = len(lines) // 6, len(lines) * 5 // 6
    one: list[HoleEdit] = []
    multi: list[HoleEdit] = []
    for i in range(lo, hi):
        line = lines[i]
        body = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if len(one) < per_kind * 4 and indent and len(body) > 24 and not body.startswith(("#", '"', "'")) \
                and ("=" in body or body.startswith("return ")):
            cut = len(indent) + (body.index("=") + 2 if "=" in body and not body.startswith("return ")
                                 else len("return "))
            if cut < len(line):
                edited = text[: starts[i] + cut] + text[starts[i] + len(line) :]
                hole = find_hole(edited, starts[i] + cut, "python")
                if hole.kind == "line":
                    one.append(HoleEdit("one-line", (i, cut, i, len(line), ""), (i, cut, i, cut, line[cut:]),
                                        (i, cut), hole.kind))
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        nxt_indent = nxt[: len(nxt) - len(nxt.lstrip())]
        if len(multi) < per_kind * 4 and indent and nxt.strip() and nxt_indent == indent and body \
                and not body.endswith((":", ",", "(", "[", "{", "\\")) and not body.startswith(("#", '"', "'")):
            insert = "\n" + indent
            edited = text[: starts[i] + len(line)] + insert + text[starts[i] + len(line) :]
            hole = find_hole(edited, starts[i] + len(line) + len(insert), "python")
            if hole.kind == "block":
                multi.append(HoleEdit("multi-line", (i, len(line), i, len(line), insert),
                                      (i, len(line), i + 1, len(indent), ""), (i + 1, len(indent)), hole.kind))
    if len(one) < per_kind or len(multi) < per_kind:
        raise ValueError(f"found only {len(one)} one-line and {len(multi)} multi-line holes")
    pick = lambda xs: [xs[j * len(xs) // per_kind] for j in range(per_kind)]  # noqa: E731
    return pick(one) + pick(multi)


def next_line_plan(text: str, count: int, avoid: set[int]) -> list[HoleEdit]:
    """count one-line holes (as plan makes them) on lines followed by a line of the same indentation, so that the
    line started after accepting the fill is inside the block; none on the lines in avoid."""
    lines = text.split("\n")
    found = []
    for e in plan(text, max(count * 3, 8))[: max(count * 3, 8)]:
        i = e.cursor[0]
        line, nxt = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        if i in avoid or not nxt.strip() or _indent(nxt) != _indent(line):
            continue
        found.append(HoleEdit("next-line", e.make, e.undo, e.cursor, e.hole_kind))
    if len(found) < count:
        raise ValueError(f"found only {len(found)} next-line holes")
    return found[:count]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def enter_indent(line: str, unit: str = "    ") -> str:
    """The indentation an editor gives the line started after this one (VS Code's Python rules)."""
    indent = _indent(line)
    if line.rstrip().endswith(":"):
        return indent + unit
    if _DEDENT_AFTER.match(line) and indent.endswith(unit):
        return indent[: -len(unit)]
    return indent


def _rng(a: int, b: int, c: int, d: int) -> types.Range:
    return types.Range(start=types.Position(line=a, character=b), end=types.Position(line=c, character=d))


class BenchClient:
    """A pygls LanguageClient with what a benchmark needs: progress, messages, edits, timed requests."""

    def __init__(self) -> None:
        from pygls.lsp.client import LanguageClient

        self.client = LanguageClient("codefill-bench", "0.1")
        self.loaded = asyncio.Event()
        self.load_message = ""
        self.messages: list[str] = []
        self.version = 1
        self.stderr = bytearray()
        self.stderr_task: asyncio.Task[None] | None = None

        @self.client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def create(params: Any) -> None:
            return None

        @self.client.feature(types.PROGRESS)
        def progress(params: Any) -> None:
            value = params.value
            kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
            if kind == "end":
                msg = value.get("message") if isinstance(value, dict) else getattr(value, "message", "")
                self.load_message = msg or ""
                self.loaded.set()

        @self.client.feature(types.WINDOW_LOG_MESSAGE)
        def log_message(params: types.LogMessageParams) -> None:
            if params.type in (types.MessageType.Error, types.MessageType.Warning):
                self.messages.append(params.message)

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def show_message(params: types.ShowMessageParams) -> None:
            self.messages.append(params.message)

    async def start(self, args: list[str], init_options: dict[str, Any]) -> None:
        """Start the server and initialize it."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        await self.client.start_io(sys.executable, "-m", "lsp_server", *args, env=env)
        # pygls pipes the server's stderr: read it, or a chatty server would block on a full pipe.
        server = getattr(self.client, "_server", None)
        if server is not None and server.stderr is not None:
            self.stderr_task = asyncio.create_task(self._drain(server.stderr))
        caps = types.ClientCapabilities(
            window=types.WindowClientCapabilities(work_done_progress=True),
            text_document=types.TextDocumentClientCapabilities(
                inline_completion=types.InlineCompletionClientCapabilities()),
        )
        await self.client.initialize_async(types.InitializeParams(
            capabilities=caps, initialization_options=init_options, root_uri=REPO.as_uri(), process_id=os.getpid()))
        self.client.initialized(types.InitializedParams())

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr += chunk
            del self.stderr[:-20000]  # keep the tail

    def open(self, text: str) -> None:
        """textDocument/didOpen."""
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=URI, language_id="python", version=self.version, text=text)))

    def change(self, edit: tuple[int, int, int, int, str]) -> None:
        """One incremental textDocument/didChange."""
        self.version += 1
        a, b, c, d, new = edit
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=self.version),
            content_changes=[types.TextDocumentContentChangePartial(range=_rng(a, b, c, d), text=new)]))

    def configure(self, settings: dict[str, Any]) -> None:
        """workspace/didChangeConfiguration (replaces the one before; initializationOptions stay under it)."""
        self.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codefill": settings}))

    async def inline(self, line: int, character: int) -> tuple[float, Any]:
        """Seconds from sending textDocument/inlineCompletion to its answer, and the answer."""
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
        t0 = time.perf_counter()
        answer = await self.client.text_document_inline_completion_async(params)
        return time.perf_counter() - t0, answer

    async def stop(self) -> None:
        """shutdown, exit, and make sure the process is gone."""
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), timeout=10)
            self.client.exit(None)
        except Exception:
            pass
        await self.client.stop()


async def _run(model: Path, device: str, steps: int, reps: int, warmup: int, load_timeout: float,
               pause_s: float = 0.4, debounce_ms: int = 0) -> dict[str, Any]:
    text = code_text()
    edits = plan(text, max(reps + warmup, 1))
    followed = next_line_plan(text, 2 * (reps + warmup), {e.cursor[0] for e in edits})
    init = {"debounceMs": debounce_ms, "modelPath": str(model), "device": device, "candidates": 1}
    if steps:
        init["steps"] = steps
    bench = BenchClient()
    started = time.perf_counter()
    await bench.start(["--model", str(model), "--device", device], init)
    try:
        await asyncio.wait_for(bench.loaded.wait(), timeout=load_timeout)
        load_s = time.perf_counter() - started
        if "fail" in bench.load_message:
            raise RuntimeError(f"the server could not load the model: {bench.messages or bench.load_message}")
        bench.open(text)
        rows = []
        for kind in KINDS:
            rows += await _kind_rows(bench, kind, [e for e in edits if e.kind == kind], warmup, reps)
        rows += await _next_lines(bench, text, followed, warmup, pause_s)
    except BaseException:
        sys.stderr.write(bench.stderr.decode(errors="replace")[-3000:])
        raise
    finally:
        await bench.stop()
    return {"rows": rows, "server_load_s": load_s, "server_messages": bench.messages[-10:]}


async def _kind_rows(bench: BenchClient, kind: str, mine: list[HoleEdit], warmup: int,
                     reps: int) -> list[dict[str, Any]]:
    """A kind's rows, prefetch on and off: each hole is timed under both settings, in alternating order, each time
    right after an untimed request at another hole (whose answer starts a fill ahead when prefetch is on)."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    answered = {True: 0, False: 0}
    samples: dict[bool, list[str]] = {True: [], False: []}
    holes = mine[: warmup + reps]
    for j, e in enumerate(holes):
        lead = mine[(j + len(holes) // 2) % len(mine)] if len(mine) > 1 else e
        for prefetch in ((True, False) if j % 2 == 0 else (False, True)):
            bench.configure({"prefetch": prefetch})
            bench.change(lead.make)
            await bench.inline(*lead.cursor)
            bench.change(lead.undo)
            bench.change(e.make)
            dt, answer = await bench.inline(*e.cursor)
            bench.change(e.undo)
            if j < warmup:
                continue
            items = getattr(answer, "items", answer) or []
            seconds[prefetch].append(dt)
            answered[prefetch] += bool(items)
            if items and len(samples[prefetch]) < 3:
                samples[prefetch].append(items[0].insert_text)
    bench.configure({})
    return [{"hole": kind + ("" if prefetch else ", prefetch off"), "server_hole_kind": mine[0].hole_kind,
             "prefetch": prefetch, **summarize(seconds[prefetch]).to_dict(), "answered": answered[prefetch],
             "samples": samples[prefetch]} for prefetch in (True, False)]


async def _next_lines(bench: BenchClient, text: str, edits: list[HoleEdit], warmup: int,
                      pause_s: float) -> list[dict[str, Any]]:
    """The "next line" rows: prefetch on and off, alternating (see the module's docstring)."""
    lines = text.split("\n")
    timed: dict[bool, list[float]] = {True: [], False: []}
    answered = {True: 0, False: 0}
    shown = {True: 0, False: 0}
    for j, e in enumerate(edits):
        prefetch = j % 2 == 0
        bench.configure({"prefetch": prefetch})
        i, cut = e.cursor
        original = lines[i]
        bench.change(e.make)
        _, answer = await bench.inline(i, cut)
        items = getattr(answer, "items", answer) or []
        item = items[0] if items else None
        if item is None or "\n" in item.insert_text or item.range.start.line != i or item.range.end.line != i:
            bench.change(e.undo)
            continue
        await asyncio.sleep(pause_s)  # the user reads the ghost text
        cut_line = original[:cut]
        accepted = cut_line[: item.range.start.character] + item.insert_text + cut_line[item.range.end.character:]
        bench.change((i, item.range.start.character, i, item.range.end.character, item.insert_text))
        indent = enter_indent(accepted)
        bench.change((i, len(accepted), i, len(accepted), "\n" + indent))
        dt, answer = await bench.inline(i + 1, len(indent))
        bench.change((i, 0, i + 1, len(indent), original))  # back to the file as it was
        if j < 2 * warmup:
            continue
        shown[prefetch] += 1
        timed[prefetch].append(dt)
        answered[prefetch] += bool(getattr(answer, "items", answer) or [])
    bench.configure({})
    rows = []
    for prefetch in (True, False):
        if not timed[prefetch]:
            continue
        rows.append({"hole": "next line" + ("" if prefetch else ", prefetch off"), "server_hole_kind": "block",
                     "prefetch": prefetch, **summarize(timed[prefetch]).to_dict(), "answered": answered[prefetch],
                     "pause_ms": round(pause_s * 1000), "first_fills_shown": shown[prefetch]})
    return rows


def run(model: Path, device: str = "cpu", steps: int = 0, reps: int = 10, warmup: int = 2,
        load_timeout: float = 300.0, pause_s: float = 0.4, debounce_ms: int = 0) -> dict[str, Any]:
    """Start the server, time the requests, stop it; JSON-ready results."""
    return asyncio.run(_run(model, device, steps, reps, warmup, load_timeout, pause_s, debounce_ms))


def table(result: dict[str, Any]) -> str:
    """The rows as fixed-width text."""
    lines = [f"server start and model load: {result['server_load_s']:.1f} s",
             f"{'hole':24}{'server kind':>12}{'runs':>6}{'median ms':>11}{'p95 ms':>10}{'answered':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['hole']:24}{r['server_hole_kind']:>12}{r['runs']:>6}{r['median_ms']:>11.1f}"
                     f"{r['p95_ms']:>10.1f}{r['answered']:>6}/{r['runs']}")
    for m in result.get("server_messages", []):
        lines.append(f"server said: {m}")
    return "\n".join(lines)
