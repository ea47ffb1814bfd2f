"""One port: health routes, security headers, 404s and WebSocket upgrades on any path."""

from __future__ import annotations

import json
import subprocess
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted import Gateway, parse_config

from ..support import REPO, child_env, http_client, listen, ws_connect

SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class RootTests(TestCase):
    async def asyncSetUp(self) -> str:
        self.gateway = Gateway(parse_config({}, {"OPENCLAW_STATE_DIR": self.mktemp()}), reactor)
        self.http = http_client(self)
        return await listen(self, self.gateway)

    async def test_health_and_ready(self) -> None:
        url = await self.asyncSetUp()
        for path in ("/healthz", "/health"):
            r = await self.http.get(url + path)
            self.assertEqual(r.code, 200)
            self.assertEqual(json.loads(await r.content()), {"ok": True, "status": "live"})
            self.assertEqual(r.headers.getRawHeaders("cache-control"), ["no-store"])
            for name, value in SECURITY.items():
                self.assertEqual(r.headers.getRawHeaders(name), [value])
        r = await self.http.head(url + "/healthz")
        self.assertEqual(r.code, 200)
        for path in ("/readyz", "/ready"):
            r = await self.http.get(url + path)
            self.assertEqual(json.loads(await r.content()), {"ready": True})
        self.gateway.runner.closing = True
        r = await self.http.get(url + "/readyz")
        self.assertEqual(r.code, 503)
        self.assertEqual(json.loads(await r.content()), {"ready": False, "reason": "shutting down"})

    async def test_unknown_path_is_plain_404_with_headers(self) -> None:
        url = await self.asyncSetUp()
        r = await self.http.get(url + "/nope/deeper")
        self.assertEqual(r.code, 404)
        self.assertEqual(await r.content(), b"Not Found")
        self.assertEqual(r.headers.getRawHeaders("x-content-type-options"), ["nosniff"])

    async def test_websocket_on_any_path_gets_the_challenge(self) -> None:
        url = await self.asyncSetUp()
        for path in ("/", "/some/where"):
            client = await ws_connect(self, url, path)
            frame = await client.frames.get()
            self.assertEqual(frame["type"], "event")
            self.assertEqual(frame["event"], "connect.challenge")
            self.assertRegex(frame["payload"]["nonce"], r"^[0-9a-f]{32}$")
            self.assertIsInstance(frame["payload"]["ts"], int)
            client.sendClose()
            await client.closed

    async def test_websocket_side_is_built_on_the_first_upgrade(self) -> None:
        url = await self.asyncSetUp()
        r = await self.http.get(url + "/healthz")
        await r.content()
        self.assertIsNone(self.gateway._ws_factory)
        client = await ws_connect(self, url)
        frame = await client.frames.get()
        self.assertEqual(frame["event"], "connect.challenge")
        factory = self.gateway._ws_factory
        self.assertIsNotNone(factory)
        # Later upgrades share the one factory (its connections and runs).
        self.assertIs(self.gateway.websocket_resource(), self.gateway.websocket_resource())
        # Shutdown still reaches the client of a lazily built factory.
        await self.gateway.shutdown(0)
        self.assertEqual(await client.closed, 1001)

    async def test_shutdown_without_any_websocket(self) -> None:
        url = await self.asyncSetUp()
        r = await self.http.get(url + "/healthz")
        await r.content()
        await self.gateway.shutdown(0)
        self.assertIsNone(self.gateway._ws_factory)
        self.assertFalse(self.gateway.ready)


LAZY_AUTOBAHN = """
import os
import sys
from twisted.internet import reactor
from openclaw_twisted import Gateway, parse_config
from openclaw_twisted import cli, tap
gateway = Gateway(parse_config({}, dict(os.environ)), reactor)
gateway.site()
print("autobahn" in sys.modules, end=" ")
gateway.websocket_resource()
print("autobahn" in sys.modules)
"""


class LazyAutobahnTests(SynchronousTestCase):
    def test_autobahn_is_imported_on_first_websocket_only(self) -> None:
        # A fresh interpreter: this test process has long imported Autobahn.
        state = self.mktemp()
        out = subprocess.run(
            [sys.executable, "-c", LAZY_AUTOBAHN],
            env=child_env(state),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.assertEqual(out.stdout.split(), ["False", "True"])
