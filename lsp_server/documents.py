"""The server's copy of each open document: LSP's line breaks, edits spliced by offset, a count of its states."""

from __future__ import annotations

import itertools
import logging
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace

from lsp_server.positions import Pos, line_starts, offset_at, plain_breaks

log = logging.getLogger("codefill.server")


_generations = itertools.count(1)  # every open and every edit of any document takes the next number


class LspTextDocument(TextDocument):
    """pygls's TextDocument with LSP's line breaks only: \\n, \\r\\n and \\r.

    pygls splits lines with str.splitlines, which also breaks at \\x0b, \\x0c, \\x1c-\\x1e, \\x85, \\u2028 and
    \\u2029: an edit on a line after one of those (a form feed in C or Python, a U+2028 in a JS string) landed in
    the wrong place and the server's copy of the document drifted from the editor's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The server's own count of this copy's states. The client's version cannot tell two states apart when a
        # client reuses numbers (didOpen of an open uri, a version that goes back or repeats): a fill made for
        # one text was sent for another, at a range that no longer meant the same place.
        self.generation = next(_generations)

    @property
    def lines(self) -> tuple[str, ...]:  # type: ignore[override]
        text = self.source
        starts = line_starts(text)
        if starts[-1] == len(text):
            starts.pop()  # no empty last line after a final break (as splitlines)
        return tuple(text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]))

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        """Splice one edit by offsets, as the server reads positions (positions.offset_at).

        pygls maps each end of the range by summing code units character by character over the whole line (a
        keystroke in a 1 MB line took ~0.6 s, stalling every document) and, for a column past the line's end,
        counted the line break as a column: the edit landed after the break, or inside a \r\n, and the server's
        copy drifted from the editor's. LSP puts a column past the end at the end of the line's content.
        """
        text = self.source
        starts = None if plain_breaks(text) else line_starts(text)  # a 10 MB file: no pass over its 1.7M lines
        enc = self._position_codec.encoding
        encoding = str(getattr(enc, "value", enc))
        rng = change.range
        a = offset_at(text, Pos(rng.start.line, rng.start.character), starts, encoding)
        b = offset_at(text, Pos(rng.end.line, rng.end.character), starts, encoding)
        a, b = min(a, b), max(a, b)
        self._source = text[:a] + change.text + text[b:]

    def apply_change(self, change: types.TextDocumentContentChangeEvent) -> None:
        super().apply_change(change)
        self.generation = next(_generations)


def doc_key(uri: str) -> str:
    """The key of a document's state: its uri as pygls keys open documents (unquoted)."""
    return unquote(uri)


def generation(doc: TextDocument) -> int | None:
    return getattr(doc, "generation", None)


def use_lsp_lines(workspace: Workspace) -> None:
    """Make a workspace create LspTextDocuments."""

    def create(doc_uri: str, source: str | None = None, version: int | None = None,
               language_id: str | None = None) -> TextDocument:
        return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                               sync_kind=workspace._sync_kind, position_codec=workspace.position_codec)

    workspace._create_text_document = create  # type: ignore[method-assign]
    update = workspace.update_text_document

    def update_open(text_doc: types.VersionedTextDocumentIdentifier, change: Any) -> None:
        if doc_key(text_doc.uri) not in workspace.text_documents:  # pygls: a KeyError, logged as a server error
            log.warning("didChange for %s, which is not open: ignored", text_doc.uri)
            return
        update(text_doc, change)

    workspace.update_text_document = update_open  # type: ignore[method-assign]
