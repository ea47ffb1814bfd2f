"""Shared state for several gateways on one Redis: leases, the auth limiter, events, transcripts."""

from ._bus import IEventBus, RedisEventBus
from ._client import IRedis, RedisClient, RedisCommandError, RedisUnavailable, parse_url
from ._lanes import RedisLanes
from ._lease import ILease, RedisLease
from ._ratelimit import IAttemptStore, MemoryAttempts, RedisAttempts
from ._store import RedisSessionStore
from ._transcripts import ITranscripts, RedisTranscripts

__all__ = [
    "IAttemptStore",
    "IEventBus",
    "ILease",
    "IRedis",
    "ITranscripts",
    "MemoryAttempts",
    "RedisAttempts",
    "RedisClient",
    "RedisCommandError",
    "RedisEventBus",
    "RedisLanes",
    "RedisLease",
    "RedisSessionStore",
    "RedisTranscripts",
    "RedisUnavailable",
    "parse_url",
]
