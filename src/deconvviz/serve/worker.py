"""One thread per device for the model's work, off the event loop, newest request first.

Every computation on the model runs on :class:`ModelWorker`'s single thread, one at a time, so
the engine is never entered from two threads at once and a burst of clicks cannot oversubscribe
the device. A request may carry a *stream key* (the page's id and what it asks for, e.g.
``"tab-3/projection"``) and a sequence number; when its turn comes and a newer request of the
same stream has arrived meanwhile, it is dropped (:class:`Superseded`) instead of computed, so
fast clicking never queues a backlog. :attr:`ModelWorker.idle` is set while nothing is queued or
running: the background scan waits on it, so it only uses the device between requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["ModelWorker", "Superseded"]

T = TypeVar("T")


class Superseded(Exception):
    """A newer request of the same stream arrived before this one ran."""


class ModelWorker:
    """Runs jobs one at a time on one thread.

    Args:
        name: the thread's name (the device, say).
        max_streams: stream keys remembered (the oldest are forgotten beyond this).
    """

    def __init__(self, name: str = "model", max_streams: int = 4096) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"deconvviz-{name}")
        self._lock = threading.Lock()
        self._latest: dict[str, int] = {}
        self._max_streams = max_streams
        self._pending = 0
        self.idle = threading.Event()
        self.idle.set()
        #: jobs dropped because a newer one of their stream came first (for tests and the log)
        self.dropped = 0
        self.done = 0

    def _note(self, stream: str | None, seq: int | None) -> None:
        if stream is None or seq is None:
            return
        with self._lock:
            if seq > self._latest.get(stream, -1):
                self._latest.pop(stream, None)  # re-insert: dict order = recency
                self._latest[stream] = seq
                while len(self._latest) > self._max_streams:
                    self._latest.pop(next(iter(self._latest)))

    def _stale(self, stream: str | None, seq: int | None) -> bool:
        if stream is None or seq is None:
            return False
        with self._lock:
            return self._latest.get(stream, seq) > seq

    def submit(
        self, fn: Callable[..., T], *args: Any, stream: str | None = None, seq: int | None = None
    ) -> Any:
        """Queue ``fn(*args)``; returns a ``concurrent.futures.Future``."""
        self._note(stream, seq)
        with self._lock:
            self._pending += 1
            self.idle.clear()

        def job() -> T:
            if self._stale(stream, seq):
                self.dropped += 1
                raise Superseded(f"superseded by a newer request of {stream}")
            out = fn(*args)
            self.done += 1
            return out

        try:
            future = self._pool.submit(job)
        except RuntimeError:  # shut down
            self._finished(None)
            raise
        future.add_done_callback(self._finished)  # also when cancelled before it ran
        return future

    def _finished(self, _: Any) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self.idle.set()

    async def run(
        self, fn: Callable[..., T], *args: Any, stream: str | None = None, seq: int | None = None
    ) -> T:
        """``fn(*args)`` on the worker thread, awaited from the event loop (a job whose
        awaiting request was cancelled before it started is not run)."""
        return await asyncio.wrap_future(self.submit(fn, *args, stream=stream, seq=seq))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the worker thread, waited for from a plain thread."""
        return self.submit(fn, *args).result()

    def close(self) -> None:
        """Finish the running job, drop the queued ones, stop the thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.idle.set()
