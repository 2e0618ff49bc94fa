"""Start the real server process over stdio and drive it with pytest-lsp's LanguageClient."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

REPO = Path(__file__).resolve().parents[2]
FAKE_ENGINE = f"{REPO / 'tests' / 'lsp_fixtures' / 'fake_engine.py'}:make_engine"
PROGRESS_TOKEN = "codefill/load-model"

CAPABILITIES = types.ClientCapabilities(
    window=types.WindowClientCapabilities(work_done_progress=True),
    workspace=types.WorkspaceClientCapabilities(apply_edit=True, configuration=False),
    text_document=types.TextDocumentClientCapabilities(
        inline_completion=types.InlineCompletionClientCapabilities(),
        completion=types.CompletionClientCapabilities(),
    ),
)


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this one, with the repository importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


async def start_server(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    init_options: Any = None,
    capabilities: types.ClientCapabilities = CAPABILITIES,
    wait_ready: bool = True,
) -> LanguageClient:
    """A client connected to a fresh `python -m lsp_server` and initialized."""
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "lsp_server", *args], server_env=server_env(env)
    )
    client = await config.start()
    client.applied_edits = []  # type: ignore[attr-defined]

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        client.applied_edits.append(params)  # type: ignore[attr-defined]
        return types.ApplyWorkspaceEditResult(applied=True)

    started = time.monotonic()
    client.init_result = await client.initialize_session(  # type: ignore[attr-defined]
        types.InitializeParams(
            capabilities=capabilities, initialization_options=init_options, root_uri=REPO.as_uri()
        )
    )
    client.init_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    if wait_ready:
        await wait_for_progress_end(client)
    return client


async def wait_for_progress_end(client: LanguageClient, timeout: float = 60) -> types.WorkDoneProgressEnd:
    """Wait until the server reports the model load finished."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for value in client.progress_reports.get(PROGRESS_TOKEN, []):
            if isinstance(value, types.WorkDoneProgressEnd):
                return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the server never reported the model loaded")
        await asyncio.sleep(0.02)


async def stop_server(client: LanguageClient) -> None:
    """Shut the server down politely, then make sure it is gone."""
    try:
        await asyncio.wait_for(client.shutdown_session(), timeout=10)
    finally:
        await client.stop()


def open_doc(client: LanguageClient, uri: str, text: str, language_id: str = "python", version: int = 1) -> None:
    """textDocument/didOpen."""
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=version, text=text)
        )
    )


def change_doc(client: LanguageClient, uri: str, version: int, rng: types.Range, text: str) -> None:
    """An incremental textDocument/didChange."""
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=text)],
        )
    )


def pos(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def rng(a: tuple[int, int], b: tuple[int, int]) -> types.Range:
    return types.Range(start=pos(*a), end=pos(*b))


async def inline(
    client: LanguageClient, uri: str, line: int, character: int, invoked: bool = False
) -> types.InlineCompletionList | list | None:
    """textDocument/inlineCompletion at a position."""
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=pos(line, character),
            context=types.InlineCompletionContext(trigger_kind=kind),
        )
    )


def apply_text_edit(text: str, edit_range: types.Range, new_text: str) -> str:
    """Apply one LSP edit (UTF-16 positions) to a text."""
    from lsp_server.positions import Pos, offset_at

    a = offset_at(text, Pos(edit_range.start.line, edit_range.start.character))
    b = offset_at(text, Pos(edit_range.end.line, edit_range.end.character))
    return text[:a] + new_text + text[b:]


async def raw_request(client: LanguageClient, method: str, params: Any) -> Any:
    """Send a request exactly as given (no client-side types) and return the raw result; errors raise."""
    import concurrent.futures
    import inspect
    import json
    import uuid

    msg_id = f"raw-{uuid.uuid4()}"
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    client.protocol._request_futures[msg_id] = future
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()
    written = client.protocol.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    if inspect.isawaitable(written):
        await written
    return await asyncio.wait_for(asyncio.wrap_future(future), timeout=30)


async def fill_command(client: LanguageClient, uri: str, start: tuple[int, int], end: tuple[int, int]) -> Any:
    """workspace/executeCommand codefill.fill for a range, as an editor's "fill selection" sends it: the result."""
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="codefill.fill", arguments=[uri, {"start": {"line": start[0], "character": start[1]},
                                                   "end": {"line": end[0], "character": end[1]}}]))
