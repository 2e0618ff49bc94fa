"""The server's own behaviour end to end, over stdio, with a scripted engine (tests/lsp_fixtures/fake_engine.py).

The real server process (`python -m lsp_server`) is driven by pytest-lsp's LanguageClient. The
fake engine writes what a `codefill-fake:` marker in the document says, so that ranges, de-dup,
staleness and candidates can be asserted exactly; tests/test_lsp_engine.py runs the real engine.
"""

from __future__ import annotations

import json
import asyncio
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from lsp_server import languages
from lsp_fixtures.harness import (
    FAKE_ENGINE,
    apply_text_edit,
    change_doc,
    fill_command,
    inline,
    open_doc,
    pos,
    rng,
    raw_request,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fake") / "calls.jsonl"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(fake_log):
    c = await start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0"],
                           env={"CODEFILL_FAKE_LOG": str(fake_log)})
    yield c
    await stop_server(c)


def engine_calls(fake_log: Path, prefix_end: str = "") -> int:
    """Calls the fake engine logged, or only those whose prefix ends with prefix_end (a fill made ahead of the
    next line, lsp_server.ahead, may land at any time and is not one of them)."""
    if not fake_log.exists():
        return 0
    calls = [json.loads(line) for line in fake_log.read_text().splitlines()]
    return sum(c["prefix_tail"].endswith(prefix_end) for c in calls)


def parses_no_worse(language_id: str, before: str, after: str) -> bool:
    spec = languages.spec_for(language_id)
    return languages.count_syntax_errors(spec, after) <= languages.count_syntax_errors(spec, before)


# (languageId, document with `|` at the cursor and a marker saying what the engine writes, expected document after)
HOLES = [
    ("python", '# codefill-fake: " a + b"\ndef add(a, b):\n    return|\n',
     '# codefill-fake: " a + b"\ndef add(a, b):\n    return a + b\n'),
    ("python", '# codefill-fake: "a, b)"\nx = max(|)\n', '# codefill-fake: "a, b)"\nx = max(a, b)\n'),
    ("python", '# codefill-fake: "total = a + b\\n    return total"\ndef add(a, b):\n    |\n',
     '# codefill-fake: "total = a + b\\n    return total"\ndef add(a, b):\n    total = a + b\n    return total\n'),
    ("python", '# codefill-fake: "return a"\ndef f(a):|\n\nx = 1\n', '# codefill-fake: "return a"\ndef f(a):\n    return a\n\nx = 1\n'),
    ("javascript", '// codefill-fake: "return a * 2;"\nfunction f(a) {|}\n',
     '// codefill-fake: "return a * 2;"\nfunction f(a) {\n  return a * 2;\n}\n'),
    ("typescriptreact", '// codefill-fake: "0);"\nfunction A() {\n  const [v, setV] = useState(|);\n}\n',
     '// codefill-fake: "0);"\nfunction A() {\n  const [v, setV] = useState(0);\n}\n'),
    ("go", '// codefill-fake: "return a + 1\\n}"\npackage main\n\nfunc f(a int) int {\n\t|\n}\n',
     '// codefill-fake: "return a + 1\\n}"\npackage main\n\nfunc f(a int) int {\n\treturn a + 1\n}\n'),
    ("rust", '// codefill-fake: "1, 2, 3];"\nfn f() {\n    let v = vec![|];\n}\n',
     '// codefill-fake: "1, 2, 3];"\nfn f() {\n    let v = vec![1, 2, 3];\n}\n'),
    ("java", '// codefill-fake: "\\"hi\\");"\nclass A {\n    void f() {\n        System.out.println(|);\n    }\n}\n',
     '// codefill-fake: "\\"hi\\");"\nclass A {\n    void f() {\n        System.out.println("hi");\n    }\n}\n'),
    ("c", '// codefill-fake: "return a;"\nint f(int a) {\n    |\n}\n', '// codefill-fake: "return a;"\nint f(int a) {\n    return a;\n}\n'),
    ("cpp", '// codefill-fake: "v.size();"\nint f(std::vector<int> v) {\n    return |\n}\n',
     '// codefill-fake: "v.size();"\nint f(std::vector<int> v) {\n    return v.size();\n}\n'),
]


@pytest.mark.parametrize("language_id, marked, expected", HOLES)
async def test_inline_completion_fills_each_kind_of_hole(client, language_id, marked, expected) -> None:
    text = marked.replace("|", "")
    before = text[: marked.index("|")]
    line, character = before.count("\n"), len(before.rsplit("\n", 1)[-1])
    uri = f"file:///holes/{language_id}/{abs(hash(marked))}.src"
    open_doc(client, uri, text, language_id)
    result = await inline(client, uri, line, character)
    assert result is not None and len(result.items) == 1
    item = result.items[0]
    assert item.range is not None and item.range.start == pos(line, character)
    after = apply_text_edit(text, item.range, item.insert_text)
    assert after == expected
    assert parses_no_worse(language_id, text, after)


async def test_server_capabilities(client) -> None:
    caps = client.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.code_action_provider is not None
    assert "codefill.fill" in caps.execute_command_provider.commands
    sync = caps.text_document_sync
    assert getattr(sync, "change", sync) == types.TextDocumentSyncKind.Incremental


async def test_positions_are_utf16_on_non_ascii_lines(client) -> None:
    uri = "file:///unicode.py"
    text = '# codefill-fake: "name)"\nprint("héllo 😋 wörld", )\n'
    open_doc(client, uri, text)
    character = len('print("héllo 😋 wörld", '.encode("utf-16-le")) // 2  # 😋 counts two
    result = await inline(client, uri, 1, character)
    assert result is not None
    item = result.items[0]
    assert (item.range.start, item.range.end) == (pos(1, character), pos(1, character + 1))
    assert apply_text_edit(text, item.range, item.insert_text).endswith('print("héllo 😋 wörld", name)\n')


@pytest.mark.parametrize("uri", ["vscode-notebook-cell:/home/u/analysis.ipynb#W2sZmlsZQ%3D%3D", "untitled:Untitled-1"])
async def test_documents_that_are_not_files_are_filled_from_the_editor(client, uri) -> None:
    """Jupyter cells in VS Code and unsaved buffers: open in the editor, with no file on disk behind them."""
    text = '# codefill-fake: "x * 2"\ndef double(x):\n    return \n'
    open_doc(client, uri, text)
    result = await inline(client, uri, 2, 11)
    assert result is not None and result.items[0].insert_text == "x * 2"
    client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri)))
    assert await inline(client, uri, 2, 11) is None  # closed: nothing on disk to read instead


async def test_completion_fallback_carries_the_fill_as_a_text_edit(client) -> None:
    uri = "file:///completion.py"
    text = '# codefill-fake: "a, b)"\nx = max(|)\n'.replace("|", "")
    open_doc(client, uri, text)
    result = await client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=pos(1, 8))
    )
    items = result.items if isinstance(result, types.CompletionList) else result
    assert len(items) == 1
    edit = items[0].text_edit
    assert edit.range == rng((1, 8), (1, 9))
    assert apply_text_edit(text, edit.range, edit.new_text).endswith("x = max(a, b)\n")


async def test_completion_without_a_fill_is_an_empty_list(client) -> None:
    uri = "file:///nothing.py"
    open_doc(client, uri, "x = 1\n")  # no marker: the fake writes nothing
    result = await client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=pos(0, 5))
    )
    items = result.items if isinstance(result, types.CompletionList) else result
    assert list(items) == []


async def test_fill_selection_by_code_action_and_command(client) -> None:
    uri = "file:///selection.py"
    text = '# codefill-fake: "a * b"\ndef mul(a, b):\n    return a + b\n'
    open_doc(client, uri, text)
    selection = rng((2, 11), (2, 16))
    # Raw: lsprotocol's client-side hook mistakes a CodeAction that carries a command for a bare Command.
    actions = await raw_request(client, "textDocument/codeAction", {
        "textDocument": {"uri": uri}, "context": {"diagnostics": []},
        "range": {"start": {"line": 2, "character": 11}, "end": {"line": 2, "character": 16}},
    })
    assert len(actions) == 1 and actions[0]["title"] == "Fill selection"
    assert actions[0]["kind"] == "refactor.rewrite"
    for only, offered in ((["quickfix"], 0), (["refactor"], 1), (["refactor.rewrite"], 1), (["refactor.extract"], 0)):
        asked = await raw_request(client, "textDocument/codeAction", {
            "textDocument": {"uri": uri}, "context": {"diagnostics": [], "only": only},
            "range": {"start": {"line": 2, "character": 11}, "end": {"line": 2, "character": 16}},
        })
        assert len(asked) == offered, (only, asked)  # LSP: context.only filters the kinds of action
    unknown = await raw_request(client, "textDocument/codeAction", {
        "textDocument": {"uri": "file:///no/such/file.py"}, "context": {"diagnostics": []},
        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 3}},
    })
    assert unknown == []  # nothing to fill: neither open nor on disk
    command = types.Command(**actions[0]["command"])
    assert command.command == "codefill.fill"
    client.applied_edits.clear()
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=command.command, arguments=command.arguments)
    )
    assert result["applied"] is True
    assert len(client.applied_edits) == 1
    (uri_edited, edits), = client.applied_edits[0].edit.changes.items()
    assert uri_edited == uri and len(edits) == 1
    assert edits[0].range == selection
    after = apply_text_edit(text, edits[0].range, edits[0].new_text)
    assert after.endswith("def mul(a, b):\n    return a * b\n")


async def test_fill_command_without_apply_edit_returns_the_edit() -> None:
    """A client that cannot apply edits is not sent workspace/applyEdit (it might never answer); it gets the fill
    and its range in the command's result instead."""
    caps = types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True),
                                    workspace=types.WorkspaceClientCapabilities(apply_edit=False))
    c = await start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0"], capabilities=caps)
    try:
        uri = "file:///noapply.py"
        open_doc(c, uri, '# codefill-fake: "a * b"\ndef mul(a, b):\n    return a + b\n')
        result = await fill_command(c, uri, (2, 11), (2, 16))
        assert result["applied"] is False and result["text"] == "a * b" and c.applied_edits == []
        assert result["range"] == {"start": {"line": 2, "character": 11}, "end": {"line": 2, "character": 16}}
    finally:
        await stop_server(c)


async def test_a_fill_command_that_finds_nothing_says_why(client) -> None:
    async def reason(uri: str, end_line: int = 0) -> str:
        result = await fill_command(client, uri, (0, 0), (end_line, 1))
        assert result["applied"] is False
        return result["reason"]

    assert "neither open in the editor nor a readable file" in await reason("file:///no/such/file.py")
    open_doc(client, "file:///why.py", "x = 1\n")
    assert "past the end" in await reason("file:///why.py", end_line=9)
    assert await reason("file:///why.py") == "the model found no fill here"  # the fake engine fills nothing here
    open_doc(client, "file:///blank.py", "\n\n")
    assert await reason("file:///blank.py") == "the document has no code to fill from"


async def test_no_code_action_without_a_selection(client) -> None:
    uri = "file:///noselection.py"
    open_doc(client, uri, "x = 1\n")
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(text_document=types.TextDocumentIdentifier(uri=uri), range=rng((0, 2), (0, 2)),
                               context=types.CodeActionContext(diagnostics=[]))
    )
    assert not actions


@pytest.mark.parametrize("arguments", [[], ["file:///x.py"], ["file:///x.py", {"start": 1}], [1, 2, 3],
                                       ["file:///x.py", {"start": {"line": -1, "character": 0},
                                                         "end": {"line": 0, "character": 0}}]])
async def test_fill_command_with_bad_arguments_gets_an_error(client, arguments) -> None:
    with pytest.raises(JsonRpcException) as err:
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="codefill.fill", arguments=arguments)
        )
    assert err.value.code == -32602  # InvalidParams


async def test_manual_trigger_offers_distinct_candidates(client) -> None:
    uri = "file:///candidates.py"
    text = '# codefill-fake: ["a + b", "a - b", "a + b", "a * b"]\ndef f(a, b):\n    return \n'
    open_doc(client, uri, text)
    result = await inline(client, uri, 2, 11, invoked=True)
    texts = [item.insert_text for item in result.items]
    assert texts == ["a + b", "a - b", "a * b"]
    assert all(item.range == rng((2, 11), (2, 11)) for item in result.items)


async def test_typing_through_a_fill_reuses_it_without_the_engine(client, fake_log) -> None:
    uri = "file:///typethrough.py"
    text = '# codefill-fake: "return a + b"\ndef f(a, b):\n    \n'
    open_doc(client, uri, text)
    first = await inline(client, uri, 2, 4)
    assert first.items[0].insert_text == "return a + b"
    hole = "def f(a, b):\n    "
    calls = engine_calls(fake_log, hole)
    change_doc(client, uri, 2, rng((2, 4), (2, 4)), "ret")
    second = await inline(client, uri, 2, 7)
    assert second.items[0].insert_text == "urn a + b"
    assert second.items[0].range == rng((2, 7), (2, 7))
    assert engine_calls(fake_log, hole + "ret") == 0
    change_doc(client, uri, 3, rng((2, 7), (2, 7)), "x")  # typed something else: a new fill
    await inline(client, uri, 2, 8)
    assert engine_calls(fake_log, hole + "retx") == 1 and engine_calls(fake_log, hole) == calls


async def test_newest_request_per_document_wins(client) -> None:
    uri = "file:///slow.py"
    text = '# codefill-fake-sleep: 1.5\n# codefill-fake: "42"\nx = \n'
    open_doc(client, uri, text)
    started = time.monotonic()
    older = asyncio.ensure_future(inline(client, uri, 2, 4))
    await asyncio.sleep(0.3)  # the older one is in the engine now
    newer = asyncio.ensure_future(inline(client, uri, 2, 4))
    first, second = await asyncio.gather(older, newer)
    assert first is None  # cancelled inside the engine
    assert second is not None and second.items[0].insert_text == "42"
    assert time.monotonic() - started < 1.5 + 1.5  # the older fill did not run to the end


async def test_a_completion_request_does_not_cancel_ghost_text(client) -> None:
    """Clients that ask for completion items and ghost text at the same keystroke get both (found in session 7:
    the two shared one job slot per document, so the completion request cancelled the inline one)."""
    uri = "file:///both.py"
    open_doc(client, uri, '# codefill-fake-sleep: 0.5\n# codefill-fake: "42"\nx = \n')
    ghost = asyncio.ensure_future(inline(client, uri, 2, 4))
    await asyncio.sleep(0.2)
    items = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=pos(2, 4),
        context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked)))
    shown = await ghost
    assert shown is not None and shown.items[0].insert_text == "42"
    assert [item.text_edit.new_text for item in items.items][:1] == ["42"]


async def test_cancel_request_stops_the_engine(client) -> None:
    uri = "file:///cancelled.py"
    open_doc(client, uri, '# codefill-fake-sleep: 3\n# codefill-fake: "1"\nx = \n')
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=pos(2, 4),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )
    started = time.monotonic()
    request = asyncio.ensure_future(  # pytest-lsp's send_request_async sends only once awaited
        client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me")
    )
    await asyncio.sleep(0.3)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as err:
        await request
    assert err.value.code == -32800  # RequestCancelled
    other = "file:///after-cancel.py"
    open_doc(client, other, '# codefill-fake: "2"\nx = \n')
    assert (await inline(client, other, 1, 4)).items[0].insert_text == "2"
    assert time.monotonic() - started < 2.5  # the cancelled fill did not hold the engine for its 3 s


# -- bad input: every request is answered and the server lives on -------------------------------------------------


async def test_unknown_document_is_null(client) -> None:
    assert await inline(client, "file:///no/such/file.py", 0, 0) is None
    assert await inline(client, "untitled:Untitled-1", 3, 3) is None


async def test_position_past_the_end_is_clamped(client) -> None:
    uri = "file:///pastend.py"
    text = '# codefill-fake: "y = 2"\nx = 1\n'
    open_doc(client, uri, text)
    result = await inline(client, uri, 50, 80)
    if result is not None:
        for item in result.items:
            assert parses_no_worse("python", text, apply_text_edit(text, item.range, item.insert_text))


async def test_negative_position_gets_an_error_response(client) -> None:
    uri = "file:///negative.py"
    open_doc(client, uri, "x = 1\n")
    with pytest.raises(JsonRpcException) as err:
        await raw_request(client, "textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": -1, "character": -4}, "context": {"triggerKind": 1},
        })
    assert err.value.code == -32602  # InvalidParams


@pytest.mark.parametrize("method, params", [
    ("textDocument/inlineCompletion", {"nonsense": True}),
    ("textDocument/completion", [1, 2]),
    ("textDocument/codeAction", {"textDocument": {"uri": 5}}),
    ("workspace/executeCommand", {"command": "codefill.fill", "arguments": "oops"}),
])
async def test_malformed_params_get_an_error_response(client, method, params) -> None:
    with pytest.raises(JsonRpcException) as err:
        await raw_request(client, method, params)
    assert err.value.code in (-32602, -32603)


async def test_five_megabyte_line_is_answered_quickly(client) -> None:
    uri = "file:///huge.js"
    text = '// codefill-fake: "1"\nconst x = [' + "1, " * 1_700_000 + "];\n"
    open_doc(client, uri, text, "javascript")
    started = time.monotonic()
    result = await inline(client, uri, 1, 5_000_000)
    assert time.monotonic() - started < 10
    assert result is None or result.items[0].range.start == pos(1, 5_000_000)


async def test_invalid_utf8_on_disk(client, tmp_path) -> None:
    path = tmp_path / "latin1.py"
    path.write_bytes(b'# codefill-fake: "2"\ns = "caf\xe9"\nx = \n')
    result = await inline(client, path.as_uri(), 2, 4)  # never opened: read from disk, leniently
    assert result is not None and result.items[0].insert_text == "2"


async def test_unsupported_language_uses_indentation(client) -> None:
    uri = "file:///script.cobol"
    text = '* codefill-fake: "DISPLAY X."\n'
    open_doc(client, uri, text + "    \n", "cobol")
    result = await inline(client, uri, 1, 4)
    assert result is not None and result.items[0].insert_text == "DISPLAY X."


async def test_broken_syntax_is_not_made_worse(client) -> None:
    uri = "file:///broken.py"
    text = '# codefill-fake: "))) ]"\ndef f(:\n    return (1 +\nx = \n'
    open_doc(client, uri, text)
    result = await inline(client, uri, 3, 4)
    if result is not None:
        for item in result.items:
            assert parses_no_worse("python", text, apply_text_edit(text, item.range, item.insert_text))


async def test_still_alive_after_all_of_that(client) -> None:
    uri = "file:///alive.py"
    open_doc(client, uri, '# codefill-fake: "1"\nx = \n')
    result = await inline(client, uri, 1, 4)
    assert result.items[0].insert_text == "1"


async def test_a_language_the_model_was_not_trained_on_is_one_note(tmp_path) -> None:
    """The built-in model's engine.json says it knows Python: the first Go fill brings one note; the fill still
    comes, and Python brings none. A model directory that does not say (tmp_path) brings no note."""
    go = '// codefill-fake: "return a + 1"\npackage main\n\nfunc f(a int) int {\n\t\n}\n'
    py = '# codefill-fake: "1"\nx = \n'

    def notes(c) -> list[str]:
        return [m.message for m in c.messages if m.type == types.MessageType.Info and "trained on" in m.message]

    c = await start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0"])
    try:
        open_doc(c, "file:///a.go", go, "go")
        open_doc(c, "file:///b.py", py, "python")
        for _ in range(2):
            result = await inline(c, "file:///a.go", 4, 1)
            assert result is not None and result.items[0].insert_text == "return a + 1"
        assert (await inline(c, "file:///b.py", 1, 4)) is not None
        await asyncio.sleep(0.2)  # the note is sent from the event loop after the answer at the latest
        assert len(notes(c)) == 1 and "python" in notes(c)[0] and " go " in notes(c)[0]
    finally:
        await stop_server(c)
    c = await start_server(["--engine-factory", FAKE_ENGINE, "--debounce-ms", "0"],
                           init_options={"modelPath": str(tmp_path)})
    try:
        open_doc(c, "file:///a.go", go, "go")
        assert (await inline(c, "file:///a.go", 4, 1)) is not None
        await asyncio.sleep(0.2)
        assert notes(c) == []
    finally:
        await stop_server(c)
