"""RedisTranscripts: append-only per session, tail reads, the index, durable across a crash."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from openclaw_twisted.cluster import RedisClient, RedisTranscripts
from openclaw_twisted.cluster._transcripts import CACHE_BYTES_PER_SESSION

from ..redis_support import connect, start_redis


def turn(n: int, ts: int) -> list[dict[str, object]]:
    return [
        {"role": "user", "text": f"question {n}", "ts": ts},
        {"role": "assistant", "text": f"answer {n}", "ts": ts + 1},
    ]


class TranscriptTests(TestCase):
    timeout = 30  # a hang fails the test instead of stalling the suite

    async def test_appends_from_two_gateways_read_back_in_order(self) -> None:
        server = start_redis(self)
        one = RedisTranscripts(await connect(self, server))
        two = RedisTranscripts(await connect(self, server))
        await one.append("main", "s1", turn(0, 100))
        await two.append("main", "s1", turn(1, 200))
        await two.append("main", "s:2", turn(0, 150))
        await one.append("main:s", "2", turn(0, 300))  # another agent; must not mix with "s:2"
        self.assertEqual(await one.tail("main", "s1", 3), turn(0, 100)[1:] + turn(1, 200))
        self.assertEqual(len(await two.tail("main", "s1", 100)), 4)
        self.assertEqual(await one.tail("main", "s1", 0), [])
        self.assertEqual(await one.tail("main", "nobody", 5), [])
        self.assertEqual(
            await two.sessions("main"),
            [
                {"key": "s1", "sessionId": "main:s1", "updatedAt": 201},
                {"key": "s:2", "sessionId": "main:s:2", "updatedAt": 151},
            ],
        )

    async def test_acknowledged_appends_survive_a_redis_crash(self) -> None:
        server = start_redis(self, appendonly=True)
        store = RedisTranscripts(await connect(self, server))
        self.assertIsNone(await store.durability())
        await gatherResults([store.append("main", "s1", turn(n, 100 + n)) for n in range(50)])
        server.kill()  # SIGKILL: nothing more reaches the disk
        server.start()
        reader = RedisTranscripts(await connect(self, server))
        records = await reader.tail("main", "s1", 1000)
        self.assertEqual(records, [r for n in range(50) for r in turn(n, 100 + n)])

    async def test_durability_names_what_to_change(self) -> None:
        server = start_redis(self)
        problem = await RedisTranscripts(await connect(self, server)).durability()
        assert problem is not None
        self.assertIn("--appendonly yes --appendfsync always", problem)


@attrs.define
class Counting:
    """The real client, counting the transcript rows Redis sends back to tail reads."""

    client: RedisClient
    rows: list[int] = attrs.Factory(list)

    def execute(self, *args: Any) -> Deferred[Any]:
        return self.client.execute(*args)

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        d = self.client.eval(script, keys, args)
        if "LRANGE" in script:

            def count(reply: list[Any]) -> list[Any]:
                self.rows.append(len(reply[-1]))
                return reply

            d.addCallback(count)
        return d

    def close(self) -> Deferred[None]:
        return self.client.close()


class TailCacheTests(TestCase):
    """A gateway reads again only what was appended since it last looked."""

    timeout = 30

    async def test_a_reader_fetches_only_what_it_has_not_seen(self) -> None:
        server = start_redis(self)
        counting = Counting(await connect(self, server))
        mine = RedisTranscripts(counting)
        other = RedisTranscripts(await connect(self, server))
        for n in range(10):
            await other.append("main", "s1", turn(n, 100 + n))
        self.assertEqual(
            await mine.tail("main", "s1", 8), [r for n in (6, 7, 8, 9) for r in turn(n, 100 + n)]
        )
        self.assertEqual(counting.rows, [8])
        # Its own append is known without asking again; another's is fetched, and only it.
        await mine.append("main", "s1", turn(10, 200))
        self.assertEqual((await mine.tail("main", "s1", 8))[-2:], turn(10, 200))
        await other.append("main", "s1", turn(11, 300))
        self.assertEqual((await mine.tail("main", "s1", 8))[-4:], turn(10, 200) + turn(11, 300))
        self.assertEqual(counting.rows, [8, 0, 2])
        # Asking for more than it holds reads the longer tail (from the list, in order).
        everything = (
            [r for n in range(10) for r in turn(n, 100 + n)] + turn(10, 200) + turn(11, 300)
        )
        self.assertEqual(await mine.tail("main", "s1", 100), everything)

    async def test_a_list_replaced_behind_the_cache_is_read_afresh(self) -> None:
        server = start_redis(self)
        client = await connect(self, server)
        mine = RedisTranscripts(client)
        await mine.append("main", "s1", turn(0, 100) + turn(1, 200))
        self.assertEqual(len(await mine.tail("main", "s1", 10)), 4)
        # Deleted by hand and grown again past the length the reader knew.
        await client.execute("DEL", mine._key("transcript", "main", "s1"))
        other = RedisTranscripts(await connect(self, server))
        fresh = [r for n in range(5) for r in turn(n, 900 + n)]
        await other.append("main", "s1", fresh)
        self.assertEqual(await mine.tail("main", "s1", 10), fresh)
        # And shrunk below it.
        await client.execute("DEL", mine._key("transcript", "main", "s1"))
        await other.append("main", "s1", turn(7, 5))
        self.assertEqual(await mine.tail("main", "s1", 10), turn(7, 5))

    async def test_the_cache_is_bounded(self) -> None:
        server = start_redis(self)
        mine = RedisTranscripts(await connect(self, server), cache_bytes=2_000)
        for n in range(20):
            await mine.append("main", f"s{n}", turn(n, n))
            await mine.tail("main", f"s{n}", 10)
        self.assertLessEqual(mine._cached_bytes, 2_000)
        self.assertEqual(mine._cached_bytes, sum(t.held for t in mine._cache.values()))
        # Sessions dropped from the cache are still read in full.
        self.assertEqual(await mine.tail("main", "s0", 10), turn(0, 0))

    async def test_a_big_session_is_held_to_its_cap_however_it_was_read(self) -> None:
        server = start_redis(self)
        mine = RedisTranscripts(await connect(self, server))
        other = RedisTranscripts(await connect(self, server))
        big = [{"role": "user", "text": "x" * 900_000, "ts": n} for n in range(3)]
        await other.append("main", "big", big)
        # A first read answers in full but keeps no more than one session's share.
        self.assertEqual(await mine.tail("main", "big", 10), big)
        self.assertLessEqual(mine._cached_bytes, CACHE_BYTES_PER_SESSION)
        self.assertGreater(mine._cached_bytes, 0)
        # And it still answers in full from Redis what it no longer holds.
        self.assertEqual(await mine.tail("main", "big", 10), big)
