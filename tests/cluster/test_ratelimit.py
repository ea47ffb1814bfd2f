"""RedisAttempts: the in-memory limiter's semantics, shared by two gateways through Redis."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted.auth import RateLimiter
from openclaw_twisted.cluster import IAttemptStore, MemoryAttempts, RedisAttempts
from openclaw_twisted.config import RateLimitConfig

from ..redis_support import connect, start_redis

CONFIG = RateLimitConfig(max_attempts=3, window_ms=60_000, lockout_ms=300_000)


class SharedLimiterTests(TestCase):
    timeout = 30  # a hang fails the test instead of stalling the suite

    async def gateways(
        self, config: RateLimitConfig = CONFIG
    ) -> tuple[Clock, RedisAttempts, RedisAttempts]:
        server = start_redis(self)
        clock = Clock()
        clock.advance(1_700_000_000)  # wall-clock-like times, as the gateways' clocks give
        one, two = await connect(self, server), await connect(self, server)
        return clock, RedisAttempts(one, config, clock), RedisAttempts(two, config, clock)

    async def test_an_address_locked_on_one_gateway_is_locked_on_the_other(self) -> None:
        _, one, two = await self.gateways()
        await one.failed("5.5.5.5")
        await two.failed("5.5.5.5")
        self.assertIsNone(await one.retry_after("5.5.5.5"))
        await one.failed("5.5.5.5")  # the third, across both: the lock
        self.assertEqual(await two.retry_after("5.5.5.5"), 300)
        self.assertEqual(await one.retry_after("5.5.5.5"), 300)
        self.assertIsNone(await two.retry_after("6.6.6.6"))

    async def test_the_lock_runs_out_and_success_forgets_failures(self) -> None:
        clock, one, two = await self.gateways()
        for _ in range(3):
            await one.failed("5.5.5.5")
        clock.advance(299.5)
        self.assertEqual(await two.retry_after("5.5.5.5"), 1)
        clock.advance(0.5)
        self.assertIsNone(await two.retry_after("5.5.5.5"))
        # The lock swapped the failures away: one more failure starts counting afresh.
        await two.failed("5.5.5.5")
        self.assertIsNone(await one.retry_after("5.5.5.5"))
        await one.failed("5.5.5.5")
        await two.succeeded("5.5.5.5")
        await one.failed("5.5.5.5")
        self.assertIsNone(await one.retry_after("5.5.5.5"))

    async def test_failures_slide_out_of_the_window(self) -> None:
        clock, one, two = await self.gateways()
        await one.failed("5.5.5.5")
        clock.advance(30)
        await two.failed("5.5.5.5")
        clock.advance(30)  # the first is exactly a window old: it no longer counts
        await one.failed("5.5.5.5")
        self.assertIsNone(await two.retry_after("5.5.5.5"))
        await two.failed("5.5.5.5")
        self.assertEqual(await one.retry_after("5.5.5.5"), 300)

    async def test_loopback_is_exempt_unless_it_is_a_trusted_proxy(self) -> None:
        _, one, _two = await self.gateways(RateLimitConfig(max_attempts=1))
        await one.failed("127.0.0.1")
        self.assertIsNone(await one.retry_after("127.0.0.1"))
        proxied = RedisAttempts(one.redis, one.config, one.clock, proxy=lambda ip: True)
        await proxied.failed("127.0.0.1")
        self.assertIsNotNone(await one.retry_after("127.0.0.1"))

    async def test_same_answers_as_the_in_memory_limiter(self) -> None:
        clock, redis, _ = await self.gateways()
        memory = MemoryAttempts(RateLimiter(CONFIG, clock))
        stores: list[IAttemptStore] = [memory, redis]
        script = ["f", "f", 10, "f", 1, "?", 200, "?", 99.5, "?", 1, "?", "f", "s", "f", "f", "?"]
        script += [59.9, "f", "?", 0.2, "f", "?", "f", "?"]
        answers: list[list[int | None]] = [[], []]
        for step in script:
            if isinstance(step, (int, float)):
                clock.advance(step)
                continue
            for store, out in zip(stores, answers, strict=True):
                if step == "f":
                    await store.failed("5.5.5.5")
                elif step == "s":
                    await store.succeeded("5.5.5.5")
                else:
                    out.append(await store.retry_after("5.5.5.5"))
        self.assertEqual(answers[0], answers[1])
        self.assertIn(None, answers[0])
        self.assertTrue(any(a is not None for a in answers[0]))
