"""JSON-RPC on the wire: framing that survives a broken header, and an answer for every malformed message."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from cattrs import ClassValidationError, transform_error
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol

log = logging.getLogger("codefill.server")

MAX_HEADER_LINE_BYTES = 1024 * 1024  # a TCP connection's read buffer for one line
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a longer Content-Length is taken for a broken header

# JSON-RPC error codes that say the client sent something wrong: answered as such, not the server's failure.
CLIENT_ERROR_CODES = frozenset({-32700, -32600, -32601, -32602, -32002})


def is_client_error(error: BaseException | None) -> bool:
    """Whether an error raised by a handler is an answer to bad input (invalid params, unknown command, ...)."""
    return isinstance(error, JsonRpcException) and error.code in CLIENT_ERROR_CODES


class ClientErrorFilter(logging.Filter):
    """Drops pygls's "Exception occurred" records (with a traceback, at ERROR) for errors that answer bad input:
    the client gets its error response and the server logs one warning line (CodefillServer.report_server_error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and is_client_error(record.exc_info[1]))


CLIENT_ERROR_FILTER = ClientErrorFilter()


class CodefillProtocol(LanguageServerProtocol):
    """pygls's protocol, but every request gets an answer: one whose params do not parse, one that comes after
    shutdown, and one that is not a proper JSON-RPC request (a batch, a bare value, no "jsonrpc": "2.0", an id
    that is neither an integer nor a string) get an error response, not silence."""

    closed = False  # set at exit, or when the client's end is gone: nothing more is written
    _initialize_seen = False  # an initialize request came (answered or not): the next one is refused

    def structure_message(self, data: dict[str, Any]) -> Any:
        """Called by json.loads for every object of a message, innermost first: keep them plain. pygls turned any
        object with a "jsonrpc" key into a message, so params holding one were answered as a request of their own
        and the request itself never was; a message is structured whole in handle_message instead."""
        return data

    def handle_message(self, message: Any) -> None:
        if isinstance(message, list):
            self._reject_batch(message)
            return
        if not isinstance(message, dict):
            self._invalid(None, f"a message is a JSON object, not {type(message).__name__}")
            return
        has_id = "id" in message
        msg_id = message.get("id")
        answer_to = msg_id if _valid_id(msg_id) else None
        if "method" not in message:
            if has_id and ("result" in message or "error" in message):  # an answer to a request of ours
                self._dispatch(message, None)
            else:
                self._invalid(answer_to, "neither a request, a notification nor a response")
            return
        method = message["method"]
        problem = None
        if not isinstance(method, str):
            problem = f"method must be a string, not {method!r}"
        elif message.get("jsonrpc") != "2.0":
            problem = f'{method}: "jsonrpc" must be "2.0"'
        elif has_id and answer_to is None:
            problem = f"{method}: id must be an integer or a string, not {msg_id!r}"
        if problem is not None:
            if has_id:
                self._invalid(answer_to, problem)
            else:
                log.warning("dropped a notification: %s", problem)
            return
        if method == types.INITIALIZE and has_id:
            if self._initialize_seen:
                self._invalid(answer_to, "initialize: the server is already initialized")
                return
            self._initialize_seen = True
        elif not self._initialize_seen and method != types.EXIT:
            # LSP: before initialize, a request gets ServerNotInitialized and a notification is dropped.
            if has_id:
                log.warning("%s before initialize: answered with an error", method)
                self._send_response(msg_id, error=types.ResponseError(
                    code=types.ErrorCodes.ServerNotInitialized, message=f"{method}: the server is not initialized"))
            else:
                log.warning("dropped %s: it came before initialize", method)
            return
        if self._shutdown and has_id and method != types.EXIT:
            log.warning("%s after shutdown: answered with an error", method)
            self._send_response(msg_id, error=types.ResponseError(
                code=types.ErrorCodes.InvalidRequest, message=f"{method}: the server is shutting down"))
            return
        self._dispatch(message, answer_to)

    def _execute_handler(self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None) -> None:
        """pygls's, but each handler's entry in _request_futures goes when it is done. pygls removes only a client
        request's (when it answers it); a notification handler that is a coroutine or a generator (didOpen,
        didChange, didClose: pygls's own) and the handler a generator runs (workspace/executeCommand) stayed, under
        a fresh uuid: one Future per keystroke, for the whole session."""
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        future = self._request_futures.get(msg_id)
        if future is not None:
            future.add_done_callback(functools.partial(self._forget_future, msg_id))

    def _forget_future(self, msg_id: Any, future: Any) -> None:
        if self._request_futures.get(msg_id) is future:  # not a newer request that reuses the id
            del self._request_futures[msg_id]

    def _dispatch(self, data: dict[str, Any], msg_id: Any) -> None:
        """Structure a whole message and hand it to pygls; params that do not parse get an error answer."""
        if "params" not in data and "method" in data:
            data = {**data, "params": None}  # JSON-RPC lets params be left out; pygls's types want the member
        try:
            message = super().structure_message(data)
        except JsonRpcException as exc:
            detail = _validation_detail(exc.__cause__)
            if "method" not in data and _valid_id(data.get("id")):
                # An answer to a request of ours whose result is not of its type: the request fails now (it used
                # to be dropped, and whoever waited for the answer waited out its timeout).
                log.warning("the client's answer to request %r does not parse: %s", data["id"], detail or exc)
                self._result_types.pop(data["id"], None)
                self._handle_response(data["id"], error=types.ResponseError(
                    code=types.ErrorCodes.InvalidParams,
                    message=f"the client's answer does not parse: {detail or exc}"))
                return
            if msg_id is None or "method" not in data:
                log.warning("dropped a message that does not parse (%s): %s", data.get("method"), detail or exc)
                return
            log.warning("invalid params for %s (id %r): %s", data.get("method"), msg_id, detail)
            error = exc.to_response_error()
            if detail:
                error.message = f"{error.message}: {detail}"
            self._send_response(msg_id, error=error)
            return
        super().handle_message(message)

    def _reject_batch(self, batch: list[Any]) -> None:
        """LSP has no batches: each request in one gets an error (so no client waits on it), or the batch one."""
        ids = [m["id"] for m in batch if isinstance(m, dict) and "method" in m and _valid_id(m.get("id"))]
        for msg_id in ids:
            self._invalid(msg_id, "batch requests are not supported")
        if not ids:
            self._invalid(None, "batch requests are not supported")

    def _invalid(self, msg_id: Any, message: str) -> None:
        log.warning("invalid request (id %r): %s", msg_id, message)
        self._send_data({"jsonrpc": "2.0", "id": msg_id,
                         "error": {"code": int(types.ErrorCodes.InvalidRequest), "message": message}})

    def _send_data(self, data: Any) -> None:
        """Send, unless the output is closed: after exit, or with the client gone. pygls wrote anyway; the write
        failed, the failure was reported, the report was logged, and the log was sent to the client, which failed
        again: at exit with a request in flight the server spun on one core and never exited."""
        if self.closed or _writer_closed(self.writer):
            self.closed = True
            return
        try:
            super()._send_data(data)
        except BrokenPipeError:
            self.closed = True


def _valid_id(msg_id: Any) -> bool:
    """LSP request ids are integers or strings (JSON-RPC allows null, but no answer could be told apart)."""
    return isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool)


def _writer_closed(writer: Any) -> bool:
    """Whether pygls's writer can no longer write (its stdout closed, or a TCP connection closing)."""
    stream = getattr(writer, "_stdout", None)  # pygls.io_.StdoutWriter
    if stream is not None:
        return bool(getattr(stream, "closed", False))
    is_closing = getattr(writer, "is_closing", None)  # asyncio.StreamWriter
    return bool(is_closing()) if callable(is_closing) else False


def _validation_detail(cause: BaseException | None) -> str:
    """What was wrong with a message's params, in cattrs' words ("expected int @ $.params.position.line")."""
    if not isinstance(cause, ClassValidationError):
        return ""
    return "; ".join(transform_error(cause, path="$")[:3])


def _header_line(line: bytes) -> bytes:
    """A header line, cut back to "Content-Length:" where bytes of a broken message come before it."""
    cut = line.find(b"Content-Length:")
    if cut > 0:
        log.warning("dropped %d bytes of a broken message before the next header", cut)
        return line[cut:]
    return line


def _body_too_long(n: int) -> bool:
    """A Content-Length beyond MAX_MESSAGE_BYTES is not read (it would be allocated up front: 99999999999999999999
    raised OverflowError in the read loop and the server died): the message is answered as unreadable and the next
    header found as after a broken one."""
    if n > MAX_MESSAGE_BYTES:
        log.warning("a message of %d bytes (Content-Length) is over the limit of %d: skipped", n, MAX_MESSAGE_BYTES)
        return True
    return False


class FramingGuard:
    """stdin for pygls that finds the next message after a broken header.

    pygls reads header lines until one is exactly "Content-Length: N". After a header it cannot read, the body
    that follows ends without a line break, so every later header is glued to a body and never matches: one bad
    frame deafened the server for good. Here a line with "Content-Length:" after other bytes is cut back to it.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def readline(self) -> bytes:
        return _header_line(self.stream.readline())

    def read(self, n: int) -> bytes:
        """A body of n bytes, or one space (unreadable) for a Content-Length over the limit."""
        return b" " if _body_too_long(n) else self.stream.read(n)


class AsyncFramingGuard:
    """FramingGuard for a TCP connection's asyncio.StreamReader. A connection that resets or ends in the middle
    of a message reads as the end of the input (pygls's loop raised, and the server went on with no client)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    async def readline(self) -> bytes:
        try:
            return _header_line(await self.reader.readline())
        except ValueError:  # a line over the reader's limit, dropped: not a header, not the end of the headers
            log.warning("dropped a line over %d bytes where a header belonged", MAX_HEADER_LINE_BYTES)
            return b"-\n"
        except (ConnectionError, asyncio.IncompleteReadError):
            return b""

    async def readexactly(self, n: int) -> bytes:
        if _body_too_long(n):
            return b" "
        try:
            return await self.reader.readexactly(n)
        except (ConnectionError, asyncio.IncompleteReadError):
            return b""
