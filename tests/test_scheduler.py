"""The scheduler: batching, newest-wins per document, cancellation, errors reach the caller."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engine.api import Engine, FillRequest
from engine.errors import FillCancelled
from engine.scheduler import Scheduler


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine.from_pretrained(tiny_model_dir, steps=4)


class Recorder:
    """Wraps an engine: records batch sizes and can hold the first batch until released."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sizes: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def fill_batch(self, reqs):  # type: ignore[no-untyped-def]
        self.sizes.append(len(reqs))
        self.started.set()
        self.release.wait(10)
        return self.engine.fill_batch(reqs)


def test_requests_arriving_together_share_a_batch(engine: Engine) -> None:
    rec = Recorder(engine)
    rec.release.clear()
    s = Scheduler(rec, gather_ms=0)  # type: ignore[arg-type]
    first = s.submit(FillRequest("a = ", "\n", 4))
    assert rec.started.wait(10)
    rest = [s.submit(FillRequest(f"x{i} = ", "\n", 4)) for i in range(5)]
    rec.release.set()
    assert all(f.result(30).forward_passes >= 1 for f in [first, *rest])
    assert rec.sizes == [1, 5]
    s.close()


def test_newer_request_for_the_same_document_wins(engine: Engine) -> None:
    rec = Recorder(engine)
    rec.release.clear()
    s = Scheduler(rec, gather_ms=0)  # type: ignore[arg-type]
    blocker = s.submit(FillRequest("b = ", "\n", 4), key="other.py")
    assert rec.started.wait(10)
    old = s.submit(FillRequest("x = ", "\n", 4), key="doc.py")
    new = s.submit(FillRequest("x = 1", "\n", 4), key="doc.py")
    rec.release.set()
    with pytest.raises(FillCancelled):
        old.result(30)
    assert new.result(30).span_len == 4
    assert blocker.result(30)
    s.close()


def test_running_request_is_cancelled_by_a_newer_one(engine: Engine) -> None:
    rec = Recorder(engine)
    rec.release.clear()
    s = Scheduler(rec, gather_ms=0)  # type: ignore[arg-type]
    running = s.submit(FillRequest("y = ", "\n", 4), key="doc.py")
    assert rec.started.wait(10)
    newer = s.submit(FillRequest("y = 2", "\n", 4), key="doc.py")
    rec.release.set()
    with pytest.raises(FillCancelled):
        running.result(30)
    assert newer.result(30)
    s.close()


def test_queued_future_can_be_cancelled(engine: Engine) -> None:
    rec = Recorder(engine)
    rec.release.clear()
    s = Scheduler(rec, gather_ms=0)  # type: ignore[arg-type]
    s.submit(FillRequest("c = ", "\n", 4))
    assert rec.started.wait(10)
    queued = s.submit(FillRequest("d = ", "\n", 4))
    assert queued.cancel()
    rec.release.set()
    assert queued.cancelled()
    s.close()


def test_engine_errors_reach_the_caller(engine: Engine) -> None:
    s = Scheduler(engine, gather_ms=0)
    with pytest.raises(ValueError):
        s.fill(FillRequest("x", "y", 0), timeout=30)
    assert s.fill(FillRequest("x = ", "\n", 4), timeout=30).span_len == 4  # and the worker lives on
    s.close()
