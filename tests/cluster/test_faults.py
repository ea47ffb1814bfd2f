"""A Redis that dies, restarts or stalls: commands fail fast and clearly, the client recovers."""

from __future__ import annotations

import os
import signal

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted.cluster import RedisClient, RedisLease, RedisUnavailable

from ..redis_support import connect, start_redis


class FaultTests(TestCase):
    timeout = 30  # a hang fails the test instead of stalling the suite

    async def test_a_restarted_redis_fails_fast_then_the_client_reconnects(self) -> None:
        server = start_redis(self)
        clock = Clock()  # no timeout can fire: what fails here fails at once
        client = await connect(self, server, clock=clock)
        await client.execute("SET", "k", "v")
        server.kill()
        with self.assertRaises(RedisUnavailable) as caught:
            await client.execute("GET", "k")
        self.assertIn(f"Redis at {client.address}", str(caught.exception))
        with self.assertRaises(RedisUnavailable):
            await RedisLease(client, clock, "lane:s1").acquire()
        self.assertFalse(client.connected)
        server.start()
        await client.when_connected()  # by itself, no call from us
        self.assertEqual(await client.execute("SET", "k", "again"), "OK")
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_a_stalled_redis_times_out_on_the_injected_clock(self) -> None:
        server = start_redis(self)
        clock = Clock()
        client = await connect(self, server, clock=clock, timeout=2.0)
        assert server.process is not None
        pid = server.process.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        pending = client.execute("GET", "k")
        clock.advance(1.9)
        self.assertNoResult(pending)
        clock.advance(0.1)
        failure = self.failureResultOf(pending, RedisUnavailable)
        self.assertEqual(
            failure.getErrorMessage(), f"Redis at {client.address} did not answer in 2 s"
        )
        # The connection that owes a reply is dropped, so no late answer is read as another's.
        self.failureResultOf(client.execute("GET", "k"), RedisUnavailable)
        os.kill(pid, signal.SIGCONT)
        await client.when_connected()
        self.assertIsNone(await client.execute("GET", "k"))

    def test_a_bad_url_says_what_one_looks_like(self) -> None:
        from twisted.internet import reactor

        with self.assertRaises(ValueError) as caught:
            RedisClient.connect(reactor, "http://localhost:6379")
        self.assertIn("redis://host:6379/0", str(caught.exception))
