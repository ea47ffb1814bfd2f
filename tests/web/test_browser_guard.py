"""A web page on another site cannot drive the gateway: Origin, Host on loopback, refusals."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from openclaw_twisted.testing import ScriptedProvider

from ..support import listen, ws_connect
from .memory import Response, make_gateway, parse_response

SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class Exchange(Protocol):
    """Sends one request; ``done`` fires with the first whole response (or what came)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        response = parse_response(self.received)
        if response is not None and response.complete and not self.done.called:
            self.done.callback(self.received)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.done.called:
            self.done.callback(self.received)


async def exchange(test: TestCase, url: str, head: list[str], body: bytes = b"") -> Response:
    """One raw HTTP/1.1 request over a loopback socket; the response, status line included."""
    port = int(url.rsplit(":", 1)[1])
    proto = Exchange(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    test.addCleanup(proto.transport.abortConnection)  # type: ignore[union-attr]
    raw = await proto.done
    response = parse_response(raw)
    assert response is not None, f"no response: {raw!r}"
    response.headers["status-line"] = [raw.split(b"\r\n", 1)[0].decode("latin-1")]
    return response


def upgrade(host: str, *extra: str, version: str = "13", key: str | None = KEY) -> list[str]:
    head = [
        "GET / HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
    ]
    if key is not None:
        head.append(f"Sec-WebSocket-Key: {key}")
    return head + list(extra)


class BrowserGuardTests(TestCase):
    async def start(self, gateway: dict[str, Any] | None = None) -> str:
        data = {
            "gateway": {
                "auth": {"mode": "none"},
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
                **(gateway or {}),
            },
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        self.provider = ScriptedProvider(clock=reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, data, reactor=reactor)
        url = await listen(self, self.gateway)
        self.hostport = url.removeprefix("http://")
        return url

    def assertRefused(self, r: Response, status: int, reason: str, code: str) -> dict[str, Any]:
        self.assertEqual(r.headers["status-line"], [f"HTTP/1.1 {status} {reason}"])
        self.assertEqual(r.header("content-type"), "application/json; charset=utf-8")
        for name, value in SECURITY.items():
            self.assertEqual(r.header(name), value, name)
        error: dict[str, Any] = json.loads(r.body)["error"]
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertEqual(error["code"], code)
        return error

    async def test_websocket_from_a_foreign_origin_is_refused(self) -> None:
        url = await self.start()
        r = await exchange(self, url, upgrade(self.hostport, "Origin: https://evil.example"))
        error = self.assertRefused(r, 403, "Forbidden", "origin_not_allowed")
        self.assertIn("'https://evil.example'", error["message"])
        self.assertIn("gateway.controlUi.allowedOrigins", error["message"])
        self.assertIsNone(self.gateway._ws_factory)  # Autobahn never saw it
        # A sandboxed page says "null": refused as well.
        r = await exchange(self, url, upgrade(self.hostport, "Origin: null"))
        self.assertRefused(r, 403, "Forbidden", "origin_not_allowed")
        # The same name on another port is another origin.
        r = await exchange(self, url, upgrade(self.hostport, "Origin: http://127.0.0.1:1"))
        self.assertRefused(r, 403, "Forbidden", "origin_not_allowed")

    async def test_same_origin_and_no_origin_are_accepted(self) -> None:
        url = await self.start()
        local = url.replace("127.0.0.1", "localhost")
        # The gateway's own page, a page on http://localhost:PORT, and a non-browser client.
        for target, headers in ((url, {"Origin": url}), (local, {"Origin": local}), (url, {})):
            client = await ws_connect(self, target, "/", headers)
            frame = await client.frames.get()
            self.assertEqual(frame["event"], "connect.challenge")
            client.sendClose()
            await client.closed

    async def test_configured_origins_are_accepted(self) -> None:
        url = await self.start({"controlUi": {"allowedOrigins": ["https://ui.example"]}})
        client = await ws_connect(self, url, "/", {"Origin": "https://UI.example:443"})
        self.assertEqual((await client.frames.get())["event"], "connect.challenge")
        client.sendClose()
        await client.closed
        r = await exchange(self, url, upgrade(self.hostport, "Origin: https://ui.example:8443"))
        self.assertRefused(r, 403, "Forbidden", "origin_not_allowed")
        # "*" lets every origin in.
        url = await self.start({"controlUi": {"allowedOrigins": ["*"]}})
        client = await ws_connect(self, url, "/", {"Origin": "https://evil.example"})
        self.assertEqual((await client.frames.get())["event"], "connect.challenge")
        client.sendClose()
        await client.closed

    async def test_foreign_host_on_loopback_is_refused(self) -> None:
        url = await self.start()
        # DNS rebinding: evil.example now resolves to 127.0.0.1; the browser sends its name.
        r = await exchange(self, url, ["GET /healthz HTTP/1.1", "Host: evil.example:18789"])
        error = self.assertRefused(r, 421, "Misdirected Request", "host_not_allowed")
        self.assertIn("gateway.allowedHosts", error["message"])
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        r = await exchange(
            self,
            url,
            [
                "POST /v1/chat/completions HTTP/1.1",
                "Host: evil.example",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
            ],
            body,
        )
        self.assertRefused(r, 421, "Misdirected Request", "host_not_allowed")
        self.assertEqual(self.provider.requests, [])  # no turn ran
        r = await exchange(self, url, upgrade("evil.example", "Origin: http://evil.example"))
        self.assertRefused(r, 421, "Misdirected Request", "host_not_allowed")
        # This machine's own names, any port, are served.
        for host in ("localhost", "127.0.0.1:9", "[::1]:18789", "LocalHost."):
            r = await exchange(self, url, ["GET /healthz HTTP/1.1", f"Host: {host}"])
            self.assertEqual(r.status, 200, host)

    async def test_allowed_hosts_are_served_on_loopback(self) -> None:
        url = await self.start({"allowedHosts": ["gw.example"]})
        r = await exchange(self, url, ["GET /healthz HTTP/1.1", "Host: gw.example:443"])
        self.assertEqual(r.status, 200)
        client = await ws_connect(self, url, "/", {})
        client.sendClose()
        await client.closed
        r = await exchange(self, url, ["GET /healthz HTTP/1.1", "Host: other.example"])
        self.assertEqual(r.status, 421)

    async def test_refused_handshakes_get_headers_and_a_json_body(self) -> None:
        url = await self.start()
        for version in ("7", "8", "13, 13"):  # 8 (hybi-10) would skip the Origin check
            r = await exchange(self, url, upgrade(self.hostport, version=version))
            self.assertRefused(r, 426, "Upgrade Required", "unsupported_websocket_version")
            self.assertEqual(r.header("sec-websocket-version"), "13")
        r = await exchange(self, url, upgrade(self.hostport, key=None))
        error = self.assertRefused(r, 400, "Bad Request", "invalid_upgrade")
        self.assertIn("Sec-WebSocket-Key", error["message"])
        r = await exchange(self, url, upgrade(self.hostport, key="c2hvcnQ="))
        self.assertRefused(r, 400, "Bad Request", "invalid_upgrade")
        head = upgrade(self.hostport)
        head[3] = "Connection: keep-alive"
        r = await exchange(self, url, head)
        self.assertRefused(r, 400, "Bad Request", "invalid_upgrade")
        head = upgrade(self.hostport)
        head[0] = "POST / HTTP/1.1"
        r = await exchange(self, url, [*head, "Content-Length: 0"])
        self.assertRefused(r, 405, "Method Not Allowed", "method_not_allowed")
        self.assertEqual(r.header("allow"), "GET")
