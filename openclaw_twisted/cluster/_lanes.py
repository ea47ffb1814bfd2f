"""Session lanes across gateways: first in line here, then a ``RedisLease`` on the session."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..agents.lanes import ILaneLock, LocalLanes, Release
from ._client import IRedis
from ._lease import RedisLease

log = Logger()

#: The lease on a session while one of its turns runs (renewed every third of it): how long
#: a session stays locked after the gateway running its turn dies.
DEFAULT_LEASE_SECONDS = 30.0
#: How soon a turn waiting for another gateway's lease asks again, at first and at most.
RETRY_FIRST, RETRY_MAX = 0.005, 0.1


@implementer(ILaneLock)
@attrs.define
class RedisLanes:
    """
    A kept session's turns run one at a time over every gateway on one Redis: a turn first
    waits for the turns queued before it on this gateway (no Redis traffic for those), then
    takes the session's lease (``SET NX PX``), asking again with a backoff while another
    gateway holds it.  The lease is renewed while the turn runs; a gateway that dies stops
    renewing and the session is free again within ``ttl``.  A session nobody keeps (a
    stateless request's own key) needs no lease.
    """

    redis: IRedis
    clock: IReactorTime
    ttl: float = DEFAULT_LEASE_SECONDS
    prefix: str = "openclaw:lane:"
    local: LocalLanes = attrs.Factory(LocalLanes)

    def acquire(
        self, key: str, shared: bool = True, on_lost: Callable[[], object] | None = None
    ) -> Deferred[Release]:
        if not shared:
            return self.local.acquire(key)
        return _Acquiring(self, key, on_lost).start()

    def lease(self, key: str) -> RedisLease:
        name = self.prefix + json.dumps(key, ensure_ascii=False)
        return RedisLease(self.redis, self.clock, name, self.ttl)


class _Acquiring:
    """One turn on its way into a lane; cancelling it at any step leaves nothing held."""

    def __init__(self, lanes: RedisLanes, key: str, on_lost: Callable[[], object] | None):
        self.lanes = lanes
        self.key = key
        self.on_lost = on_lost
        self.result: Deferred[Release] = Deferred(self._cancel)
        self.lease = lanes.lease(key)
        self.local: Release | None = None
        self.step: Deferred[Any] | None = None
        self.timer: IDelayedCall | None = None
        self.wait = RETRY_FIRST
        self.cancelled = False

    def start(self) -> Deferred[Release]:
        self.step = self.lanes.local.acquire(self.key)
        self.step.addCallbacks(self._local_taken, self._failed)
        return self.result

    def _local_taken(self, release: Release) -> None:
        self.step = None
        self.local = release
        self._try()

    def _try(self) -> None:
        self.timer = None
        d = self.step = self.lease.acquire()
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, taken: bool) -> None:
        self.step = None
        if self.cancelled:
            if taken:
                self._release().addErrback(lambda _: None)
            else:
                self._drop_local()
            return
        if not taken:
            self.timer = self.lanes.clock.callLater(self.wait, self._try)
            self.wait = min(self.wait * 2, RETRY_MAX)
            return
        if self.on_lost is not None:
            on_lost = self.on_lost
            self.lease.lost.addCallback(lambda _: on_lost())
        self.result.callback(self._release)

    def _release(self) -> Deferred[None]:
        local, self.local = self.local, None
        d: Deferred[Any] = self.lease.release()

        def next_turn(outcome: object) -> None:
            if local is not None:
                local()
            if isinstance(outcome, Failure):
                # The lease runs out by itself; the next turn here waits for it at worst.
                log.warn(
                    "could not release the lane of {key}: {why}", key=self.key, why=outcome.value
                )

        return d.addBoth(next_turn)

    def _failed(self, failure: Failure) -> None:
        self.step = None
        self._drop_local()
        if not self.cancelled:
            self.result.errback(failure)

    def _drop_local(self) -> None:
        local, self.local = self.local, None
        if local is not None:
            local()

    def _cancel(self, _: Deferred[Release]) -> None:
        self.cancelled = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
            self.timer = None
            self._drop_local()
        elif self.step is not None and self.local is None:
            # Still queued on this gateway: leave the queue.
            step, self.step = self.step, None
            step.cancel()
        # A lease request in flight: its answer sees ``cancelled`` and gives back what it got.
        # The result fails with CancelledError (Deferred's default when a canceller does not
        # fire it).
