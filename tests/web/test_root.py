"""One port: health routes, security headers, 404s and WebSocket upgrades on any path."""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config

from ..support import http_client, listen, ws_connect

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
        self.gateway.ready = False
        r = await self.http.get(url + "/readyz")
        self.assertEqual(r.code, 503)
        self.assertEqual(json.loads(await r.content()), {"ready": False})

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
