"""Queue, batching and cancellation in front of an Engine: the newest request per key (document) wins."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from engine.api import Engine, Fill, FillRequest
from engine.errors import FillCancelled


@dataclass
class _Job:
    request: FillRequest
    key: str | None
    future: Future
    cancel: threading.Event = field(default_factory=threading.Event)

    def batch_key(self) -> tuple:
        r = self.request
        return (r.single_line, r.steps, r.temperature, r.seed)


class Scheduler:
    """Runs fills on one worker thread, batching compatible requests that arrive together."""

    def __init__(self, engine: Engine, max_batch: int = 8, gather_ms: float = 1.0) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.gather_s = gather_ms / 1000
        self._queue: list[_Job] = []
        self._running: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="codefill-scheduler", daemon=True)
        self._worker.start()

    def submit(self, request: FillRequest, key: str | None = None) -> Future:
        """Queue a fill; a queued or running request with the same key is cancelled. Returns a Future[Fill]."""
        job = _Job(request, key, Future())
        request.cancel = job.cancel
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            if key is not None:
                for old in [j for j in self._queue if j.key == key]:
                    self._queue.remove(old)
                    _fail(old, FillCancelled("superseded by a newer request"))
                for old in self._running:
                    if old.key == key:
                        old.cancel.set()
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def fill(self, request: FillRequest, key: str | None = None, timeout: float | None = None) -> Fill:
        """Submit and wait."""
        return self.submit(request, key).result(timeout)

    def pending(self) -> int:
        """Requests queued, not yet running."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Cancel what is queued and stop the worker."""
        with self._cond:
            self._closed = True
            for job in self._queue:
                _fail(job, FillCancelled("scheduler closed"))
            self._queue.clear()
            self._cond.notify()
        self._worker.join(timeout=5)

    def _take_batch(self) -> list[_Job]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
        if self.gather_s:
            time.sleep(self.gather_s)  # let requests that arrive together share a batch
        with self._cond:
            live = [j for j in self._queue if not j.future.cancelled()]
            if not live:
                self._queue.clear()
                return []
            first = live[0].batch_key()
            batch = [j for j in live if j.batch_key() == first][: self.max_batch]
            for j in batch:
                self._queue.remove(j)
            self._queue = [j for j in self._queue if not j.future.cancelled()]
            self._running = batch
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                with self._cond:
                    if self._closed:
                        return
                continue
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            try:
                fills = self.engine.fill_batch([j.request for j in batch]) if batch else []
                for job, fill in zip(batch, fills):
                    if job.cancel.is_set():
                        job.future.set_exception(FillCancelled("superseded by a newer request"))
                    else:
                        job.future.set_result(fill)
            except BaseException as exc:  # every waiter gets an answer, whatever happened
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                with self._cond:
                    self._running = []


def _fail(job: _Job, exc: Exception) -> None:
    job.cancel.set()
    if job.future.set_running_or_notify_cancel():
        job.future.set_exception(exc)
