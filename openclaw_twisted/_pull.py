"""A bounded pull queue: the one mechanism that carries backpressure to a producer."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")


class QueueClosed(Exception):
    """Raised by ``get`` after the queue was closed and drained."""


class PullQueue(Generic[T]):
    """
    Items go in with ``put``; a consumer takes them one at a time with ``get``.

    When more than ``high`` items wait, ``pause`` is called (stop the source); when the
    consumer brings them down to ``low``, ``resume`` is called.  ``finish`` ends the queue
    (``get`` then yields ``None``); ``fail`` ends it with an error, delivered after any items
    already queued, so nothing a consumer could still take is lost.
    """

    def __init__(
        self,
        high: int = 32,
        low: int = 8,
        pause: Callable[[], object] | None = None,
        resume: Callable[[], object] | None = None,
    ) -> None:
        self._items: deque[T] = deque()
        self._waiting: Deferred[T | None] | None = None
        self._end: Failure | None = None
        self._ended = False
        self._paused = False
        self._high = high
        self._low = low
        self._pause = pause
        self._resume = resume
        self._room: list[Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ended(self) -> bool:
        return self._ended

    def put(self, item: T) -> None:
        """Hand ``item`` to a waiting consumer, or queue it (pausing the source when full)."""
        if self._ended:
            return
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.callback(item)
            return
        self._items.append(item)
        if len(self._items) > self._high and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()

    def has_room(self) -> bool:
        """Whether no more than ``low`` items wait (or the queue ended): ``room()`` now."""
        return len(self._items) <= self._low or self._ended

    def room(self) -> Deferred[None]:
        """Fire once no more than ``low`` items wait: a pull-based producer awaits this."""
        if self.has_room():
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._room.remove(d))
        self._room.append(d)
        return d

    def finish(self) -> None:
        """End the stream normally; ``get`` yields ``None`` once the items are taken."""
        self._close(None)

    def fail(self, reason: Failure | BaseException) -> None:
        """End the stream with an error, raised by ``get`` once the items are taken."""
        self._close(reason if isinstance(reason, Failure) else Failure(reason))

    def _close(self, end: Failure | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._end = end
        waiting, self._room = self._room, []
        for d in waiting:
            d.callback(None)
        if self._waiting is not None and not self._items:
            d2, self._waiting = self._waiting, None
            if end is None:
                d2.callback(None)
            else:
                d2.errback(end)

    def get(self) -> Deferred[T | None]:
        """The next item, ``None`` at the normal end; fails with the error given to ``fail``."""
        if self._waiting is not None:
            return fail(RuntimeError("PullQueue.get: one consumer at a time"))
        if self._items:
            item = self._items.popleft()
            self._drained()
            return succeed(item)
        if self._ended:
            return succeed(None) if self._end is None else fail(self._end)

        def cancel(d: Deferred[T | None]) -> None:
            if self._waiting is d:
                self._waiting = None

        self._waiting = Deferred(cancel)
        return self._waiting

    def _drained(self) -> None:
        if len(self._items) > self._low:
            return
        if self._paused:
            self._paused = False
            if self._resume is not None:
                self._resume()
        waiting, self._room = self._room, []
        for d in waiting:
            d.callback(None)
