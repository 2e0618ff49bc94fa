"""Random incremental edits and requests at random positions, against one real server process.

After every edit the server's copy of the document (the `codefill/documentText` request) must equal the client's,
computed here independently of the server's code: positions are LSP's (lines end at \\n, \\r\\n or \\r; columns
count UTF-16 code units). Requests anywhere, even past the end, are answered without an error.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsp_fixtures.harness import FAKE_ENGINE, change_doc, open_doc, raw_request, start_server, stop_server
from lsprotocol import types

MARKER = '# codefill-fake: "vé = (1, 😋)\\n  w"\n'  # the fake engine's fill, wherever it lands (edits keep off it)
PIECES = ["a", "b", "x", " ", "    ", "\t", "\n", "\r\n", "\r", "é", "ü", "中", "😋", "𝔘", "def f(x):", "()", "\"",
          "\u2028", "\u2029", "\x0c", "\x0b", "\x85", "\x1c"]
text_pieces = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


def lsp_line_starts(text: str) -> list[int]:
    """Code point offsets at which LSP lines start: breaks are \\r\\n, \\r and \\n, nothing else."""
    starts = [0]
    i = 0
    while i < len(text):
        if text[i] == "\r" and text[i + 1: i + 2] == "\n":
            starts.append(i + 2)
            i += 2
            continue
        if text[i] in "\r\n":
            starts.append(i + 1)
        i += 1
    return starts


def position(text: str, offset: int) -> types.Position:
    """The LSP position of a code point offset."""
    starts = lsp_line_starts(text)
    line = max(i for i, s in enumerate(starts) if s <= offset)
    column = sum(2 if ord(c) > 0xFFFF else 1 for c in text[starts[line]:offset])
    return types.Position(line=line, character=column)


def no_split(text: str, offset: int) -> int:
    """An offset moved off the middle of a \\r\\n (not a position in LSP)."""
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        return offset - 1
    return offset


def get(obj, key: str):
    """A field of a raw answer (pygls gives JSON objects as namedtuple-like Objects)."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


class Session:
    """One server process, driven from synchronous hypothesis examples through a private event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.run(start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0"]))
        self.uris = (f"file:///prop/doc{n}.py" for n in itertools.count())

    def run(self, coro):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout=30))

    def server_text(self, uri: str) -> str:
        return get(self.run(raw_request(self.client, "codefill/documentText", {"uri": uri})), "text")

    def close(self) -> None:
        self.run(stop_server(self.client))
        self.loop.close()


@pytest.fixture(scope="module")
def session():
    s = Session()
    yield s
    s.close()


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=text_pieces, data=st.data())
def test_the_server_text_always_equals_the_client_text(session, initial: str, data: st.DataObject) -> None:
    client = session.client
    uri = next(session.uris)
    text = MARKER + initial
    open_doc(client, uri, text)
    assert session.server_text(uri) == text
    for version in range(2, 2 + data.draw(st.integers(1, 8), label="edits")):
        a = no_split(text, data.draw(st.integers(len(MARKER), len(text)), label="start"))
        b = no_split(text, data.draw(st.integers(a, len(text)), label="end"))
        insert = data.draw(text_pieces, label="insert")
        change_doc(client, uri, version, types.Range(start=position(text, a), end=position(text, b)), insert)
        text = text[:a] + insert + text[b:]
        assert session.server_text(uri) == text, f"after replacing {a}:{b} with {insert!r}"

        line = data.draw(st.integers(0, len(lsp_line_starts(text)) + 2), label="line")
        character = data.draw(st.integers(0, 120), label="character")
        method = data.draw(st.sampled_from(["textDocument/inlineCompletion", "textDocument/completion"]))
        params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                  "context": {"triggerKind": 1}}
        result = session.run(raw_request(client, method, params))  # an error answer raises here
        for item in (get(result, "items") or []) if result is not None else []:
            rng = get(item, "range") or get(get(item, "textEdit") or {}, "range")
            if rng is not None:
                start, end = get(get(rng, "start"), "line"), get(get(rng, "end"), "line")
                assert start <= end < len(lsp_line_starts(text))


def test_form_feed_and_line_separator_do_not_break_lines(session) -> None:
    """A regression the property test found: pygls split lines at \\x0c and \\u2028 too."""
    uri = next(session.uris)
    text = "a = 1\x0c b = 2\u2028c = 3\nd = 4\n"
    open_doc(session.client, uri, text)
    change_doc(session.client, uri, 2, types.Range(start=types.Position(line=0, character=11),
                                                   end=types.Position(line=0, character=12)), "X")
    assert session.server_text(uri) == "a = 1\x0c b = X\u2028c = 3\nd = 4\n"


@pytest.mark.parametrize("text, line, character, expected", [
    ("abc\ndef\n", 0, 4, "abcZ\ndef\n"),  # pygls put it after the line break: "abc\nZdef\n"
    ("abc\r\ndef\n", 0, 4, "abcZ\r\ndef\n"),  # ... or inside the \r\n, adding a line
    ("abc", 0, 9, "abcZ"),
    ("abc\n", 5, 0, "abc\nZ"),  # a line past the end: the end of the document
])
def test_an_edit_past_the_end_of_a_line_lands_at_its_end(session, text: str, line: int, character: int,
                                                       expected: str) -> None:
    """LSP: a column past a line's length means the line's end (found by the audit of session 7)."""
    uri = next(session.uris)
    open_doc(session.client, uri, text)
    pos = types.Position(line=line, character=character)
    change_doc(session.client, uri, 2, types.Range(start=pos, end=pos), "Z")
    assert session.server_text(uri) == expected
