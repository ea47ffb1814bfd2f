"""Per-connection send buffer: a push producer on the socket with a hard byte limit."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Outbox:
    """
    Frames go straight to the socket while it takes them; once the transport's own buffer is
    full (it pauses us), they wait here. More than ``limit`` bytes waiting means the client
    is not reading: ``overflow`` is called once and everything queued is dropped.

    ``writable()`` lets a pulling producer (a run's event pump) wait until the socket drains,
    so a slow reader pauses the run instead of growing this buffer.
    """

    def __init__(
        self, write: Callable[[bytes], object], limit: int, overflow: Callable[[], object]
    ) -> None:
        self._write = write
        self._limit = limit
        self._overflow = overflow
        self._queue: deque[bytes] = deque()
        self._waiting: list[Deferred[None]] = []
        self.buffered = 0
        #: The most bytes ever waiting here (for tests and diagnostics).
        self.peak = 0
        self.paused = False
        self.closed = False

    @property
    def idle(self) -> bool:
        """Open, not paused, and nothing waiting: a frame sent now goes straight out."""
        return not self.closed and not self.paused and not self._queue

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.paused and not self._queue:
            self._write(data)
            return
        self._queue.append(data)
        self.buffered += len(data)
        self.peak = max(self.peak, self.buffered)
        if self.buffered > self._limit:
            self.close()
            self._overflow()

    def writable(self) -> Deferred[None]:
        """Fires once nothing waits here and the socket is not paused (at once if closed)."""
        if self.closed or (not self.paused and not self._queue):
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def close(self) -> None:
        """Drop what waits; later sends are discarded and waiters are released."""
        self.closed = True
        self._queue.clear()
        self.buffered = 0
        self._release()

    def _release(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    # IPushProducer, driven by the transport's buffer.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        # Writing may pause us again synchronously; stop there and wait for the next resume.
        while self._queue and not self.paused and not self.closed:
            data = self._queue.popleft()
            self.buffered -= len(data)
            self._write(data)
        if not self.paused and not self._queue:
            self._release()

    def stopProducing(self) -> None:
        self.close()
