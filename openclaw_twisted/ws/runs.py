"""The runs started over WebSocket: remembered, reached again by key, and shown to every client."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .._json import dumps
from ..agents.events import FINAL_EVENTS, RunEvent, RunResult, TextDelta, to_json
from ..agents.runner import Run

#: Runs remembered for ``agent.wait`` and ``idempotencyKey`` after they end.
REMEMBERED_RUNS = 256
#: The shortest time between two ``assistant`` events of one run to an observer (OpenClaw
#: throttles its chat deltas the same way): the deltas in between go out merged as one.
BROADCAST_INTERVAL = 0.150


class Observer(Protocol):
    """What the broadcast needs of a connection."""

    @property
    def authenticated(self) -> bool: ...

    def takes_more(self) -> bool:
        """Whether a frame sent now would go straight to the socket (nothing waits)."""

    def send_encoded_event(self, event: str, payload: bytes) -> None:
        """An event whose payload is JSON already (encoded once for every observer)."""


C = TypeVar("C", bound=Observer)


@attrs.define
class Tracked:
    """A run started over WebSocket, remembered for ``agent.wait`` and idempotent repeats."""

    run: Run
    accepted_at: int
    ended_at: int | None = None


class _Watch:
    """One run's answer on its way to the observers: how much of it each has had."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        #: The deltas seen since the run was first watched (the first may be all before it).
        self.parts: list[str] = []
        self.latest: TextDelta | None = None
        #: How many of ``parts`` each observer has been sent.
        self.sent: dict[Observer, int] = {}
        self.flushed_at = float("-inf")
        self.timer: IDelayedCall | None = None

    def add(self, event: TextDelta, keeps_text: bool) -> None:
        if self.latest is None and keeps_text:
            # Watched from mid-run: the answer so far, joined once.
            self.parts.append(event.text)
        else:
            self.parts.append(event.delta)
        self.latest = event


class RunRegistry(Generic[C]):
    """
    The open connections and the runs they started: each run's owner gets its events through
    its own pulled pump; every other authenticated connection observes them here (best
    effort, bounded: ``assistant`` deltas merged at most every L{BROADCAST_INTERVAL}).
    """

    def __init__(self, clock: IReactorTime, now_ms: Callable[[], int]) -> None:
        #: When merged events go out (the edge's clock; a test may set a ``Clock``).
        self.clock = clock
        self._now_ms = now_ms
        #: The open connections (authenticated or not yet).
        self.connections: set[C] = set()
        self.runs: OrderedDict[str, Tracked] = OrderedDict()
        self._keys: OrderedDict[tuple[str, str], str] = OrderedDict()
        #: Which connection started each run whose events it is still pumping.
        self._owners: dict[str, C] = {}
        #: Runs whose ``assistant`` events observers get merged, by run id.
        self._watches: dict[str, _Watch] = {}

    # Idempotency and agent.wait.

    def by_key(self, kind: str, key: str) -> Tracked | None:
        """The run an earlier request of ``kind`` with this ``idempotencyKey`` started."""
        run_id = self._keys.get((kind, key))
        return self.runs.get(run_id) if run_id is not None else None

    def remember(self, tracked: Tracked, kind: str, key: str | None) -> None:
        run_id = tracked.run.run_id
        self.runs[run_id] = tracked
        if key is not None:
            self._keys[(kind, key)] = run_id

        def ended(result: RunResult) -> None:
            tracked.ended_at = self._now_ms()

        tracked.run.wait().addCallback(ended)
        while len(self.runs) > REMEMBERED_RUNS:
            self.runs.popitem(last=False)
        while len(self._keys) > REMEMBERED_RUNS:
            self._keys.popitem(last=False)

    # Ownership: the owner is not an observer of its own run.

    def own(self, run_id: str, conn: C) -> None:
        """``conn`` pumps ``run_id``'s events itself (call before the run starts)."""
        self._owners[run_id] = conn

    def disown(self, run_id: str) -> None:
        self._owners.pop(run_id, None)

    def observers(self, run_id: str) -> list[C]:
        owner = self._owners.get(run_id)
        return [c for c in self.connections if c.authenticated and c is not owner]

    # The broadcast (a runner listener).

    def broadcast(self, run: Run, event: RunEvent) -> None:
        """Every run's events go to every other authenticated client (best effort, bounded)."""
        run_id = run.run_id
        watch = self._watches.get(run_id)
        if isinstance(event, TextDelta):
            if watch is None:
                if not self.observers(run_id):
                    return
                watch = self._watches[run_id] = _Watch(run_id)
            watch.add(event, run.request.keep_text or run.request.persist)
            if watch.timer is None:
                due = watch.flushed_at + BROADCAST_INTERVAL - self.clock.seconds()
                if due <= 0:
                    self._flush(watch)
                else:
                    watch.timer = self.clock.callLater(due, self._flush, watch)
            return
        if watch is not None:
            # Whatever was held back goes out before the next event (a tool's, the end), to
            # every observer, so they see the run in order.
            self._flush(watch, force=True)
            if isinstance(event, FINAL_EVENTS):
                del self._watches[run_id]
        observers = self.observers(run_id)
        if observers:
            payload = dumps(to_json(event))
            for conn in observers:
                conn.send_encoded_event("agent", payload)

    def relay(self, payload: Mapping[str, Any]) -> None:
        """Another gateway's run event (merged already): to every authenticated client."""
        conns = [c for c in self.connections if c.authenticated]
        if conns:
            encoded = dumps(payload)
            for conn in conns:
                conn.send_encoded_event("agent", encoded)

    def _flush(self, watch: _Watch, force: bool = False) -> None:
        """
        One ``assistant`` event to each observer, its ``delta`` all the deltas it has not had
        yet. An observer whose socket is backed up is passed over until it drains (tried
        again an interval later) instead of queueing more; ``force`` sends to every one.
        """
        if watch.timer is not None:
            if watch.timer.active():
                watch.timer.cancel()
            watch.timer = None
        latest = watch.latest
        if latest is None:
            return
        watch.flushed_at = self.clock.seconds()
        count = len(watch.parts)
        groups: dict[int, list[C]] = {}
        behind = False
        for conn in self.observers(watch.run_id):
            had = watch.sent.get(conn, 0)
            if had >= count:
                continue
            if not force and not conn.takes_more():
                behind = True
                continue
            groups.setdefault(had, []).append(conn)
        for had, conns in groups.items():
            payload = dumps(
                {
                    "runId": latest.run_id,
                    "seq": latest.seq,
                    "ts": latest.ts,
                    "sessionKey": latest.session_key,
                    "stream": "assistant",
                    "data": {"delta": "".join(watch.parts[had:])},
                }
            )
            for conn in conns:
                conn.send_encoded_event("agent", payload)
                watch.sent[conn] = count
        if behind and not force:
            watch.timer = self.clock.callLater(BROADCAST_INTERVAL, self._flush, watch)
