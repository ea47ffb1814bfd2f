"""RedisLease against a real redis-server: one holder at a time, token-checked, expiring."""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted.cluster import RedisLease

from ..redis_support import connect, key_events, start_redis


class LeaseTests(TestCase):
    timeout = 30  # a hang fails the test instead of stalling the suite

    async def test_two_holders_never_hold_one_key(self) -> None:
        server = start_redis(self)
        one, two = await connect(self, server), await connect(self, server)
        clock = Clock()
        # Twenty contenders on two connections ("gateways") race for one key at once.
        leases = [RedisLease(c, clock, "lane:s1", ttl=30) for c in (one, two) * 10]
        won = await gatherResults([lease.acquire() for lease in leases])
        self.assertEqual(sum(won), 1)
        holder = leases[won.index(True)]
        self.assertFalse(await leases[won.index(False)].acquire())
        self.assertTrue(await holder.release())
        self.assertTrue(await leases[won.index(False)].acquire())

    async def test_release_by_a_non_owner_fails(self) -> None:
        server = start_redis(self)
        one, two = await connect(self, server), await connect(self, server)
        clock = Clock()
        mine, theirs = RedisLease(one, clock, "lane:s1"), RedisLease(two, clock, "lane:s1")
        self.assertTrue(await mine.acquire())
        self.assertFalse(await theirs.acquire())
        self.assertFalse(await theirs.release())
        self.assertEqual(await one.execute("GET", "lane:s1"), mine.token)
        self.assertTrue(await mine.renew())
        # A holder whose lease ran out and was taken by another cannot free it either.
        await one.execute("SET", "lane:s1", "someone-else")
        self.assertFalse(await mine.release())
        self.assertEqual(await one.execute("GET", "lane:s1"), "someone-else")

    async def test_a_crashed_holders_key_is_free_within_the_lease(self) -> None:
        server = start_redis(self)
        crashing, survivor = await connect(self, server), await connect(self, server)
        expired = await key_events(self, server, "expired")
        ttl = 0.5
        dead = RedisLease(crashing, Clock(), "lane:s1", ttl=ttl)  # its clock never runs
        taken = time.monotonic()
        self.assertTrue(await dead.acquire())
        await crashing.close()  # the holder is gone without releasing
        other = RedisLease(survivor, reactor, "lane:s1", ttl=ttl)
        self.assertFalse(await other.acquire())
        self.assertEqual(await expired.get(), "lane:s1")
        elapsed = time.monotonic() - taken
        self.assertTrue(await other.acquire())
        self.addCleanup(other.release)
        self.assertGreaterEqual(elapsed, ttl * 0.9)
        self.assertLess(elapsed, ttl + 1.0)  # Redis expires keys within ~100 ms of their TTL

    async def test_renewal_keeps_the_lease_past_its_ttl(self) -> None:
        server = start_redis(self)
        one, two = await connect(self, server), await connect(self, server)
        renewed = await key_events(self, server, "expire")
        ttl = 0.3
        lease = RedisLease(one, reactor, "lane:s1", ttl=ttl)
        start = time.monotonic()
        self.assertTrue(await lease.acquire())
        self.addCleanup(lease.release)
        for _ in range(7):  # SET ... PX, then six renewals (every ttl/3: twice the lease)
            self.assertEqual(await renewed.get(), "lane:s1")
        await one.execute("PING")  # one connection answers in order: the renewals are in
        self.assertGreater(time.monotonic() - start, ttl)
        self.assertTrue(lease.held)
        self.assertGreaterEqual(lease.renewals, 6)
        self.assertFalse(await RedisLease(two, reactor, "lane:s1").acquire())
        self.assertTrue(await lease.release())
        self.assertFalse(lease.lost.called)

    async def test_a_renewal_that_finds_the_key_gone_reports_the_lease_lost(self) -> None:
        server = start_redis(self)
        client = await connect(self, server)
        clock = Clock()
        lease = RedisLease(client, clock, "lane:s1", ttl=3)
        self.assertTrue(await lease.acquire())
        await client.execute("DEL", "lane:s1")  # it expired while this holder was stalled
        clock.advance(1)
        await lease.lost
        self.assertFalse(lease.held)
        self.assertEqual(clock.getDelayedCalls(), [])
