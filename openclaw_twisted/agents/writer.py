"""Group commit: blocking file writes on the reactor's thread pool, one at a time per file."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")

#: At most this many write jobs (each one or more files) run at once on the reactor's pool,
#: so session writes never take every pool thread (DNS lookups and reads use it too).
WRITERS = 4

Take = Callable[[str], tuple[Callable[[], Any], list[Deferred[Any]]]]


def in_thread(reactor: Any, f: Callable[..., T], *args: Any) -> Deferred[T]:
    """
    ``f(*args)`` on the reactor's thread pool, its result delivered on the reactor thread;
    without a reactor, at once on the caller's thread (the Deferred has fired on return).
    """
    if reactor is None:
        try:
            return succeed(f(*args))
        except BaseException:
            return fail(Failure())
    d: Deferred[T] = Deferred()

    def work() -> None:
        try:
            result = f(*args)
        except BaseException:
            reactor.callFromThread(d.errback, Failure())
        else:
            reactor.callFromThread(d.callback, result)

    reactor.callInThread(work)
    return d


class GroupWriter:
    """
    Writes run one at a time per key (a file), off the caller's thread; what is queued for a
    key while its write + fsync is in flight goes to disk together in the next one. At most
    ``limit`` jobs run at once; each writes one or more keys.

    ``take(key)`` (called on the reactor thread when a write for ``key`` may start) returns
    the blocking job and the Deferreds it settles with its result; the job runs on the
    reactor's thread pool, its Deferreds fire on the reactor thread. Without a reactor every
    job runs at once on the caller's thread, and its Deferreds have fired when ``dirty``
    returns (tests, ``agent --local``, embedding).
    """

    def __init__(self, reactor: Any, take: Take, limit: int = WRITERS) -> None:
        self._reactor = reactor
        self._take = take
        self._limit = limit
        self._queued: OrderedDict[str, None] = OrderedDict()
        self._busy: set[str] = set()
        self._jobs = 0
        self._idle: list[Deferred[None]] = []
        self._quiet: dict[str, list[Deferred[None]]] = {}

    @property
    def threaded(self) -> bool:
        return self._reactor is not None

    def busy(self, key: str) -> bool:
        """Whether a write of ``key`` is queued or in flight (the file is behind memory)."""
        return key in self._busy or key in self._queued

    def dirty(self, key: str) -> None:
        """``key`` has something to write: start a job for it now or after the one in flight."""
        if self._reactor is None:
            job, waiters = self._take(key)
            _settle(waiters, _run(job))
            return
        self._queued[key] = None
        self._pump()

    def idle(self) -> Deferred[None]:
        """Fires once nothing is queued or being written."""
        if not self._queued and not self._busy:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def quiet(self, key: str) -> Deferred[None]:
        """Fires once nothing is queued or being written for ``key`` (the file is current)."""
        if not self.busy(key):
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._quiet.setdefault(key, []).append(d)
        return d

    def _pump(self) -> None:
        # The keys waiting are shared out among the free jobs: under load one job (one
        # hand-off to the pool and one back) writes many files, one fsync each.
        free = self._limit - self._jobs
        ready = [key for key in self._queued if key not in self._busy]
        if free <= 0 or not ready:
            return
        batches: list[list[tuple[str, Callable[[], Any], list[Deferred[Any]]]]] = [
            [] for _ in range(min(free, len(ready)))
        ]
        for i, key in enumerate(ready):
            del self._queued[key]
            self._busy.add(key)
            job, waiters = self._take(key)
            batches[i % len(batches)].append((key, job, waiters))
        for batch in batches:
            self._jobs += 1
            self._reactor.callInThread(self._work, batch)

    def _work(self, batch: list[tuple[str, Callable[[], Any], list[Deferred[Any]]]]) -> None:
        # On a pool thread: only the blocking I/O; every state change is on the reactor thread.
        outcomes = [(key, waiters, _run(job)) for key, job, waiters in batch]
        self._reactor.callFromThread(self._done, outcomes)

    def _done(self, outcomes: list[tuple[str, list[Deferred[Any]], Any]]) -> None:
        self._jobs -= 1
        for key, waiters, outcome in outcomes:
            self._busy.discard(key)
            _settle(waiters, outcome)
        self._pump()
        for key, _, _ in outcomes:
            if not self.busy(key):
                for d in self._quiet.pop(key, []):
                    d.callback(None)
        if not self._queued and not self._busy:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)


def _run(job: Callable[[], Any]) -> Any:
    try:
        return job()
    except BaseException:
        return Failure()


def _settle(waiters: list[Deferred[Any]], outcome: Any) -> None:
    for d in waiters:
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)
