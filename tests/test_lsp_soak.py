"""The language server under sustained and adversarial use, as an editor typing fast and a hostile client drive it:
the real server process (`python -m lsp_server`) with the built-in model on the CPU, spoken to over stdio by a raw
client that can send anything (bad frames, batches, odd ids, lone surrogates) and reads every answer.

What must hold: every request is answered (a fill, null, or a JSON-RPC error); an answer is for the text the request
was made on, never for an older one at a range that has moved; nothing piles up per keystroke, per request or per
document (pending futures, jobs, cached fills, threads, tasks); a big document costs per edit, not per line; and the
process exits when told to, fills in flight or not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.model_dir import BUILTIN_MODEL, MODELS_DIR

REPO = Path(__file__).resolve().parents[1]
BUILTIN = MODELS_DIR / BUILTIN_MODEL
CANCELLED = -32800  # RequestCancelled
INVALID_REQUEST = -32600
PARSE_ERROR = -32700

pytestmark = pytest.mark.skipif(not (BUILTIN / "config.json").exists(), reason="the built-in model is not there")


# -- a raw LSP client ---------------------------------------------------------------------------------------------


def frame(message: Any) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Server:
    """`python -m lsp_server` on pipes; a thread reads every message. Answers are kept by id (JSON-encoded, so that
    null and 1 and "1" stay apart); server-to-client requests are answered (workspace/applyEdit: applied)."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "lsp_server", "--device", "cpu", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, cwd=REPO)
        self.answers: dict[str, list[dict]] = {}
        self.notes: list[dict] = []
        self.cv = threading.Condition()
        self.write_lock = threading.Lock()
        self.last_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line.strip() == b"" and length is not None:
                    break
            msg = json.loads(out.read(length))
            if "method" in msg and "id" in msg:
                result = {"applied": True} if msg["method"] == "workspace/applyEdit" else None
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})
            with self.cv:
                if "method" in msg:
                    self.notes.append(msg)
                else:
                    self.answers.setdefault(json.dumps(msg.get("id")), []).append(msg)
                self.cv.notify_all()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        with self.write_lock:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def send(self, message: Any) -> None:
        self.write(frame(message))

    def request(self, method: str, params: Any) -> int:
        self.last_id += 1
        self.send({"jsonrpc": "2.0", "id": self.last_id, "method": method, "params": params})
        return self.last_id

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait(self, msg_id: Any, timeout: float = 60) -> dict:
        key = json.dumps(msg_id)
        with self.cv:
            if not self.cv.wait_for(lambda: key in self.answers, timeout):
                raise TimeoutError(f"no answer to request {msg_id!r}")
            return self.answers[key][0]

    def call(self, method: str, params: Any, timeout: float = 60) -> Any:
        answer = self.wait(self.request(method, params), timeout)
        assert "error" not in answer, answer
        return answer["result"]

    def initialize(self, encodings: list[str] | None = None, options: Any = None, ready: bool = True) -> dict:
        caps: dict[str, Any] = {"window": {"workDoneProgress": True}, "workspace": {"applyEdit": True}}
        if encodings:
            caps["general"] = {"positionEncodings": encodings}
        result = self.call("initialize", {"capabilities": caps, "initializationOptions": options})
        self.notify("initialized", {})
        if ready:
            self.initialize_wait_ready()
        return result

    def initialize_wait_ready(self) -> None:
        """Until the model load is reported done."""
        with self.cv:
            assert self.cv.wait_for(lambda: any(
                n["method"] == "$/progress" and n["params"]["value"]["kind"] == "end" for n in self.notes), 120)

    # LSP
    def open(self, uri: str, text: str, version: int = 1, language: str = "python") -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                               "version": version, "text": text}})

    def change(self, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": {"line": start[0], "character": start[1]},
                                          "end": {"line": end[0], "character": end[1]}}, "text": text}]})

    def close_doc(self, uri: str) -> None:
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    def inline(self, uri: str, line: int, character: int, invoked: bool = False) -> int:
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1 if invoked else 2}})

    def completion(self, uri: str, line: int, character: int, kind: int = 1) -> int:
        return self.request("textDocument/completion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": kind}})

    def cancel(self, msg_id: int) -> None:
        self.notify("$/cancelRequest", {"id": msg_id})

    def text(self, uri: str) -> dict | None:
        return self.call("codefill/documentText", {"uri": uri})

    def state(self) -> dict:
        return self.call("codefill/serverState", None)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> int | None:
        try:
            if self.proc.poll() is None:
                self.wait(self.request("shutdown", None), 30)
                self.notify("exit", None)
                return self.proc.wait(30)
            return self.proc.returncode
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server():
    """One server with the built-in model for the tests that leave it as they found it."""
    srv = Server("--debounce-ms", "0")
    srv.initialize()
    yield srv
    assert srv.stop() == 0


# -- positions, as a client counts them ---------------------------------------------------------------------------


def units(text: str, encoding: str = "utf-16") -> int:
    if encoding == "utf-8":
        return len(text.encode("utf-8", "surrogatepass"))
    if encoding == "utf-16":
        return len(text.encode("utf-16-le", "surrogatepass")) // 2
    return len(text)


def position(text: str, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
    start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset), units(text[start:offset], encoding)


def offset(text: str, line: int, character: int) -> int:
    """UTF-16 position -> offset (the client side; lines end at \\n only in these tests)."""
    start = 0
    for _ in range(line):
        start = text.index("\n", start) + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    i, count = start, 0
    while i < end and count < character:
        count += units(text[i])
        i += 1
    return i


def hole(marked: str) -> tuple[str, int]:
    """A text with | at the cursor -> (text, cursor offset)."""
    return marked.replace("|", ""), marked.index("|")


# -- an editor typing fast ----------------------------------------------------------------------------------------

START = ("import os\n\n\ndef total(values):\n    result = 0\n    for v in values:\n        result += v\n"
         "    return result\n\n\ndef mean(xs):\n    \n")
TYPED = "if not xs:\n        return 0\n    s = sum(xs)\n    print(s, len(xs))\n    return s / len(xs)\n    "
RIGHT_OF_CURSOR = re.compile(r"[ \t)\]}>\"'`;:,]*")  # what a fill's range may run through: auto-closed brackets


def test_a_typing_session_answers_every_request_for_the_text_it_was_made_on(server) -> None:
    """Keystrokes (with backspaces and auto-closed brackets) as incremental didChange, each followed by ghost text,
    often by completion items, the previous ghost text request cancelled as VS Code does; now and then a pause
    long enough for a fill. Every request is answered; every fill starts at its request's cursor and replaces
    only what sits right of the cursor on that line; the server's copy ends equal to the editor's; nothing is
    left behind."""
    uri = "file:///soak/typing.py"
    text, cursor, version = START, START.index("    \n", START.index("def mean")) + 4, 1
    server.open(uri, text)
    sent: list[tuple[int, str, str, int]] = []  # (id, feature, text, cursor offset) per request
    previous = None
    for i, key in enumerate(TYPED * 2):
        if i % 7 == 3 and text[cursor - 1] not in "\n ":  # a typo, fixed at once
            version += 1
            server.change(uri, version, position(text, cursor - 1), position(text, cursor), "")
            text, cursor = text[:cursor - 1] + text[cursor:], cursor - 1
        version += 1
        server.change(uri, version, position(text, cursor), position(text, cursor), key)
        text, cursor = text[:cursor] + key + text[cursor:], cursor + 1
        if key == "(":  # the editor closes the bracket
            version += 1
            server.change(uri, version, position(text, cursor), position(text, cursor), ")")
            text = text[:cursor] + ")" + text[cursor:]
        if previous is not None and i % 3:
            server.cancel(previous)
        previous = server.inline(uri, *position(text, cursor))
        sent.append((previous, "inline", text, cursor))
        if key.isalpha() and i % 2:
            sent.append((server.completion(uri, *position(text, cursor), kind=1 if i % 4 == 1 else 3),
                         "completion", text, cursor))
        if i % 25 == 24:
            server.wait(previous)  # a pause: the user reads the ghost text

    fills = cancelled = 0
    for msg_id, feature, at_text, at_cursor in sent:
        answer = server.wait(msg_id, 60)
        if "error" in answer:
            assert answer["error"]["code"] == CANCELLED, answer
            cancelled += 1
            continue
        result = answer["result"]
        items = [] if result is None else result["items"]
        for item in items:
            fills += 1
            rng = item["range"] if feature == "inline" else item["textEdit"]["range"]
            start = offset(at_text, rng["start"]["line"], rng["start"]["character"])
            end = offset(at_text, rng["end"]["line"], rng["end"]["character"])
            assert start == at_cursor, (feature, item, at_text[:at_cursor][-40:])
            assert RIGHT_OF_CURSOR.fullmatch(at_text[start:end]), (feature, item, at_text[start:end])
    assert fills > 0, (fills, cancelled)
    assert server.text(uri) == {"text": text, "version": version}
    server.close_doc(uri)
    state = server.state()
    assert state["jobs"] == 0 and state["cachedFills"] == 0 and state["pendingRequests"] == 0, state


def test_a_client_that_reuses_version_numbers_never_gets_a_fill_for_the_old_text(server) -> None:
    """The server told a fill's text apart from the current one by the client's version number alone: a didOpen
    of an open uri, or a didChange that does not raise the version, while a fill ran, and the fill made for the
    old text came back at the old range (here: into the comment that now holds line 1)."""
    before, cursor = hole("def add(a, b):\n    return |\n")
    after = "# header\n# more\n" + before
    line, character = position(before, cursor)

    control = "file:///soak/versions-control.py"
    server.open(control, before)
    assert server.wait(server.inline(control, line, character, invoked=True))["result"] is not None

    for n, move_on in enumerate([
        lambda uri: server.open(uri, after, version=1),  # didOpen again, same version
        lambda uri: server.change(uri, 1, (0, 0), (0, 0), "# header\n# more\n"),  # a version that does not rise
        lambda uri: server.change(uri, 0, (0, 0), (0, 0), "# header\n# more\n"),  # one that goes back
    ]):
        uri = f"file:///soak/versions-{n}.py"
        server.open(uri, before)
        request = server.inline(uri, line, character, invoked=True)  # three candidates: the fill takes a while
        move_on(uri)
        assert server.wait(request)["result"] is None, n
        assert server.text(uri)["text"] == after
        server.close_doc(uri)
    server.close_doc(control)


def test_a_path_with_a_space_is_served_from_the_editor_buffer(server, tmp_path) -> None:
    """pygls keys open documents by the unquoted uri, the server looked them up as sent: for any file whose path
    has a space (file:///a%20b.py; VS Code quotes ':' of a Windows drive too) it read the file on disk instead
    of the buffer, or found nothing."""
    path = tmp_path / "my project" / "a b.py"
    path.parent.mkdir()
    path.write_text("x = 1\n")  # on disk: not what the editor shows
    uri = path.as_uri()
    assert "%20" in uri
    buffer, cursor = hole("import os\n\n\ndef add(a, b):\n    return |\n")
    server.open(uri, buffer)
    assert server.text(uri)["text"] == buffer
    result = server.wait(server.inline(uri, *position(buffer, cursor), invoked=True))["result"]
    assert result is not None and result["items"][0]["range"]["start"] == {"line": 4, "character": 11}
    server.close_doc(uri)
    assert server.state()["cachedFills"] == 0  # closed under the same spelling


def test_a_thousand_requests_over_many_documents_leave_nothing_behind(server) -> None:
    """Documents opened, filled, edited, asked again, and closed (three in four while their fill runs): after a
    thousand requests no document, cached fill, job or pending future is left, and threads, tasks and memory
    are where they were. pygls kept a Future per didOpen/didChange/didClose (and per executeCommand) for good,
    and a fill that finished after its document closed left that document's text in the cache."""
    warm = "file:///soak/warm.py"
    server.open(warm, "def f(x):\n    return \n")
    server.wait(server.inline(warm, 1, 11))
    server.close_doc(warm)
    base, rss_before = server.state(), server.rss_kb()
    requests = 0
    pending: list[int] = []
    for d in range(100):
        uri = f"file:///soak/many/doc%20{d}.py"
        body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(d % 10))
        text = body + "def mean(xs):\n    return \n"
        line = text.count("\n") - 1
        server.open(uri, text)
        ids = [server.inline(uri, line, 11), server.completion(uri, line, 11)]
        server.cancel(ids[-1])
        ids.append(server.request("textDocument/codeAction", {
            "textDocument": {"uri": uri}, "range": {"start": {"line": line, "character": 4},
                                                    "end": {"line": line, "character": 10}},
            "context": {"diagnostics": []}}))
        server.change(uri, 2, (line, 11), (line, 11), "s")
        ids.append(server.inline(uri, line, 12))
        if d % 4:
            server.close_doc(uri)  # while its fill runs
        elif d % 20 == 0:
            ids.append(server.inline(uri, line, 12, invoked=True))
            ids.append(server.request("workspace/executeCommand", {"command": "codefill.fill", "arguments": [
                uri, {"start": {"line": line, "character": 11}, "end": {"line": line, "character": 12}}]}))
        else:
            ids.append(server.inline(uri, line, 12))  # the same again: the last fill, or the same job's answer
            ids.append(server.request("codefill/documentText", {"uri": uri}))
        ids.append(server.request("codefill/documentText", {"uri": uri}))
        ids.append(server.completion("file:///soak/never-opened.py", 0, 0))
        ids.append(server.inline("file:///soak/never-opened.py", 0, 0))
        ids.append(server.request("codefill/documentText", {"uri": "file:///soak/never-opened.py"}))
        ids.append(server.request("codefill/serverState", None))
        ids.append(server.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                         "position": {"line": 0, "character": 0}}))
        requests += len(ids)
        pending += ids
        if d % 10 == 9:
            for msg_id in pending:
                server.wait(msg_id, 120)
            pending = []
            for e in range(d - 9, d + 1):
                if e % 4 == 0:
                    server.close_doc(f"file:///soak/many/doc%20{e}.py")
    for msg_id in pending:
        server.wait(msg_id, 120)
    assert requests >= 1000
    deadline = time.monotonic() + 10  # fills made ahead of the last answers are nobody's request: let them end
    while True:
        state = server.state()
        if (state["engineQueue"] == 0 and state["prefetches"] == 0 and state["jobs"] == 0) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert state["aheadFills"] == 0 and state["prefetches"] == 0, state
    assert state["openDocuments"] == base["openDocuments"] == 0, state
    assert state["cachedFills"] == 0 and state["jobs"] == 0 and state["engineQueue"] == 0, state
    assert state["pendingRequests"] == 0, state
    assert state["tasks"] <= base["tasks"] + 1, (base, state)
    # The main thread, the engine's, and pygls's pool for reading stdin (it may start a few, up to its bound).
    assert state["threads"] <= 2 + min(32, (os.cpu_count() or 1) + 4), state
    assert state["fillsStarted"] > base["fillsStarted"]
    assert server.rss_kb() < rss_before + 80_000, (rss_before, server.rss_kb())  # a leak per request is far more


def test_a_fifo_or_the_servers_own_stdin_as_a_document_is_answered(server, tmp_path) -> None:
    """A document that is not open is read from disk: a FIFO (or file:///dev/stdin, the client's own pipe) was
    opened and read on the event loop, which blocked there for good, deaf to every later request."""
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)
    for uri in (fifo.as_uri(), "file:///dev/stdin"):
        assert server.wait(server.inline(uri, 0, 0), 20)["result"] is None
    assert server.text("file:///nothing.py") is None  # still listening


# -- what a document may hold -------------------------------------------------------------------------------------


def _astral_edits_and_fill(srv: Server, encoding: str) -> None:
    uri = f"file:///soak/astral-{encoding}.py"
    text = "s = '😀é𝔘'  # 😀😀\n"
    srv.open(uri, text)
    at = len("s = '😀")
    srv.change(uri, 2, position(text, at, encoding), position(text, at, encoding), "Z")
    text = text[:at] + "Z" + text[at:]
    a = text.index("𝔘")
    srv.change(uri, 3, position(text, a, encoding), position(text, a + 1, encoding), "Q😀")
    text = text[:a] + "Q😀" + text[a + 1:]
    added, cursor = hole("def add(a, b):\n    print('😀', |)\n")
    srv.change(uri, 4, position(text, len(text), encoding), position(text, len(text), encoding), added)
    text, cursor = text + added, len(text) + cursor
    assert srv.text(uri) == {"text": text, "version": 4}, encoding
    inside = position(text, text.index("😀"), encoding)[1] + 1  # a column inside the emoji's code units
    assert "error" not in srv.wait(srv.inline(uri, 0, inside)), encoding
    result = srv.wait(srv.inline(uri, *position(text, cursor, encoding), invoked=True))["result"]
    assert result is not None, encoding
    line, character = position(text, cursor, encoding)
    for item in result["items"]:  # from the cursor through the auto-closed ")"
        assert item["range"] == {"start": {"line": line, "character": character},
                                 "end": {"line": line, "character": character + 1}}, (encoding, item)
        assert item["insertText"].endswith(")")
    srv.close_doc(uri)


def test_edits_and_fills_around_astral_characters_in_each_position_encoding(server) -> None:
    """Emoji and other astral characters (a surrogate pair in UTF-16, four bytes in UTF-8, one unit in UTF-32)
    before the cursor, in edits and in a fill's range, with each position encoding negotiated at initialize."""
    others = {"utf-8": Server("--debounce-ms", "0"), "utf-32": Server("--debounce-ms", "0")}  # loading together
    try:
        for encoding, srv in others.items():
            assert srv.initialize([encoding], ready=False)["capabilities"]["positionEncoding"] == encoding
        _astral_edits_and_fill(server, "utf-16")
        for encoding, srv in others.items():
            srv.initialize_wait_ready()
            _astral_edits_and_fill(srv, encoding)
    finally:
        for srv in others.values():
            assert srv.stop() == 0


def test_nul_characters_and_lone_surrogates(server) -> None:
    """JSON may carry a lone surrogate (\\ud800) and NUL: the server keeps them, answers, and says them back."""
    uri = "file:///soak/odd.py"
    text = r"x = '\ud800\u0000'\ndef add(a, b):\n    return \n"  # JSON escapes, as a client may send them
    body = ('{"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {"uri": "%s", '
            '"languageId": "python", "version": 1, "text": "%s"}}}' % (uri, text))
    server.write(frame(body.encode()))
    server.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
        "textDocument": {"uri": uri, "version": 2},
        "contentChanges": [{"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                            "text": "\udc00\x00"}]}})
    expected = "\udc00\x00x = '\ud800\x00'\ndef add(a, b):\n    return \n"
    assert server.text(uri) == {"text": expected, "version": 2}
    for invoked in (False, True):
        answer = server.wait(server.inline(uri, 2, 11, invoked=invoked))
        assert "error" not in answer, answer
    assert "error" not in server.wait(server.completion(uri, 2, 11))
    server.close_doc(uri)


def test_a_big_document_costs_per_edit_not_per_line(server) -> None:
    """A 10 MB file of 1.7M lines: each keystroke made the server index every line of it (~1.4 s here, on the
    event loop, for every document), and each request did again. Forty keystrokes and a fill must now come well
    within the time two of them took; a 5 MB line and a 200k-line file get the same."""
    uri = "file:///soak/huge.py"
    text = "x = 1\n" * 1_700_000
    server.open(uri, text)
    line = 1_000_000
    started = time.monotonic()
    for k in range(40):
        server.change(uri, 2 + k, (line, 5 + k), (line, 5 + k), "+")
    ids = [server.inline(uri, line, 45), server.completion(uri, line, 45), server.inline(uri, line, 45, invoked=True)]
    for msg_id in ids:
        assert "error" not in server.wait(msg_id, 60)
    assert time.monotonic() - started < 40  # was ~60 s of indexing alone on this machine; now ~1 s
    got = server.text(uri)
    assert got["version"] == 41 and got["text"][line * 6:line * 6 + 46] == "x = 1" + "+" * 40 + "\n"
    server.close_doc(uri)

    for uri, text, at in [("file:///soak/long-line.py", "x = [" + "1, " * 1_700_000 + "]\n", (0, 5)),
                          ("file:///soak/many-lines.py", "def f(a):\n    return a\n\n" * 70_000, (139_999, 12))]:
        server.open(uri, text)
        for k in range(10):
            server.change(uri, 2 + k, (at[0], at[1] + k), (at[0], at[1] + k), "y")
        assert "error" not in server.wait(server.inline(uri, at[0], at[1] + 10), 60)
        assert server.text(uri)["version"] == 11
        server.close_doc(uri)


def test_edits_and_lookups_do_not_index_every_line() -> None:
    """The same, counted rather than timed: a keystroke in a plain-break document (\\n or \\r\\n) and the
    positions of a request are found without positions.line_starts (a pass over every line)."""
    from lsprotocol import types
    from pygls.workspace import Workspace

    from lsp_server import positions, server as server_module

    calls = []
    real = positions.line_starts

    def counting(text: str) -> list[int]:
        calls.append(len(text))
        return real(text)

    workspace = Workspace(None)
    server_module.use_lsp_lines(workspace)
    for text in ("a = 1\n" * 200_000, "a = 1\r\n" * 200_000):
        workspace.put_text_document(types.TextDocumentItem(uri="file:///big.py", language_id="python", version=1,
                                                           text=text))
        server_module.line_starts, positions.line_starts = counting, counting
        try:
            for k in range(20):
                workspace.update_text_document(
                    types.VersionedTextDocumentIdentifier(uri="file:///big.py", version=2 + k),
                    types.TextDocumentContentChangePartial(range=types.Range(
                        types.Position(150_000, 2 + k), types.Position(150_000, 2 + k)), text="é"))
            doc = workspace.get_text_document("file:///big.py")
            at = positions.offset_at(doc.source, positions.Pos(150_000, 22))
            assert positions.position_at(doc.source, at) == positions.Pos(150_000, 22)
            assert positions.line_count(doc.source) == 200_001
        finally:
            server_module.line_starts, positions.line_starts = real, real
        assert calls == []
        start = 150_000 * (len(text) // 200_000)
        assert doc.source[start:start + 25] == "a " + "é" * 20 + "= 1"


# -- a hostile client ---------------------------------------------------------------------------------------------


def test_malformed_json_rpc_gets_proper_errors_and_the_server_lives() -> None:
    srv = Server("--debounce-ms", "0")
    try:
        srv.initialize(ready=False)
        doc = {"uri": "file:///x.py"}
        srv.send([{"jsonrpc": "2.0", "id": 101, "method": "codefill/documentText", "params": doc},
                  {"jsonrpc": "2.0", "id": "102", "method": "shutdown"},
                  {"jsonrpc": "2.0", "method": "initialized", "params": {}}])
        srv.send({"jsonrpc": "2.0", "id": None, "method": "codefill/documentText", "params": doc})
        srv.send({"jsonrpc": "2.0", "id": {"a": 1}, "method": "codefill/documentText", "params": doc})
        srv.send({"jsonrpc": "2.0", "id": True, "method": "shutdown"})
        srv.send({"id": 103, "method": "codefill/documentText", "params": doc})  # no "jsonrpc"
        srv.send({"jsonrpc": "1.0", "id": 104, "method": "codefill/documentText", "params": doc})
        srv.send({"jsonrpc": "2.0", "id": 105, "method": 5})
        srv.send({"jsonrpc": "2.0", "id": 106, "method": "codefill/noSuchMethod", "params": {}})
        srv.send({"jsonrpc": "2.0", "id": 107, "method": "textDocument/inlineCompletion", "params": {}})
        srv.send({"jsonrpc": "2.0", "id": 108, "method": "codefill/documentText",  # params that look like a message
                  "params": {"uri": "file:///x.py", "jsonrpc": "2.0", "id": 999, "method": "textDocument/hover"}})
        srv.send({"jsonrpc": "2.0", "method": "codefill/noSuchNotification", "params": {}})
        srv.send({"jsonrpc": "2.0", "method": "$/noSuchNotification", "params": {}})
        srv.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 123456}})
        srv.send({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
            "textDocument": {"uri": "file:///never-opened.py", "version": 2}, "contentChanges": [{"text": "x"}]}})
        expected = {101: INVALID_REQUEST, "102": INVALID_REQUEST, 103: INVALID_REQUEST, 104: INVALID_REQUEST,
                    105: INVALID_REQUEST, 106: -32601, 107: -32602}
        for msg_id, code in expected.items():
            assert srv.wait(msg_id, 30)["error"]["code"] == code, (msg_id, srv.answers)
        assert srv.wait(108, 30)["result"] is None
        assert json.dumps(999) not in srv.answers  # not a request of its own
        nulls = srv.answers[json.dumps(None)]
        assert len(nulls) == 3 and all(a["error"]["code"] == INVALID_REQUEST for a in nulls), nulls

        for broken in (b"Content-Length: 99999999999999999999\r\n\r\n{}",  # OverflowError: the server died
                       b"Content-Length: 9999999999999\r\n\r\n{}",  # 10 TB, allocated before reading
                       frame(b'{"jsonrpc": "2.0", "id": 200, "method": '),  # cut short
                       frame(b"\xff\xfe not even utf-8"),
                       frame(b"[" * 100_000 + b"]" * 100_000),  # nested too deep
                       frame(b"[]"), frame(b"42"), frame(b'"text"'), frame(b"null"), frame(b"{}")):
            before = len(srv.answers.get(json.dumps(None), []))
            srv.write(broken)
            assert srv.text("file:///alive.py") is None, broken[:40]  # the next message is read and answered
            with srv.cv:
                nulls = srv.answers.get(json.dumps(None), [])
                assert len(nulls) == before + 1, (broken[:40], nulls[before:])
                assert nulls[-1]["error"]["code"] in (PARSE_ERROR, INVALID_REQUEST)
        srv.open("file:///later.py", "x = 1\n")
        assert srv.text("file:///later.py") == {"text": "x = 1\n", "version": 1}
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0


def _fills_in_flight(srv: Server) -> list[int]:
    """Slow fills (400 denoising steps, three candidates) in four documents."""
    srv.initialize_wait_ready()
    ids = []
    for d in range(4):
        uri = f"file:///soak/flight-{d}.py"
        srv.open(uri, "def mean(xs):\n    \n")
        ids.append(srv.inline(uri, 1, 4, invoked=True))
    time.sleep(0.5)  # the first is in the engine
    return ids


def test_exit_or_shutdown_with_fills_in_flight_ends_the_process() -> None:
    """exit without shutdown while fills ran: the answers to the requests in flight went to a closed stdout, the
    failure was reported as a parse error, whose answer failed again, whose log message failed again...: the
    process spun on one core and never exited. Now it exits (1: no shutdown first) with its fills cancelled.
    With shutdown first, every request in flight is answered, later ones are refused, and exit is 0."""
    exiting, shutting = Server("--debounce-ms", "0"), Server("--debounce-ms", "0")  # loading together
    try:
        for srv in (exiting, shutting):
            srv.initialize(options={"steps": 400}, ready=False)
        _fills_in_flight(exiting)
        exiting.notify("exit", None)
        in_flight = _fills_in_flight(shutting)
        shutting.wait(shutting.request("shutdown", None), 30)
        for msg_id in in_flight:  # cancelled, or null: answered either way
            answer = shutting.wait(msg_id, 30)
            assert answer.get("result") is None and answer.get("error", {"code": CANCELLED})["code"] == CANCELLED
        assert shutting.wait(shutting.inline("file:///soak/flight-0.py", 1, 4))["error"]["code"] == INVALID_REQUEST
        shutting.notify("exit", None)
        assert shutting.proc.wait(30) == 0
        assert exiting.proc.wait(30) == 1
    finally:
        for srv in (exiting, shutting):
            if srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait()
