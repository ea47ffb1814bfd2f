"""RedisEventBus: events published by one gateway reach the others, in order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from openclaw_twisted.cluster import RedisEventBus

from ..redis_support import connect, start_redis


class EventBusTests(TestCase):
    timeout = 30  # a hang fails the test instead of stalling the suite

    async def bus(self, url: str, test_server: Any) -> RedisEventBus:
        bus = RedisEventBus.connect(reactor, url, await connect(self, test_server))
        self.addCleanup(bus.close)
        await bus.when_connected()
        return bus

    async def test_another_gateway_gets_every_event_in_order(self) -> None:
        server = start_redis(self)
        one, two = await self.bus(server.url, server), await self.bus(server.url, server)
        got: list[Mapping[str, Any]] = []
        other: list[Mapping[str, Any]] = []
        done: Deferred[None] = Deferred()

        def receive(event: Mapping[str, Any]) -> None:
            got.append(event)
            if len(got) == 500:
                done.callback(None)

        await two.subscribe("run:r1", receive)
        await two.subscribe("run:r2", other.append)
        events = [{"seq": i, "delta": f"tök {i}"} for i in range(500)]
        counts = await gatherResults([one.publish("run:r1", e) for e in events])
        await done
        self.assertEqual(got, events)
        self.assertEqual(set(counts), {1})
        self.assertEqual(other, [])

    async def test_unsubscribed_receivers_get_nothing_more(self) -> None:
        server = start_redis(self)
        one, two = await self.bus(server.url, server), await self.bus(server.url, server)
        got: list[Mapping[str, Any]] = []
        await two.subscribe("run:r1", got.append)
        await two.unsubscribe("run:r1", got.append)
        self.assertEqual(await one.publish("run:r1", {"seq": 0}), 0)
        self.assertEqual(got, [])
