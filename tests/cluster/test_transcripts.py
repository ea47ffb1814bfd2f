"""RedisTranscripts: append-only per session, tail reads, the index, durable across a crash."""

from __future__ import annotations

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from openclaw_twisted.cluster import RedisTranscripts

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
