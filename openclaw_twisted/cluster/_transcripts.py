"""Session transcripts in Redis: an append-only list per session and an index by last update."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from ._client import Arg, IRedis

# The records and the index move together, in one atomic step and one round-trip.
_APPEND = """
for i = 3, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return redis.call('LLEN', KEYS[1])
"""


class ITranscripts(Interface):
    """The few operations a shared session store needs; every one answers with a Deferred."""

    def append(
        agent_id: str, session_key: str, records: Sequence[dict[str, Any]]
    ) -> Deferred[None]:
        """Append records; fires once they are in the store (durable, if it is)."""

    def tail(agent_id: str, session_key: str, limit: int) -> Deferred[list[dict[str, Any]]]:
        """The last ``limit`` records, oldest first (empty for an unknown session)."""

    def sessions(agent_id: str) -> Deferred[list[dict[str, Any]]]:
        """``[{key, sessionId, updatedAt}]`` for the agent's sessions, newest first."""


@implementer(ITranscripts)
@attrs.define
class RedisTranscripts:
    """
    Each session is a Redis list of JSON records (``RPUSH``; a tail read is ``LRANGE -n -1``),
    and each agent has a sorted set of its session keys scored by ``updatedAt``.

    Durable when the server runs with ``appendonly yes`` and ``appendfsync always``: Redis
    then fsyncs the AOF before it replies, so an ``append`` that has fired survives a crash of
    Redis or of its machine.  One node needs no ``WAIT`` (that is for replicas).
    ``durability()`` says whether the server is set up so.
    """

    redis: IRedis
    prefix: str = "openclaw:"

    def _key(self, kind: str, *parts: str) -> str:
        # JSON keeps an agent "a:b" with key "c" apart from agent "a" with key "b:c".
        return f"{self.prefix}{kind}:{json.dumps(list(parts), ensure_ascii=False)}"

    def append(
        self, agent_id: str, session_key: str, records: Sequence[dict[str, Any]]
    ) -> Deferred[None]:
        updated = max((int(r.get("ts", 0)) for r in records), default=0)
        keys = [self._key("transcript", agent_id, session_key), self._key("sessions", agent_id)]
        args: list[Arg] = [
            updated,
            session_key,
            *(json.dumps(r, ensure_ascii=False) for r in records),
        ]
        return self.redis.eval(_APPEND, keys, args).addCallback(lambda _: None)

    def tail(self, agent_id: str, session_key: str, limit: int) -> Deferred[list[dict[str, Any]]]:
        if limit <= 0:
            return succeed([])
        key = self._key("transcript", agent_id, session_key)
        d = self.redis.execute("LRANGE", key, -limit, -1)
        return d.addCallback(lambda rows: [json.loads(row) for row in rows])

    def records(self, agent_id: str, session_key: str) -> Deferred[list[dict[str, Any]]]:
        """Every record of the session, oldest first."""
        key = self._key("transcript", agent_id, session_key)
        d = self.redis.execute("LRANGE", key, 0, -1)
        return d.addCallback(lambda rows: [json.loads(row) for row in rows])

    def sessions(self, agent_id: str) -> Deferred[list[dict[str, Any]]]:
        d = self.redis.execute("ZREVRANGE", self._key("sessions", agent_id), 0, -1, "WITHSCORES")

        def rows(flat: list[str]) -> list[dict[str, Any]]:
            pairs = zip(flat[::2], flat[1::2], strict=True)
            return [
                {"key": key, "sessionId": f"{agent_id}:{key}", "updatedAt": int(float(score))}
                for key, score in pairs
            ]

        return d.addCallback(rows)

    def durability(self) -> Deferred[str | None]:
        """``None`` when acknowledged appends survive a crash, else what to change on the server."""
        d = self.redis.execute("CONFIG", "GET", "append*")

        def check(flat: list[str]) -> str | None:
            conf = dict(zip(flat[::2], flat[1::2], strict=True))
            if conf.get("appendonly") != "yes" or conf.get("appendfsync") != "always":
                return (
                    "Redis may lose acknowledged session writes in a crash: run it with "
                    "--appendonly yes --appendfsync always (found appendonly "
                    f"{conf.get('appendonly')}, appendfsync {conf.get('appendfsync')})"
                )
            return None

        return d.addCallback(check)
