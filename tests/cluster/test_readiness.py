"""``/readyz`` follows the shared session store: 503 while Redis is down, 200 once it is back."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ..support import http_client
from ..ws.helpers import open_session
from .gateways import TOKEN, pair


async def _tick() -> None:
    await deferLater(reactor, 0.005, lambda: None)


async def _get(test: TestCase, url: str) -> tuple[int, Any]:
    response = await http_client(test).get(url)
    return response.code, await response.json()


class ReadinessTests(TestCase):
    timeout = 30

    async def test_readyz_follows_redis_down_and_back(self) -> None:
        server, a, _ = await pair(self)
        session = await open_session(self, a.ws_url, TOKEN)
        self.assertEqual(await _get(self, a.url + "/readyz"), (200, {"ready": True}))
        self.assertTrue((await session.ok("health"))["ready"])
        server.stop()
        redis = a.gateway.redis
        assert redis is not None
        while redis.connected:  # the gateway sees the connection close
            await _tick()
        down = {"ready": False, "reason": "session store unavailable"}
        for path in ("/readyz", "/ready"):
            self.assertEqual(await _get(self, a.url + path), (503, down))
        self.assertEqual(
            await _get(self, a.url + "/healthz"), (200, {"ok": True, "status": "live"})
        )
        health = await session.ok("health")
        self.assertEqual(
            (health["ok"], health["status"], health["ready"], health["reason"]),
            (True, "live", False, "session store unavailable"),
        )
        self.assertFalse((await session.ok("status"))["ready"])
        # Back by itself once Redis is: the client reconnects, and readiness follows.
        server.start()
        await redis.when_connected()
        self.assertEqual(await _get(self, a.url + "/readyz"), (200, {"ready": True}))
        health = await session.ok("health")
        self.assertTrue(health["ready"])
        self.assertNotIn("reason", health)
        self.assertTrue((await session.ok("status"))["ready"])
        # Stopping wins: it is the reason given then.
        a.gateway.runner.closing = True
        self.assertEqual(
            await _get(self, a.url + "/readyz"), (503, {"ready": False, "reason": "shutting down"})
        )
