"""Session transcripts in Redis: an append-only list per session and an index by last update."""

from __future__ import annotations

import json
from collections import OrderedDict
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
# A tail read that sends only what the reader has not got: ARGV[1] is how long the list was
# when the reader last saw it and ARGV[2] its last element then (a list deleted and grown
# again is not mistaken for the one it knew), ARGV[3] how many it wants at most.  Answers
# the length, how much of what the reader knew still holds, where the rows start, the rows.
_TAIL = """
local n = redis.call('LLEN', KEYS[1])
local known = tonumber(ARGV[1])
if known > n or (known > 0 and redis.call('LINDEX', KEYS[1], known - 1) ~= ARGV[2]) then
  known = 0
end
local from = math.max(known, n - tonumber(ARGV[3]), 0)
return {n, known, from, redis.call('LRANGE', KEYS[1], from, -1)}
"""
#: What a gateway keeps of the sessions it reads and writes (most recently used kept first),
#: so a turn's history read fetches and parses only the records since its last one: in all,
#: and at most per session (the oldest records of a bigger one are read again when asked).
CACHE_BYTES = 64 * 1024 * 1024
CACHE_BYTES_PER_SESSION = 2 * 1024 * 1024


@attrs.frozen
class _Tail:
    """The end of one session's list as this gateway last saw it (never changed in place)."""

    #: The list's length then, and its last element as Redis holds it.
    end: int
    last: str
    rows: tuple[dict[str, Any], ...]
    sizes: tuple[int, ...]

    @property
    def held(self) -> int:
        return sum(self.sizes)

    def grown(self, rows: Sequence[dict[str, Any]], raws: Sequence[str], end: int) -> _Tail:
        """This tail with ``rows`` after it (their JSON ``raws``): the list up to ``end``."""
        last = raws[-1] if raws else self.last
        return _Tail(end, last, (*self.rows, *rows), (*self.sizes, *map(len, raws)))

    def trimmed(self) -> _Tail:
        """Its newest records within L{CACHE_BYTES_PER_SESSION} (the last one at least)."""
        total, drop = self.held, 0
        while total > CACHE_BYTES_PER_SESSION and drop < len(self.sizes) - 1:
            total -= self.sizes[drop]
            drop += 1
        return _Tail(self.end, self.last, self.rows[drop:], self.sizes[drop:]) if drop else self


#: Nothing seen yet: what a first read grows from.
_NOTHING = _Tail(0, "", (), ())


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
    cache_bytes: int = CACHE_BYTES
    _cache: OrderedDict[str, _Tail] = attrs.field(factory=OrderedDict, init=False)
    _cached_bytes: int = attrs.field(default=0, init=False)

    def _key(self, kind: str, *parts: str) -> str:
        # JSON keeps an agent "a:b" with key "c" apart from agent "a" with key "b:c".
        return f"{self.prefix}{kind}:{json.dumps(list(parts), ensure_ascii=False)}"

    def append(
        self, agent_id: str, session_key: str, records: Sequence[dict[str, Any]]
    ) -> Deferred[None]:
        updated = max((int(r.get("ts", 0)) for r in records), default=0)
        key = self._key("transcript", agent_id, session_key)
        keys = [key, self._key("sessions", agent_id)]
        raws = [json.dumps(r, ensure_ascii=False) for r in records]
        args: list[Arg] = [updated, session_key, *raws]

        def appended(length: int) -> None:
            # Ours are the last records only if nobody else appended since this gateway's
            # last look (the session's lane makes that the rule): then the reader's next look
            # costs nothing.  Otherwise the next read catches up.
            before = self._take(key)
            if before is not None and length == before.end + len(records):
                self._keep(key, before.grown(records, raws, length))

        return self.redis.eval(_APPEND, keys, args).addCallback(appended)

    def tail(self, agent_id: str, session_key: str, limit: int) -> Deferred[list[dict[str, Any]]]:
        """
        The last ``limit`` records: what this gateway has seen of the session already comes
        from memory, and only the records appended since (by any gateway) are fetched.
        """
        if limit <= 0:
            return succeed([])
        key = self._key("transcript", agent_id, session_key)
        seen = self._cache.get(key)
        known, last = (seen.end, seen.last) if seen is not None else (0, "")
        d = self.redis.eval(_TAIL, [key], [known, last, limit])

        def answered(reply: list[Any]) -> list[dict[str, Any]] | Deferred[list[dict[str, Any]]]:
            end, kept, start, raws = int(reply[0]), int(reply[1]), int(reply[2]), list(reply[3])
            rows = [json.loads(raw) for raw in raws]
            # What it saw still holds and the rows follow on from it: one tail; else afresh.
            base = seen if seen is not None and kept == start == seen.end else _NOTHING
            tail = base.grown(rows, raws, end)
            if end - len(tail.rows) > 0 and len(tail.rows) < limit:
                # More was asked for than this gateway holds: read the whole tail once.
                self._take(key)
                return self._read_tail(key, limit)
            if self._cache.get(key) is seen:
                # Only if no other read or append of this session answered meanwhile.
                self._take(key)
                if end:
                    self._keep(key, tail)
            return list(tail.rows[-limit:])

        return d.addCallback(answered)

    def _read_tail(self, key: str, limit: int) -> Deferred[list[dict[str, Any]]]:
        d = self.redis.eval(_TAIL, [key], [0, "", limit])

        def answered(reply: list[Any]) -> list[dict[str, Any]]:
            end, raws = int(reply[0]), list(reply[3])
            rows = [json.loads(raw) for raw in raws]
            if end and key not in self._cache:
                self._keep(key, _NOTHING.grown(rows, raws, end))
            return rows

        return d.addCallback(answered)

    def _take(self, key: str) -> _Tail | None:
        tail = self._cache.pop(key, None)
        if tail is not None:
            self._cached_bytes -= tail.held
        return tail

    def _keep(self, key: str, tail: _Tail) -> None:
        tail = tail.trimmed()
        held = tail.held
        if held > self.cache_bytes:
            return
        while self._cache and self._cached_bytes + held > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.held
        self._cache[key] = tail
        self._cached_bytes += held

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
