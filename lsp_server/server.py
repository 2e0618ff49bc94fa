"""The language server: document sync, inline completion, completion, the fill command. Handlers stay thin."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcServerNotInitialized
from pygls.io_ import run_async
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path
from pygls.workspace import TextDocument

from engine.model_dir import language_note
from lsp_server import languages
from lsp_server.ahead import NextLine, next_line
from lsp_server.completion import complete_at
from lsp_server.documents import doc_key, generation, use_lsp_lines
from lsp_server.engine_client import EngineClient, EngineSpec, EngineUnavailable, Keyed, make_engine_client
from lsp_server.holes import Hole
from lsp_server.options import Settings, parse_settings
from lsp_server.positions import Pos, line_count, line_starts, offset_at, plain_breaks, position_at
from lsp_server.protocol import (CLIENT_ERROR_FILTER, MAX_HEADER_LINE_BYTES, AsyncFramingGuard, CodefillProtocol,
                                 is_client_error)

log = logging.getLogger("codefill.server")

FILL_COMMAND = "codefill.fill"
DOCUMENT_TEXT_REQUEST = "codefill/documentText"  # the server's copy of a document; for tests and bug reports
SERVER_STATE_REQUEST = "codefill/serverState"  # counts of open documents, cached fills, jobs, tasks, threads
PROGRESS_TOKEN = "codefill/load-model"
APPLY_EDIT_TIMEOUT_S = 30  # the fill command gives up waiting for the editor to apply its edit
LOAD_WAIT_S = 60  # a fill command waits this long for a model still loading
MAX_DISK_BYTES = 8_000_000  # documents read from disk (not opened by the client) above this are not served
VERSION = "0.1.0"

T = TypeVar("T")


@dataclass
class Document:
    """A document's text as the server sees it."""

    uri: str
    text: str
    language_id: str | None
    version: int | None
    generation: int | None = None  # LspTextDocument.generation of an open document; None for a file on disk


@dataclass
class Job:
    """The newest fill job of a document for one feature; an older one is cancelled when a newer one starts."""

    uri: str  # doc_key(uri)
    feature: str = "inline"  # inline, completion or command: a completion request must not cancel ghost text
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        """The job's slot, here and in a shared engine (where the newest fill per key wins)."""
        return self.uri if self.feature == "inline" else f"{self.uri}#{self.feature}"


@dataclass
class CachedFill:
    """The last fill shown in a document, kept so that typing through it needs no new engine call."""

    before: str  # document text before the replaced range
    after: str  # document text after the replaced range
    insert: str  # the text that replaced the range
    hole: Hole | None = None  # the hole it filled (what lsp_server.ahead needs to predict the next line)
    state: str | None = None  # for a fill made ahead: the whole text it was made for


@dataclass
class Prefetch:
    """A fill made ahead for the state a document reaches when the suggestion on screen is accepted and a new line
    started (lsp_server.ahead); its result goes to CodefillServer.ahead."""

    state: NextLine
    job: Job
    future: asyncio.Future[Any]


@dataclass
class Suggestion:
    """A fill ready to send: the range it replaces and the text."""

    range: types.Range
    text: str


def _guarded(default: Any = None) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Catch everything at the handler edge: log it and answer `default`. The server never dies from a request."""

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def handler(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except JsonRpcException:
                raise
            except Exception:
                log.exception("%s failed; answering %r", fn.__name__, default)
                return default

        return handler

    return wrap


class LspLogHandler(logging.Handler):
    """Python log records -> window/logMessage, sent from the event loop thread."""

    LEVELS = {
        logging.ERROR: types.MessageType.Error,
        logging.WARNING: types.MessageType.Warning,
        logging.INFO: types.MessageType.Info,
    }

    def __init__(self, server: CodefillServer) -> None:
        super().__init__()
        self.server = server
        self.busy = threading.local()  # a record logged while one is being sent is not sent (no feedback loop)
        self.early: list[logging.LogRecord] = []  # records from before the client connected (an unwritable log file)
        self.setFormatter(logging.Formatter("%(message)s"))

    def flush_early(self) -> None:
        """Send what was logged before the event loop ran."""
        early, self.early = self.early, []
        for record in early:
            self.emit(record)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self.busy, "on", False):
            return
        self.busy.on = True
        try:
            self._emit(record)
        finally:
            self.busy.on = False

    def _emit(self, record: logging.LogRecord) -> None:
        try:
            if self.server.loop is None:
                if len(self.early) < 20 and record.levelno >= logging.INFO:
                    self.early.append(record)
                return
            kind = types.MessageType.Log
            for level, value in self.LEVELS.items():
                if record.levelno >= level:
                    kind = value
                    break
            self.server.send_threadsafe(
                lambda: self.server.window_log_message(types.LogMessageParams(type=kind, message=self.format(record)))
            )
        except Exception:
            pass


def _regular_file(uri: str) -> str | None:
    """The path of the regular file a uri names, else None. Regular files only: opening a FIFO (or
    file:///dev/stdin, the client's own pipe) blocked the event loop for good, and every later request with it."""
    try:
        path = to_fs_path(uri)
        return path if path and stat.S_ISREG(os.stat(path).st_mode) else None
    except (OSError, ValueError):
        return None


class CodefillServer(LanguageServer):
    """The codefill language server: its settings, its engine and its per-document fill state."""

    def __init__(self, settings: Settings | None = None, engine_factory: str | None = None,
                 engine_spec: EngineSpec | None = None) -> None:
        super().__init__(
            "codefill",
            VERSION,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=CodefillProtocol,
        )
        logging.getLogger("pygls.protocol.json_rpc").addFilter(CLIENT_ERROR_FILTER)  # once: a filter is a set member
        self.settings = settings or Settings()
        self.start_settings = self.settings  # the command line's, then with initializationOptions over them
        self.problems_shown: set[str] = set()
        self.exit_code = 0  # what codefill-lsp exits with (1 after an exit notification without shutdown)
        self.engine_factory = engine_factory
        self.engine_spec = engine_spec or EngineSpec()
        self.engine: EngineClient = self._make_engine()
        self.engine_error: str | None = None
        self.engine_loading = False
        self.engine_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="codefill-engine")
        self.jobs: dict[str, Job] = {}  # by Job.key
        self.cache: dict[str, CachedFill] = {}
        self.ahead: dict[str, CachedFill] = {}  # fills made ahead for the next line (Prefetch), by doc_key
        self.prefetches: dict[str, Prefetch] = {}  # running, by doc_key
        self.loop: asyncio.AbstractEventLoop | None = None
        self.progress_open = False
        self.progress_token = PROGRESS_TOKEN
        self.loads_reported = 0  # model loads announced with $/progress; later ones get a suffixed token
        self.file_handler: logging.Handler | None = None
        self.fills_started = 0  # engine calls made; for logs and tests
        self.languages_noted: set[tuple[str | None, str]] = set()  # (model, language) checked against the model

    # -- plumbing ---------------------------------------------------------------------------------

    def _make_engine(self) -> EngineClient:
        s = self.settings
        return make_engine_client(self.engine_spec, s.model_path, s.device, factory=self.engine_factory,
                                  notify=self._notify)

    def _notify(self, level: int, message: str) -> None:
        """An engine event the user should see once (out of memory, a restart that failed)."""
        self.show(message, types.MessageType.Error if level >= logging.ERROR else types.MessageType.Warning)

    def start_tcp(self, host: str, port: int) -> None:
        """Serve one client over TCP, as over stdio: the first connection is the session, another one meanwhile is
        closed at once (pygls gave it the first one's output), and the server ends when its client goes, also by a
        reset or in the middle of a message (pygls's loop raised there and the server lived on, deaf: the next
        client's initialize was refused as a second one)."""
        self._stop_event = stop_event = threading.Event()

        async def serve() -> None:
            ended = asyncio.Event()
            taken = False

            async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                nonlocal taken
                peer = writer.get_extra_info("peername")
                if taken:
                    log.warning("closed a connection from %s: the server serves one client", peer)
                    writer.close()
                    return
                taken = True
                log.info("client connected from %s", peer)
                self.protocol.set_writer(writer)
                try:
                    await run_async(stop_event=stop_event, reader=AsyncFramingGuard(reader), protocol=self.protocol,
                                    logger=log, error_handler=self.report_server_error)
                finally:
                    log.info("the client has gone")
                    ended.set()

            listening = await asyncio.start_server(connection, host, port, limit=MAX_HEADER_LINE_BYTES)
            self._server = listening
            log.info("listening on %s", ", ".join(str(sock.getsockname()) for sock in listening.sockets))
            async with listening:
                await ended.wait()
            self.shutdown()

        asyncio.run(serve())

    def send_threadsafe(self, send: Callable[[], None]) -> None:
        """Run a send on the event loop thread (the writer is not thread-safe)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            send()
        else:
            loop.call_soon_threadsafe(send)

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Errors outside a request: log them; answer unparseable input with a JSON-RPC parse error."""
        if source is JsonRpcException and isinstance(error, (json.JSONDecodeError, UnicodeDecodeError, RecursionError)):
            # From pygls's read loop: the message could not be read at all (RecursionError: nested too deep).
            # Only these: any ValueError was taken for one, and a write to a closed stdout, answered with a
            # parse error, failed again, without end.
            log.warning("unreadable message from the client: %s", error)
            self.protocol._send_data(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": f"Parse error: {error}"}}
            )
            return
        if is_client_error(error):
            log.warning("bad request from the client (%s): %s", getattr(source, "__name__", source), error)
            return
        log.error("server error (%s): %s", getattr(source, "__name__", source), error)

    def show(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        """One window/showMessage (used for settings problems and a model that fails to load)."""
        self.send_threadsafe(
            lambda: self.window_show_message(types.ShowMessageParams(type=kind, message=f"codefill: {message}"))
        )

    def apply_settings(self, raw: Any, initial: bool = False) -> None:
        """Settings from the client: initializationOptions (initial) over the command line's, and each
        didChangeConfiguration over those, whole (a key the client no longer sends goes back to its value
        underneath). Rejected values are shown once each; the model reloads if its settings changed."""
        parsed = parse_settings(raw, self.start_settings)
        if initial:
            self.start_settings = parsed.settings
        fresh = [p for p in parsed.problems if p not in self.problems_shown]
        if fresh:
            self.problems_shown.update(fresh)
            self.show("invalid settings: " + "; ".join(fresh))
        old, self.settings = self.settings, parsed.settings
        if self.settings.log_file != old.log_file:
            self.set_log_file(self.settings.log_file)
        if self.settings != old:  # fills made under the old settings (steps, maxTokens, ...) are not reused
            self.cache.clear()
            self.ahead.clear()
            self._drop_prefetches()
        engine_changed = (old.model_path, old.device) != (self.settings.model_path, self.settings.device)
        if not engine_changed:
            return
        if self.engine.ready or self.engine_error is not None:
            self.engine.close()
            self.engine = self._make_engine()
            self.engine_error = None
            self.start_loading()
            if self.loop is not None:  # a reload is reported like the first load
                self.loop.create_task(self.begin_progress())
        else:
            # Not loaded yet (settings from initializationOptions) or still loading: the new engine replaces it;
            # a load under way finishes, is closed, and the new one loads (see _loaded).
            self.engine = self._make_engine()

    def set_log_file(self, path: str | None) -> None:
        """Send logs to a file as well; an unwritable path is a warning, not a crash."""
        root = logging.getLogger("codefill")
        if self.file_handler is not None:
            root.removeHandler(self.file_handler)
            self.file_handler.close()
            self.file_handler = None
        if not path:
            return
        try:
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the log file %s: %s", path, exc)
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        self.file_handler = handler

    # -- the model --------------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load the model once, in a background thread; requests meanwhile are answered null."""
        if self.engine_loading:
            return
        self.engine_loading = True
        engine = self.engine

        def load() -> None:
            error: str | None = None
            started = time.perf_counter()
            try:
                engine.load()
            except EngineUnavailable as exc:  # a shared engine not reachable yet: the client keeps trying
                error = f"the engine cannot be reached ({exc}); fills start when it answers"
                log.error("%s", error)
            except Exception as exc:  # CheckpointError, ImportError, anything: the server lives on
                error = f"the model could not be loaded ({type(exc).__name__}: {exc}); no fills until it is fixed"
                log.error("the model failed to load: %s: %s", type(exc).__name__, exc)
            else:
                log.info("model ready in %.1f s", time.perf_counter() - started)
            self.send_threadsafe(functools.partial(self._loaded, engine, error))

        threading.Thread(target=load, name="codefill-load", daemon=True).start()

    def _loaded(self, engine: EngineClient, error: str | None) -> None:
        self.engine_loading = False
        if engine is not self.engine:  # settings changed while it loaded
            engine.close()
            self.start_loading()
            return
        self.engine_error = error
        if error is not None:
            self.show(error, types.MessageType.Error)
        self._end_progress(error)

    def _end_progress(self, error: str | None) -> None:
        if self.progress_open:
            self.progress_open = False
            self.work_done_progress.end(
                self.progress_token,
                types.WorkDoneProgressEnd(message="model ready" if error is None else "model failed to load"),
            )

    async def begin_progress(self) -> None:
        """Report the model load with $/progress, where the client supports it."""
        caps = self.client_capabilities
        if not (caps and caps.window and caps.window.work_done_progress):
            return
        self.loads_reported += 1
        self.progress_token = PROGRESS_TOKEN if self.loads_reported == 1 else f"{PROGRESS_TOKEN}-{self.loads_reported}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(self.progress_token), timeout=5)
        except Exception as exc:
            log.info("no progress reporting: %s", exc)
            return
        self.progress_open = True
        self.work_done_progress.begin(
            self.progress_token, types.WorkDoneProgressBegin(title="codefill", message="loading the model", cancellable=False)
        )
        if not self.engine_loading:  # it finished before the client was ready to hear of it
            self._end_progress(self.engine_error)

    # -- documents --------------------------------------------------------------------------------

    @property
    def position_encoding(self) -> str:
        """The column encoding agreed at initialize: utf-16 unless the client preferred utf-8 or utf-32."""
        try:
            enc = self.workspace.position_encoding or "utf-16"
        except RuntimeError:  # no workspace before initialize
            return "utf-16"
        return str(getattr(enc, "value", enc))

    def opened(self, uri: str) -> TextDocument | None:
        """The client's open document at a uri, however the request spelled it: pygls keys open documents by the
        unquoted uri, so a lookup by the uri as sent missed every file whose path has a space (file:///a%20b.py)
        or a Windows drive (file:///c%3A/...), and the server filled the file on disk instead of the buffer."""
        try:
            return self.workspace.text_documents.get(doc_key(uri))
        except RuntimeError:  # no workspace before initialize
            return None

    def document(self, uri: str) -> Document | None:
        """An open document, or a file on disk (decoded leniently); None when there is neither."""
        opened = self.opened(uri)
        if opened is not None:
            return Document(uri, opened.source, opened.language_id, opened.version, generation(opened))
        path = _regular_file(uri)
        if path is None:
            return None
        try:
            # O_NONBLOCK: a FIFO swapped in after the check would block the event loop.
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                data = f.read(MAX_DISK_BYTES + 1)
        except (OSError, ValueError):
            return None
        if len(data) > MAX_DISK_BYTES:
            return None
        return Document(uri, data.decode("utf-8", errors="replace"), languages.language_id_for_path(path), None)

    def known(self, uri: str) -> bool:
        """Whether a fill could read the document: open in the client, or a regular file on disk (without reading
        it: editors ask for code actions on every cursor move)."""
        return self.opened(uri) is not None or _regular_file(uri) is not None

    def why_no_fill(self, uri: str, end: types.Position) -> str:
        """Why suggest() found nothing, in words for the user of a fill command."""
        if not self.settings.enabled:
            return "codefill is disabled (codefill.enabled is false)"
        doc = self.document(uri)
        if doc is None:
            return f"no document {uri}: it is neither open in the editor nor a readable file"
        if not self.settings.serves(doc.language_id):
            return f"codefill does not fill {doc.language_id or 'unknown'} documents (codefill.languages)"
        if end.line >= line_count(doc.text, None if plain_breaks(doc.text) else line_starts(doc.text)):
            return "the range is past the end of the document"
        if not doc.text.strip():
            return "the document has no code to fill from"
        if self.engine_loading:
            return "the model is still loading; try again in a moment"
        if self.engine_error is not None:
            return self.engine_error
        if not self.engine.ready:
            return "the model is not loaded"
        return "the model found no fill here"

    def version_of(self, uri: str) -> int | None:
        doc = self.opened(uri)
        return doc.version if doc is not None else None

    def generation_of(self, uri: str) -> int | None:
        """The server's count of the open document's state (see LspTextDocument.generation); None when closed."""
        doc = self.opened(uri)
        return generation(doc) if doc is not None else None

    def forget(self, uri: str) -> None:
        """Drop a closed document's last fill and cancel its jobs."""
        key = doc_key(uri)
        self.cache.pop(key, None)
        self.ahead.pop(key, None)
        pre = self.prefetches.pop(key, None)
        if pre is not None:
            pre.future.cancel()
        for job_key in [k for k, job in self.jobs.items() if job.uri == key]:  # Job.uri is a doc_key
            self.jobs.pop(job_key).cancel.set()

    def cancel_all(self) -> None:
        """Cancel every fill, running or queued (shutdown, exit, or the client gone)."""
        for job in list(self.jobs.values()):
            job.cancel.set()
        self.jobs.clear()
        for pre in self.prefetches.values():
            pre.future.cancel()
        self.prefetches.clear()

    def stop_fills(self) -> None:
        """After the session: cancel every fill and drop the queued ones (a running one stops at its next step)."""
        self.protocol.closed = True
        self.cancel_all()
        self.engine_executor.shutdown(wait=False, cancel_futures=True)

    def state(self) -> dict[str, Any]:
        """Counts of what the server holds, for tests and bug reports (codefill/serverState)."""
        try:
            open_documents = len(self.workspace.text_documents)
        except RuntimeError:
            open_documents = 0
        loop = self.loop
        return {
            "openDocuments": open_documents,
            "cachedFills": len(self.cache),
            "aheadFills": len(self.ahead),
            "prefetches": len(self.prefetches),
            "jobs": len(self.jobs),
            "pendingRequests": len(self.protocol._request_futures),
            "tasks": len(asyncio.all_tasks(loop)) if loop is not None else 0,
            "threads": threading.active_count(),
            "engineQueue": self.engine_executor._work_queue.qsize(),
            "fillsStarted": self.fills_started,
        }

    # -- fills ------------------------------------------------------------------------------------

    def _from_cache(self, uri: str, text: str, offset: int,
                    starts: list[int] | None) -> tuple[Suggestion, CachedFill] | None:
        """The last fill, or the one made ahead for this line, shortened by what the user has typed of it since."""
        key = doc_key(uri)
        for cache in (self.cache, self.ahead):
            c = cache.get(key)
            hit = self._typed_through(c, text, offset, starts) if c is not None else None
            if hit is not None:
                return hit, c
        return None

    def _typed_through(self, c: CachedFill, text: str, offset: int, starts: list[int] | None) -> Suggestion | None:
        if offset < len(c.before) or len(text) - len(c.after) < offset:
            return None
        if not (text.startswith(c.before) and text.endswith(c.after)):
            return None
        typed = text[len(c.before):offset]
        if len(typed) >= len(c.insert) or not c.insert.startswith(typed):
            return None
        enc = self.position_encoding
        rng = types.Range(_lsp(position_at(text, offset, starts, enc)),
                          _lsp(position_at(text, len(text) - len(c.after), starts, enc)))
        return Suggestion(rng, c.insert[len(typed):])

    async def suggest(
        self,
        uri: str,
        position: types.Position,
        selection_end: types.Position | None = None,
        *,
        invoked: bool = False,
        debounce: bool = True,
        feature: str = "inline",
    ) -> list[Suggestion]:
        """Fills for a cursor or a selection: [] when there is none, the document moved on, or no model.

        A newer request of the same feature in the same document cancels this one; other features' do not (a
        client may ask for completion items and ghost text at the same keystroke)."""
        settings = self.settings
        doc = self.document(uri)
        if doc is None:
            log.info("no document %s", uri)
            return []
        if not settings.serves(doc.language_id):
            return []
        text = doc.text
        starts = None if plain_breaks(text) else line_starts(text)  # None: positions found without a line index
        lines = line_count(text, starts)
        if position.line >= lines or (selection_end is not None and selection_end.line >= lines):
            log.info("position past the end of %s (%d lines): the editor's copy has moved on", uri, lines)
            return []
        enc = self.position_encoding
        offset = offset_at(text, Pos(position.line, position.character), starts, enc)
        end = offset_at(text, Pos(selection_end.line, selection_end.character), starts, enc) if selection_end else None
        key = doc_key(uri)
        if end is None or end == offset:
            pre = self.prefetches.get(key)
            if not invoked and pre is not None and (pre.state.text, pre.state.offset) == (text, offset):
                log.debug("waiting for the fill made ahead for %s", uri)
                await asyncio.wait([pre.future])  # the request at hand is the one it was made for (a cancelled
                # prefetch ends the wait; a cancelled request leaves the prefetch alone)
            found = self._from_cache(uri, text, offset, starts)
            if found is not None and not invoked:
                hit, cached = found
                accepted = cached.before + cached.insert + cached.after
                self._drop_prefetches(keep=key, accepted=accepted)  # typing through it: keep its next line going
                if settings.prefetch and cached.hole is not None and doc.generation is not None:
                    self._prefetch(doc, cached)
                return [hit]
            self._drop_prefetches(keep=key, accepted=text)  # accepted, no new line yet: editors ask here too
        else:
            self._drop_prefetches()
        if not self.engine.ready:
            return []
        self._note_language(doc.language_id)

        job = Job(doc_key(uri), feature)
        previous = self.jobs.get(job.key)
        if previous is not None:
            previous.cancel.set()
        self.jobs[job.key] = job

        if debounce and settings.debounce_ms and not invoked:
            try:
                await asyncio.sleep(settings.debounce_ms / 1000)
            except asyncio.CancelledError:
                job.cancel.set()
                raise
        if job.cancel.is_set() or self.generation_of(uri) != doc.generation:
            return []

        candidates = settings.candidates if invoked else 1
        assert self.loop is not None
        try:
            hole, inserts = await self.loop.run_in_executor(
                self.engine_executor,
                functools.partial(self._fill_job, job, doc, offset, end, candidates, settings),
            )
        except asyncio.CancelledError:  # $/cancelRequest: stop the engine too
            job.cancel.set()
            raise
        finally:
            if self.jobs.get(job.key) is job:
                del self.jobs[job.key]
        if hole is None or not inserts:
            return []
        now = self.generation_of(uri)
        if doc.generation is not None and now is not None:  # still open: no cache for a closed or unopened one
            self.cache[job.uri] = CachedFill(text[: hole.start], text[hole.end :], inserts[0], hole)
        if job.cancel.is_set() or now != doc.generation:
            return []  # stale: the cache above still serves the user typing through it
        if feature == "inline" and settings.prefetch and now is not None:
            self._prefetch(doc, self.cache[job.uri])
        rng = types.Range(_lsp(position_at(text, hole.start, starts, enc)),
                          _lsp(position_at(text, hole.end, starts, enc)))
        return [Suggestion(rng, insert) for insert in inserts]

    # -- the next line, ahead of time ---------------------------------------------------------------

    def _drop_prefetches(self, keep: str | None = None, accepted: str | None = None) -> None:
        """Cancel the fills being made ahead: the request at hand comes first. Kept: keep's (a doc_key), when it
        was made for the state after accepted (the text with its suggestion accepted)."""
        for key in list(self.prefetches):
            pre = self.prefetches[key]
            if key == keep and pre.state.accepted == accepted:
                continue
            del self.prefetches[key]
            pre.job.cancel.set()
            pre.future.cancel()  # out of the engine's queue if it has not started
            if self.jobs.get(pre.job.key) is pre.job:
                del self.jobs[pre.job.key]

    def _prefetch(self, doc: Document, shown: CachedFill) -> None:
        """Start filling the next line of doc as it will be once the fill on screen is accepted (lsp_server.ahead),
        unless that is under way or done already."""
        assert shown.hole is not None
        state = next_line(shown.before, shown.insert, shown.after, shown.hole, doc.language_id)
        key = doc_key(doc.uri)
        if state is None or self.loop is None or not self.engine.ready:
            return
        running = self.prefetches.get(key)
        made = self.ahead.get(key)
        if (running is not None and running.state == state) or (made is not None and made.state == state.text):
            return
        self._drop_prefetches()
        job = Job(key, "prefetch")
        self.jobs[job.key] = job
        ahead = Document(doc.uri, state.text, doc.language_id, None, doc.generation)
        future = self.loop.run_in_executor(
            self.engine_executor, functools.partial(self._fill_job, job, ahead, state.offset, None, 1, self.settings))
        self.prefetches[key] = Prefetch(state, job, future)
        future.add_done_callback(functools.partial(self._prefetch_done, doc.uri, job, state))

    def _prefetch_done(self, uri: str, job: Job, state: NextLine, future: asyncio.Future[Any]) -> None:
        key = doc_key(uri)
        pre = self.prefetches.get(key)
        if pre is not None and pre.job is job:
            del self.prefetches[key]
        if self.jobs.get(job.key) is job:
            del self.jobs[job.key]
        if future.cancelled() or future.exception() is not None or job.cancel.is_set():
            return
        hole, inserts = future.result()
        if hole is not None and inserts and self.generation_of(uri) is not None:  # the document is still open
            self.ahead[key] = CachedFill(state.text[: hole.start], state.text[hole.end :], inserts[0], hole,
                                         state.text)

    def _note_language(self, language_id: str | None) -> None:
        """Once per model and language: say so when the model was trained on other languages (its engine.json
        lists them; the built-in model knows Python only). The fill still goes ahead."""
        spec = languages.spec_for(language_id)
        if spec is None or (self.settings.model_path, spec.name) in self.languages_noted:
            return
        key = (self.settings.model_path, spec.name)
        self.languages_noted.add(key)
        note = language_note(self.settings.model_path, spec.name)
        if note:
            log.info("%s", note)
            self.show(note, types.MessageType.Info)

    def _fill_job(
        self, job: Job, doc: Document, offset: int, end: int | None, candidates: int, settings: Settings
    ) -> tuple[Hole | None, list[str]]:
        """Runs in the engine thread: hole, engine fills, post-processing. Newest job per document wins."""
        if job.cancel.is_set():
            return None, []
        from engine.errors import EngineError, FillCancelled  # no torch: engine/errors.py is plain

        try:
            result = complete_at(Keyed(self.engine, job.key), doc.text, offset, doc.language_id, selection_end=end,
                                 max_tokens=settings.max_tokens, candidates=candidates,
                                 steps=settings.steps or None, cancel=job.cancel)
        except FillCancelled:
            return None, []
        except EngineError as exc:
            log.warning("engine error: %s", exc)
            return None, []
        self.fills_started += result.engine_calls
        log.debug("fill %s %s budget=%d in %.0f ms: %r -> %r", doc.uri, result.hole.kind, result.hole.max_tokens,
                  result.seconds * 1000, result.raw, result.inserts)
        return result.hole, result.inserts


def _lsp(pos: Pos) -> types.Position:
    return types.Position(line=pos.line, character=pos.character)


def _described_arguments(args: tuple[Any, ...]) -> str:
    """A command's arguments for an error message. pygls spreads a string sent where the argument list belongs
    into its characters: that is shown as the string the client sent."""
    if args and all(isinstance(a, str) and len(a) == 1 for a in args):
        return f"the string {''.join(args)!r} instead of a list"
    return repr(list(args))


def _range_json(rng: types.Range) -> dict[str, Any]:
    return {
        "start": {"line": rng.start.line, "character": rng.start.character},
        "end": {"line": rng.end.line, "character": rng.end.character},
    }


def _parse_range(raw: Any) -> types.Range:
    """A Range from a command argument; raises ValueError."""
    try:
        start, end = raw["start"], raw["end"]
        values = [start["line"], start["character"], end["line"], end["character"]]
    except (TypeError, KeyError) as exc:
        raise ValueError(f"not a range: {raw!r}") from exc
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"not a range: {raw!r}")
    return types.Range(types.Position(values[0], values[1]), types.Position(values[2], values[3]))


def _sorted_range(rng: types.Range) -> tuple[types.Position, types.Position]:
    a, b = rng.start, rng.end
    return (a, b) if (a.line, a.character) <= (b.line, b.character) else (b, a)


def make_server(settings: Settings | None = None, engine_factory: str | None = None,
                engine_spec: EngineSpec | None = None) -> CodefillServer:
    """The server with its features registered."""
    server = CodefillServer(settings, engine_factory, engine_spec)
    lsp_log = LspLogHandler(server)
    logging.getLogger("codefill").addHandler(lsp_log)

    @server.feature(types.INITIALIZE)
    def initialize(ls: CodefillServer, params: types.InitializeParams) -> None:
        ls.loop = asyncio.get_running_loop()
        use_lsp_lines(ls.workspace)  # made by pygls just before this handler; no document is open yet
        ls.loop.call_soon(lsp_log.flush_early)  # e.g. the log file named on the command line cannot be written
        if params.initialization_options is not None:
            ls.apply_settings(params.initialization_options, initial=True)
        # Start the load once this answer is on its way: the import of torch would hold the GIL meanwhile.
        ls.loop.call_soon(ls.start_loading)

    @server.feature(types.INITIALIZED)
    @_guarded()
    async def initialized(ls: CodefillServer, params: types.InitializedParams) -> None:
        await ls.begin_progress()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: CodefillServer, params: types.DidChangeConfigurationParams) -> None:
        try:
            ls.apply_settings(params.settings)
        except Exception:
            log.exception("didChangeConfiguration failed")

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: CodefillServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.forget(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    @_guarded()
    async def inline_completion(
        ls: CodefillServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList | None:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        selected = params.context.selected_completion_info
        if selected is not None:
            return None  # the editor's own completion menu is open: stay out of its way
        found = await ls.suggest(params.text_document.uri, params.position, invoked=invoked)
        if not found:
            return None
        return types.InlineCompletionList(
            items=[types.InlineCompletionItem(insert_text=s.text, range=s.range) for s in found]
        )

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
    @_guarded(default=types.CompletionList(is_incomplete=True, items=[]))
    async def completion(ls: CodefillServer, params: types.CompletionParams) -> types.CompletionList:
        invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
        # One fill, not `candidates`: clients send completion requests made while typing as Invoked too (VS Code's
        # quick suggestions, Neovim's autotrigger), so Invoked here is no sign that the user asked.
        found = await ls.suggest(params.text_document.uri, params.position, debounce=not invoked,
                                 feature="completion")
        items = []
        for i, s in enumerate(found):
            first = s.text.strip().split("\n", 1)[0]
            label = first if len(first) <= 60 else first[:57] + "..."
            items.append(
                types.CompletionItem(
                    label=label or "(fill)",
                    kind=types.CompletionItemKind.Text,
                    detail="codefill",
                    sort_text=f"0{i}",
                    filter_text=s.text,
                    preselect=i == 0,
                    insert_text_format=types.InsertTextFormat.PlainText,
                    text_edit=types.TextEdit(range=s.range, new_text=s.text),
                )
            )
        return types.CompletionList(is_incomplete=True, items=items)

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.RefactorRewrite]),
    )
    @_guarded(default=[])
    async def code_action(ls: CodefillServer, params: types.CodeActionParams) -> list[types.CodeAction]:
        start, end = _sorted_range(params.range)
        if (start.line, start.character) == (end.line, end.character) or not ls.settings.enabled:
            return []
        kind = types.CodeActionKind.RefactorRewrite.value
        only = [str(getattr(k, "value", k)) for k in (params.context.only or [])]
        if only and not any(kind == k or kind.startswith(k + ".") for k in only):
            return []  # the editor asked for other kinds of action (LSP: context.only)
        if not ls.known(params.text_document.uri):
            return []  # nothing to fill: a fill command for it would only fail
        rng = types.Range(start, end)
        return [
            types.CodeAction(
                title="Fill selection",
                kind=types.CodeActionKind.RefactorRewrite,
                command=types.Command(
                    title="Fill selection", command=FILL_COMMAND,
                    arguments=[params.text_document.uri, _range_json(rng)],
                ),
            )
        ]

    @server.command(FILL_COMMAND)
    async def fill_command(ls: CodefillServer, *args: Any) -> Any:
        if len(args) != 2 or not isinstance(args[0], str):
            raise JsonRpcInvalidParams.of(ValueError(f"{FILL_COMMAND} takes the arguments [uri, range], got "
                                                     f"{_described_arguments(args)}"))
        try:
            rng = _parse_range(args[1])
        except ValueError as exc:
            raise JsonRpcInvalidParams.of(exc)
        return await _fill_and_apply(ls, args[0], rng)

    @_guarded(default={"applied": False})
    async def _fill_and_apply(ls: CodefillServer, uri: str, rng: types.Range) -> dict[str, Any]:
        start, end = _sorted_range(rng)
        deadline = time.monotonic() + LOAD_WAIT_S
        while ls.engine_loading and time.monotonic() < deadline:  # asked for by hand: worth the wait
            await asyncio.sleep(0.05)
        generation = ls.generation_of(uri)
        found = await ls.suggest(uri, start, end, debounce=False, feature="command")
        if not found:
            return {"applied": False, "reason": ls.why_no_fill(uri, end)}
        edit = types.WorkspaceEdit(changes={uri: [types.TextEdit(range=found[0].range, new_text=found[0].text)]})
        if ls.generation_of(uri) != generation:
            return {"applied": False, "reason": "the document changed"}
        caps = ls.client_capabilities.workspace
        if not (caps is not None and caps.apply_edit):
            return {"applied": False, "reason": "the editor cannot apply edits (workspace/applyEdit)",
                    "text": found[0].text, "range": _range_json(found[0].range)}
        try:
            result = await asyncio.wait_for(ls.workspace_apply_edit_async(
                types.ApplyWorkspaceEditParams(edit=edit, label="Fill selection")), APPLY_EDIT_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("no answer to workspace/applyEdit in %d s", APPLY_EDIT_TIMEOUT_S)
            return {"applied": False, "reason": "the editor did not answer workspace/applyEdit",
                    "text": found[0].text}
        except JsonRpcException as exc:  # the editor answered with an error, or with what is not an answer
            return {"applied": False, "reason": f"workspace/applyEdit failed: {exc}", "text": found[0].text}
        applied = getattr(result, "applied", False) is True
        return {"applied": applied, "text": found[0].text}

    @server.feature(DOCUMENT_TEXT_REQUEST)
    def document_text(ls: CodefillServer, params: Any) -> dict[str, Any] | None:
        uri = getattr(params, "uri", None) if not isinstance(params, dict) else params.get("uri")
        try:
            docs = ls.workspace.text_documents
        except RuntimeError:  # pygls makes the workspace at initialize
            raise JsonRpcServerNotInitialized() from None
        doc = docs.get(doc_key(uri)) if isinstance(uri, str) else None
        return None if doc is None else {"text": doc.source, "version": doc.version}

    @server.feature(SERVER_STATE_REQUEST)
    def server_state(ls: CodefillServer, params: Any) -> dict[str, Any]:
        return ls.state()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: CodefillServer, params: Any) -> None:
        ls.cancel_all()
        ls.engine.close()  # a shared engine stays up for its other clients

    @server.feature(types.EXIT)
    def exit_(ls: CodefillServer, params: Any) -> None:
        ls.exit_code = 0 if ls.protocol._shutdown else 1  # LSP: exit without shutdown first is an error exit
        # pygls closes stdout next; requests still in flight are cancelled as the loop ends, and their answers
        # have nowhere to go. Without shutdown first, their fills were still queued for the engine thread, which
        # the interpreter waits for at exit.
        ls.protocol.closed = True
        ls.cancel_all()

    return server


__all__ = ["FILL_COMMAND", "CodefillServer", "make_server"]
