"""``idempotencyKey`` shared by every gateway on one Redis: one run per key, wherever it lands."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ._client import IRedis
from ._runs import RUNNING_TTL

if TYPE_CHECKING:
    from ._runs import ClusterRuns

log = Logger()

#: How long a key stays claimed from the first request, and again from its run's end
#: (seconds).  The registry's own bound on a running run is RUNNING_TTL, so a key outlives
#: its run; an hour after the end a repeat is no retry.  A repeat that reaches the gateway
#: that ran it is still found there first (its last 256 runs): never remembered less than
#: before, and remembered longer on any gateway that starts more than 256 runs an hour.
IDEMPOTENCY_TTL = RUNNING_TTL
#: A key longer than this (JSON-encoded) is named in Redis by its SHA-256 instead.
LONG_KEY_CHARS = 200
#: How long a repeat first waits, and at most, before it looks again at a claim whose run
#: the registry does not show yet or shows ended before the claim says so (seconds).
RETRY_INITIAL, RETRY_MAX = 0.02, 1.0

# GET, or SET NX EX when absent, in one step: the loser of a race learns the winner's run at
# once (SET NX GET needs Redis 7).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# Only the run that holds a key may end or drop its claim (a key that ran out and was
# claimed again is another run's).  A claim's JSON begins with its run id (L{Claim.to_json}):
# compared as a prefix, no decoding of a value that may hold a long answer.
_ENDED = """
local held = redis.call('GET', KEYS[1])
if not held or string.sub(held, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if not held or string.sub(held, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _held_by(run_id: str) -> str:
    """How the JSON of ``run_id``'s claim begins (what the scripts compare)."""
    return '{"runId":' + json.dumps(run_id) + ","


@attrs.frozen
class Claim:
    """The run that holds an ``idempotencyKey``: what a repeat on any gateway answers with."""

    run_id: str
    #: The ``acceptedAt`` its first request was answered with (ms).
    accepted_at: int
    agent_id: str
    session_key: str
    ended_at: int | None = None
    #: Once it ended: ``{"stopReason", "usage", "text"?}`` or ``{"error": {kind, message,
    #: retryAfter?}}``.
    outcome: Mapping[str, Any] | None = None

    def to_json(self) -> str:
        entry: dict[str, Any] = {
            "runId": self.run_id,
            "acceptedAt": self.accepted_at,
            "agentId": self.agent_id,
            "sessionKey": self.session_key,
        }
        if self.outcome is not None:
            entry["endedAt"] = self.ended_at
            entry["outcome"] = self.outcome
        return json.dumps(entry, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Claim:
        entry = json.loads(raw)
        return cls(
            entry["runId"],
            entry.get("acceptedAt", 0),
            entry.get("agentId", ""),
            entry.get("sessionKey", ""),
            entry.get("endedAt"),
            entry.get("outcome"),
        )


class IIdempotencyKeys(Interface):
    """
    Which run each ``idempotencyKey`` (of a request ``kind``: ``agent``, ``chat``) started,
    shared by every gateway.  Every call may fail with ``StoreUnavailable``.
    """

    def claim(
        kind: str, key: str, run_id: str, accepted_at: int, agent_id: str, session_key: str
    ) -> Deferred[Claim]:
        """
        Hold ``key`` for ``run_id``, about to start, unless a run holds it already: the
        L{Claim} that holds it now (``run_id``'s own when this caller won: start the run).
        """

    def release(kind: str, key: str, run_id: str) -> Deferred[None]:
        """Let go of a key whose run never started (refused), so a retry may run (no failure)."""

    def ended(kind: str, key: str, claim: Claim) -> Deferred[None]:
        """Record the outcome of the run that holds ``key`` (no failure: logged)."""

    def settled(kind: str, key: str, claim: Claim, seconds: float) -> Deferred[Claim | None]:
        """
        ``claim`` once its run has ended, or as it is after ``seconds``; ``None`` once the
        key no longer holds that run (it ran out: the run is forgotten).
        """


@implementer(IIdempotencyKeys)
class RedisIdempotencyKeys:
    """
    The keys in Redis: ``openclaw:idem:<kind>:<JSON key>`` → the L{Claim} as JSON, claimed
    atomically (one run per key however many gateways race), rewritten with the outcome
    when the run ends.  A repeat waiting for another gateway's run is woken by the run's
    end on the bus (L{ClusterRuns.wait}) and reads the outcome here.
    """

    def __init__(
        self,
        redis: IRedis,
        runs: ClusterRuns,
        clock: IReactorTime,
        ttl: int = IDEMPOTENCY_TTL,
        prefix: str = "openclaw:idem:",
    ) -> None:
        self.redis = redis
        self.runs = runs
        self.clock = clock
        self.ttl = ttl
        self.prefix = prefix

    def name(self, kind: str, key: str) -> str:
        """The Redis key of ``key``: JSON (no separator in it is ambiguous), hashed when long."""
        encoded = json.dumps(key)  # ASCII: a lone surrogate cannot break the key
        if len(encoded) > LONG_KEY_CHARS:
            # '#' never starts a JSON string, so a hashed name never meets a plain one.
            encoded = "#" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.prefix}{kind}:{encoded}"

    def claim(
        self, kind: str, key: str, run_id: str, accepted_at: int, agent_id: str, session_key: str
    ) -> Deferred[Claim]:
        mine = Claim(run_id, accepted_at, agent_id, session_key)
        d = self.redis.eval(_CLAIM, [self.name(kind, key)], [mine.to_json(), self.ttl])
        return d.addCallback(lambda held: mine if held is None else Claim.from_json(held))

    def release(self, kind: str, key: str, run_id: str) -> Deferred[None]:
        d = self.redis.eval(_RELEASE, [self.name(kind, key)], [_held_by(run_id)])
        return d.addCallbacks(
            lambda _: None,
            lambda f: log.warn(
                "idempotencyKey of run {run_id} kept: {why}", run_id=run_id, why=f.value
            ),
        )

    def ended(self, kind: str, key: str, claim: Claim) -> Deferred[None]:
        held_by = _held_by(claim.run_id)
        d = self.redis.eval(_ENDED, [self.name(kind, key)], [held_by, claim.to_json(), self.ttl])
        run_id = claim.run_id
        return d.addCallbacks(
            lambda _: None,
            lambda f: log.warn(
                "the end of run {run_id} is not shared: {why}", run_id=run_id, why=f.value
            ),
        )

    def holder(self, kind: str, key: str) -> Deferred[Claim | None]:
        """The claim that holds ``key`` now (``None``: nobody's)."""
        d = self.redis.execute("GET", self.name(kind, key))
        return d.addCallback(lambda raw: None if raw is None else Claim.from_json(raw))

    def settled(self, kind: str, key: str, claim: Claim, seconds: float) -> Deferred[Claim | None]:
        return ensureDeferred(self._settled(kind, key, claim, seconds))

    async def _settled(self, kind: str, key: str, claim: Claim, seconds: float) -> Claim | None:
        deadline = self.clock.seconds() + seconds
        pause = RETRY_INITIAL
        while True:
            held = await self.holder(kind, key)
            if held is None or held.run_id != claim.run_id:
                return None
            left = deadline - self.clock.seconds()
            if held.outcome is not None or left <= 0:
                return held
            remote = await self.runs.wait(claim.run_id, left)
            if remote is not None and remote.lost:
                return None  # its gateway is gone: the run will never end
            if remote is not None and remote.ended_at is None:
                continue  # still running after ``left``: the deadline has passed
            # Ended (the claim is rewritten right after the end is published), or not in the
            # registry yet (its gateway enters it as it starts): look again in a moment.
            left = deadline - self.clock.seconds()
            if left > 0:
                await deferLater(self.clock, min(pause, left), lambda: None)
            pause = min(pause * 2, RETRY_MAX)
