"""The next line, filled ahead while a suggestion is on screen (lsp_server.ahead), end to end over stdio with the
scripted engine (tests/lsp_fixtures/fake_engine.py: `codefill-fake-by-line` gives the fill by the cursor's line).

The editor's sequence: ghost text on a blank line, the user accepts it and presses Enter, the editor asks again on
the new line. The second answer must come from the fill made ahead, without a new engine call, and anything else
the user does must cancel the work done ahead rather than wait behind it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import pytest_asyncio

from lsprotocol import types

from lsp_fixtures.harness import (
    FAKE_ENGINE,
    apply_text_edit,
    change_doc,
    inline,
    open_doc,
    raw_request,
    rng,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

DOC = ('# codefill-fake-by-line: {"2": "total = a + b", "3": "return total"}\n'
       "def add(a, b):\n"
       "    \n")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefetch") / "calls.jsonl"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(fake_log):
    c = await start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0"],
                           env={"CODEFILL_FAKE_LOG": str(fake_log)})
    yield c
    await stop_server(c)


def engine_calls(fake_log: Path) -> int:
    return len(fake_log.read_text().splitlines()) if fake_log.exists() else 0


def line_three_fills(fake_log: Path, since: int) -> int:
    """Engine calls since the since-th for the hole on line 3 (after `total = a + b` was accepted). Others are
    fine: the answer from the fill made ahead makes the line after it ahead in turn."""
    calls = [json.loads(line) for line in fake_log.read_text().splitlines()[since:]]
    return sum(c["prefix_tail"].endswith("total = a + b\n    ") for c in calls)


async def state(client) -> dict:
    s = await raw_request(client, "codefill/serverState", {})
    return s._asdict() if hasattr(s, "_asdict") else dict(s)


async def settled(client, timeout: float = 10.0) -> dict:
    """The server's state once no fill is being made ahead."""
    deadline = time.monotonic() + timeout
    while True:
        s = await state(client)
        if s["prefetches"] == 0 or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.02)


async def accept_and_enter(client, uri: str, text: str, item, version: int) -> tuple[str, int, int]:
    """Apply the suggestion and a line break with the line's indentation, as an editor does; the new text and the
    cursor's line and column."""
    accepted = apply_text_edit(text, item.range, item.insert_text)
    change_doc(client, uri, version, item.range, item.insert_text)
    line = item.range.start.line + item.insert_text.count("\n")
    last = accepted.split("\n")[line]
    indent = last[: len(last) - len(last.lstrip())]
    change_doc(client, uri, version + 1, rng((line, len(last)), (line, len(last))), "\n" + indent)
    after = apply_text_edit(accepted, rng((line, len(last)), (line, len(last))), "\n" + indent)
    return after, line + 1, len(indent)


async def test_the_next_line_is_answered_from_the_fill_made_ahead(client, fake_log) -> None:
    uri = "file:///prefetch/next.py"
    open_doc(client, uri, DOC)
    first = await inline(client, uri, 2, 4)
    assert first is not None and first.items[0].insert_text == "total = a + b"
    s = await settled(client)
    assert s["aheadFills"] >= 1
    calls = engine_calls(fake_log)
    text, line, col = await accept_and_enter(client, uri, DOC, first.items[0], 2)
    assert (line, col) == (3, 4)
    second = await inline(client, uri, line, col)
    assert second is not None and second.items[0].insert_text == "return total"
    assert apply_text_edit(text, second.items[0].range, second.items[0].insert_text).endswith(
        "    total = a + b\n    return total\n")
    assert line_three_fills(fake_log, calls) == 0  # no engine call for it: it was made ahead


async def test_a_request_for_the_predicted_state_waits_for_the_fill_under_way(client, fake_log) -> None:
    uri = "file:///prefetch/waits.py"
    text = DOC + "# codefill-fake-sleep: 0.6\n"
    open_doc(client, uri, text)
    first = await inline(client, uri, 2, 4)
    assert first is not None
    calls = engine_calls(fake_log) - 1  # the fill made ahead is under way now
    text, line, col = await accept_and_enter(client, uri, text, first.items[0], 2)
    second = await inline(client, uri, line, col)
    assert second is not None and second.items[0].insert_text == "return total"
    assert line_three_fills(fake_log, calls) == 1  # the one made ahead, not another


async def test_any_other_request_cancels_the_fill_made_ahead(client, fake_log) -> None:
    slow = "file:///prefetch/slow.py"
    open_doc(client, slow, DOC + "# codefill-fake-sleep: 1.5\n")
    first = await inline(client, slow, 2, 4)
    assert first is not None
    assert (await state(client))["prefetches"] == 1  # 1.5 s of work made ahead, just started
    other = "file:///prefetch/other.py"
    open_doc(client, other, '# codefill-fake: "1"\nx = \n')
    started = time.monotonic()
    answer = await inline(client, other, 1, 4)
    waited = time.monotonic() - started
    assert answer is not None and answer.items[0].insert_text == "1"
    assert waited < 1.0, f"the request waited {waited:.2f} s behind work done ahead"
    # The fill just shown in `other` makes its own next line ahead; the slow document's was cancelled.
    s = await settled(client)
    assert s["jobs"] == 0 and s["prefetches"] == 0


async def test_typing_through_the_suggestion_keeps_the_fill_made_ahead(client, fake_log) -> None:
    uri = "file:///prefetch/typing.py"
    text = DOC + "# codefill-fake-sleep: 1.0\n"
    open_doc(client, uri, text)
    first = await inline(client, uri, 2, 4)
    assert first is not None
    change_doc(client, uri, 2, rng((2, 4), (2, 4)), "tot")  # the user types the start of the suggestion
    hit = await inline(client, uri, 2, 7)
    assert hit is not None and hit.items[0].insert_text == "al = a + b"
    assert (await state(client))["prefetches"] == 1  # still under way, not cancelled and restarted
    s = await settled(client)
    assert s["aheadFills"] >= 1


async def test_prefetch_can_be_turned_off(client, fake_log) -> None:
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"codefill": {"prefetch": False}}))
    try:
        uri = "file:///prefetch/off.py"
        open_doc(client, uri, DOC)
        before = (await settled(client))["aheadFills"]
        calls = engine_calls(fake_log)
        first = await inline(client, uri, 2, 4)
        assert first is not None
        s = await settled(client)
        assert s["aheadFills"] == before and engine_calls(fake_log) == calls + 1
    finally:
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"codefill": {}}))
