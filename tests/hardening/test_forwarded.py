"""The lockout behind a trusted proxy holds for every spelling of the locked address."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted.auth import ClientAddress, parse_ip
from openclaw_twisted.testing import ScriptedProvider

from ..support import listen
from ..web.memory import TOKEN, make_gateway
from ..web.test_browser_guard import exchange

HI = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()


class ForwardedLockoutTests(TestCase):
    async def start(self) -> str:
        data = {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN, "rateLimit": {}},
                "trustedProxies": ["127.0.0.1"],
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        provider = ScriptedProvider(clock=reactor)
        self.gateway = make_gateway(self.mktemp(), provider, data, reactor=reactor)
        return await listen(self, self.gateway)

    async def post(self, url: str, token: str, *forwarded: str) -> Any:
        """A POST from the trusted proxy 127.0.0.1, one X-Forwarded-For line per ``forwarded``."""
        head = [
            "POST /v1/chat/completions HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {token}",
            "Content-Type: application/json",
            f"Content-Length: {len(HI)}",
            *(f"X-Forwarded-For: {f}" for f in forwarded),
        ]
        return await exchange(self, url, head, HI)

    async def test_every_spelling_of_a_locked_address_is_still_locked(self) -> None:
        url = await self.start()
        for _ in range(10):
            self.assertEqual((await self.post(url, "wrong", "5.5.5.5")).status, 401)
        r = await self.post(url, TOKEN, "5.5.5.5")
        self.assertEqual(r.headers["status-line"], ["HTTP/1.1 429 Too Many Requests"])
        self.assertEqual(r.header("retry-after"), "300")
        self.assertEqual(r.json()["error"]["type"], "rate_limited")
        spellings: list[tuple[str, ...]] = [
            ("5.5.5.5:1234",),  # a balancer that appends IP:port
            ("[::ffff:5.5.5.5]:443",),
            ("::ffff:5.5.5.5",),
            ('"5.5.5.5"',),
            ("  5.5.5.5  ",),
            ("203.0.113.9, 5.5.5.5",),
            ("5.5.5.5, 127.0.0.1",),  # a second trusted proxy on the way
            ("5.5.5.5", "127.0.0.1"),  # ... which added its own header line
        ]
        for forwarded in spellings:
            r = await self.post(url, TOKEN, *forwarded)
            self.assertEqual(r.status, 429, forwarded)

    async def test_unreadable_hops_count_against_the_proxy_itself(self) -> None:
        url = await self.start()
        # Each unreadable spelling was a fresh, never-locked address: rotating them allowed
        # unlimited guesses.  Now they are all the proxy, which the lock then stops.
        junk = ["05.5.5.5", "5.5.5.5, garbage", "unknown", "5.5.5.5:99999", "[::1", "0x05050505"]
        for i in range(10):
            r = await self.post(url, "wrong", junk[i % len(junk)])
            self.assertEqual(r.status, 401)
        r = await self.post(url, TOKEN, "5.5.5.5, garbage-again")
        self.assertEqual((r.status, r.header("retry-after")), (429, "300"))
        # A real client behind the proxy is unaffected.
        self.assertEqual((await self.post(url, TOKEN, "198.51.100.7")).status, 200)


class ParseTests(SynchronousTestCase):
    def test_hops(self) -> None:
        cases = {
            "5.5.5.5": "5.5.5.5",
            "5.5.5.5:1234": "5.5.5.5",
            "[::1]:80": "::1",
            "[::1]": "::1",
            "::1": "::1",
            "[2001:DB8::1]:8443": "2001:db8::1",
            "::ffff:5.5.5.5": "5.5.5.5",
            "05.5.5.5": None,  # octal to some parsers: never guess
            "5.5.5.5:": None,
            "5.5.5.5:x": None,
            "[::1]x": None,
            "garbage": None,
            "": None,
        }
        for hop, expected in cases.items():
            self.assertEqual(parse_ip(hop), expected, hop)

    def test_resolve(self) -> None:
        c = ClientAddress.from_config(("127.0.0.1", "10.0.0.0/8"))
        self.assertEqual(c.resolve("127.0.0.1", "5.5.5.5:1, 10.0.0.3:80"), "5.5.5.5")
        self.assertEqual(c.resolve("127.0.0.1", "5.5.5.5, garbage"), "127.0.0.1")
        self.assertEqual(c.resolve("127.0.0.1", "5.5.5.5, garbage, 10.0.0.3"), "127.0.0.1")
        self.assertEqual(c.resolve("127.0.0.1", "5.5.5.5,"), "5.5.5.5")
        # Behind an untrusted peer the header is the client's own word: ignored.
        self.assertEqual(c.resolve("203.0.113.1", "5.5.5.5"), "203.0.113.1")
