"""The failed-auth limiter's state in Redis, so an address locked out is locked on every gateway."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..auth import IAttemptStore, MemoryAttempts, is_loopback
from ..config import RateLimitConfig
from ._client import Arg, IRedis

# auth.RateLimiter.failed in one atomic step: drop the attempts that left the window (at or
# before its start), count this one, and at the limit swap the attempts for a lock.  Times are
# the gateways' clock (seconds, as the in-memory limiter uses); the TTLs only collect garbage.
_FAILED = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
  return 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 0
"""


@implementer(IAttemptStore)
@attrs.define
class RedisAttempts:
    """
    ``auth.RateLimiter``'s semantics (same max attempts, sliding window, lockout, loopback
    exemption except for trusted proxies) with its state in Redis: a sorted set of failure
    times per IP and a lock key holding when the lock ends.  Redis's own key expiry bounds the
    memory instead of ``MAX_TRACKED_ADDRESSES``.
    """

    redis: IRedis
    config: RateLimitConfig
    clock: IReactorTime
    proxy: Callable[[str], bool] = lambda ip: False
    prefix: str = "openclaw:auth:"

    def _keys(self, ip: str) -> list[str]:
        return [f"{self.prefix}fail:{ip}", f"{self.prefix}lock:{ip}"]

    def _exempt(self, ip: str) -> bool:
        return self.config.exempt_loopback and is_loopback(ip) and not self.proxy(ip)

    def retry_after(self, ip: str) -> Deferred[int | None]:
        d = self.redis.execute("GET", self._keys(ip)[1])

        def remaining(until: str | None) -> int | None:
            if until is None:
                return None
            left = float(until) - self.clock.seconds()
            return max(1, math.ceil(left)) if left > 0 else None

        return d.addCallback(remaining)

    def failed(self, ip: str) -> Deferred[None]:
        if self._exempt(ip):
            return succeed(None)
        now = self.clock.seconds()
        lockout_ms = max(1, self.config.lockout_ms)
        args: list[Arg] = [
            repr(now),
            repr(now - self.config.window_ms / 1000),
            f"{now!r}:{secrets.token_hex(4)}",  # two gateways may fail the same IP at one instant
            self.config.max_attempts,
            repr(now + self.config.lockout_ms / 1000),
            lockout_ms,
            max(1, self.config.window_ms),
        ]
        return self.redis.eval(_FAILED, self._keys(ip), args).addCallback(lambda _: None)

    def succeeded(self, ip: str) -> Deferred[None]:
        return self.redis.execute("DEL", self._keys(ip)[0]).addCallback(lambda _: None)


__all__ = ["IAttemptStore", "MemoryAttempts", "RedisAttempts"]
