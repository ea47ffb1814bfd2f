"""A per-key lock with a lease in Redis: SET NX PX and a token, renewed while held."""

from __future__ import annotations

import secrets

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ._client import IRedis, RedisUnavailable

# Only the holder's token may extend or drop the key: a holder whose lease ran out (a long GC
# pause, a partition) must not free or keep a key that another holder has taken since.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class ILease(Interface):
    """Exclusive hold of one key, for a bounded time unless renewed."""

    held: bool

    def acquire() -> Deferred[bool]:
        """Take the key if nobody holds it; ``True`` if this holder has it now."""

    def renew() -> Deferred[bool]:
        """Extend the lease by its full length; ``False`` if it was lost meanwhile."""

    def release() -> Deferred[bool]:
        """Give the key up; ``False`` if this holder did not hold it (any more)."""


@implementer(ILease)
@attrs.define
class RedisLease:
    """
    One holder's lease on ``key``: ``ttl`` seconds from each acquire or renew.  While held, it
    renews itself every ``ttl / 3`` on ``clock``; a holder that dies stops renewing, and the
    key is free again within ``ttl``.  ``lost`` fires if a renewal finds the key gone or
    another's, or cannot reach Redis before the lease would run out.
    """

    redis: IRedis
    clock: IReactorTime
    key: str
    ttl: float = 30.0
    token: str = attrs.field(factory=lambda: secrets.token_hex(16))
    held: bool = False
    lost: Deferred[None] = attrs.field(factory=Deferred)
    renewals: int = 0
    #: When the lease runs out (on ``clock``) unless renewed first.
    expires: float = 0.0
    _timer: IDelayedCall | None = None

    @property
    def _ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    def acquire(self) -> Deferred[bool]:
        start = self.clock.seconds()
        d = self.redis.execute("SET", self.key, self.token, "NX", "PX", self._ms)

        def taken(reply: object) -> bool:
            self.held = reply == "OK"
            if self.held:
                self.expires = start + self.ttl
                self._schedule()
            return self.held

        return d.addCallback(taken)

    def renew(self) -> Deferred[bool]:
        start = self.clock.seconds()
        d = self.redis.eval(_RENEW, [self.key], [self.token, self._ms])

        def renewed(reply: object) -> bool:
            if reply == 1:
                self.renewals += 1
                self.expires = start + self.ttl
                return True
            self._lose()
            return False

        return d.addCallback(renewed)

    def release(self) -> Deferred[bool]:
        self._cancel()
        was_held, self.held = self.held, False
        d = self.redis.eval(_RELEASE, [self.key], [self.token])
        return d.addCallback(lambda reply: was_held and reply == 1)

    def _schedule(self) -> None:
        self._timer = self.clock.callLater(self.ttl / 3, self._tick)

    def _tick(self) -> None:
        self._timer = None

        def again(ok: bool) -> None:
            if ok and self.held:
                self._schedule()

        def unreachable(failure: Failure) -> None:
            failure.trap(RedisUnavailable)
            # Try again while the lease surely lasts; past that another holder may have it.
            if self.held and self.clock.seconds() + self.ttl / 3 < self.expires:
                self._schedule()
            else:
                self._lose()

        self.renew().addCallbacks(again, unreachable)

    def _lose(self) -> None:
        self._cancel()
        if self.held:
            self.held = False
            self.lost.callback(None)

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
