"""A scripted client types 20 keystrokes a second at the real server with the real engine (the tiny checkpoint):
one didChange and one inlineCompletion request per keystroke, with no debounce, so that every request can reach
the engine and only cancellation keeps the queue short.

Every request must be answered (null counts), the last one soon after the typing stops (no backlog), the server's
memory must stay flat, and a fill right after must take about as long as one before. The typing lasts 10 s
(4 s through a shared engine); CODEFILL_LONG_TESTS=1 makes both 60 s.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lsp_fixtures.harness import change_doc, inline, open_doc, rng, start_server, stop_server
from lsprotocol import types

from engine import wire
from engine.wire import Address

LONG = os.environ.get("CODEFILL_LONG_TESTS") == "1"
KEYS_PER_SECOND = 20
BACKLOG_BOUND_S = 3.0  # the last request is answered this soon after the last keystroke
RSS_SLACK_KB = 60_000  # plus 20%: allocator noise, not a leak (a leak per keystroke would be far more)

TEXT = ("def total(values):\n    result = 0\n    for v in values:\n        result += v\n    return result\n\n\n"
        "def mean(xs):\n    \n")
TYPED = "return sum(xs) / max(len(xs), 1)  # moyenne é\n    "


def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def latency(client, uri: str, line: int, character: int, n: int = 3) -> float:
    """Median seconds of n requests at a position, one after another."""
    times = []
    for _ in range(n):
        started = time.monotonic()
        await inline(client, uri, line, character)
        times.append(time.monotonic() - started)
    return statistics.median(times)


async def type_at(client, seconds: float, pids: list[int]) -> None:
    uri = "file:///load.py"
    open_doc(client, uri, TEXT)
    line, character, version = 8, 4, 1
    before = await latency(client, uri, line, character)  # also warms the engine up
    rss_before = {pid: rss_kb(pid) for pid in pids}

    answered: dict[int, float] = {}
    requests: list[asyncio.Future] = []
    start = time.monotonic()
    n = int(seconds * KEYS_PER_SECOND)
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / KEYS_PER_SECOND - time.monotonic()))
        key = TYPED[i % len(TYPED)]
        version += 1
        change_doc(client, uri, version, rng((line, character), (line, character)), key)
        if key == "\n":
            line, character = line + 1, 0
        else:
            character += 1
        request = asyncio.ensure_future(inline(client, uri, line, character))
        request.add_done_callback(lambda _r, i=i: answered.setdefault(i, time.monotonic()))
        requests.append(request)
    stopped = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), timeout=60)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(r is None or isinstance(r, types.InlineCompletionList) for r in results)
    assert len(answered) == n
    assert max(answered.values()) - stopped < BACKLOG_BOUND_S, "a backlog built up"
    assert stopped - start < seconds * 1.5, "the client could not keep the pace"

    after = await latency(client, uri, line, character)
    assert after <= 3 * before + 0.3, (before, after)
    for pid, kb in rss_before.items():
        assert rss_kb(pid) <= kb * 1.2 + RSS_SLACK_KB, (pid, kb, rss_kb(pid))
    filled = sum(1 for r in results if r is not None)
    print(f"{n} keystrokes in {stopped - start:.1f} s: {filled} fills, the rest null; last answer "
          f"{max(answered.values()) - stopped:.2f} s after the typing; median latency {before * 1000:.0f} ms before, "
          f"{after * 1000:.0f} ms after; RSS " + ", ".join(f"{rss_before[p] // 1024}->{rss_kb(p) // 1024} MB"
                                                          for p in pids))


async def test_typing_at_20_keys_a_second_in_process(tiny_model_dir) -> None:
    client = await start_server(["--model", str(tiny_model_dir), "--device", "cpu", "--debounce-ms", "0"])
    try:
        await type_at(client, 60 if LONG else 10, [client._server.pid])
    finally:
        await stop_server(client)


async def test_typing_at_20_keys_a_second_through_a_shared_engine(tiny_model_dir) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp"))
    client = await start_server(["--engine", "auto", "--model", str(tiny_model_dir), "--device", "cpu",
                                 "--debounce-ms", "0"], env={"XDG_RUNTIME_DIR": str(runtime)})
    try:
        (sock,) = (runtime / "codefill").glob("*.sock")
        engine_pid = wire.request_once(Address("unix", path=str(sock)), "health")["pid"]
        await type_at(client, 60 if LONG else 4, [client._server.pid, engine_pid])
        health = wire.request_once(Address("unix", path=str(sock)), "health")
        assert health["pid"] == engine_pid and health["requests_served"] > 0  # the typing reached the engine
    finally:
        await stop_server(client)
        for sock in (runtime / "codefill").glob("*.sock"):
            try:
                wire.request_once(Address("unix", path=str(sock)), "shutdown", timeout=5)
            except Exception:
                pass
        shutil.rmtree(runtime, ignore_errors=True)
