"""Auth under attack: a spray from 10,000 addresses behind a trusted proxy, lockouts, and no
secret in any log line, error body or header while failures pile up."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted import auth as auth_module
from openclaw_twisted.testing import FakeUpstream, Reply

from ..support import http_client, listen, ws_connect
from ..web.memory import TOKEN, MemoryClient, make_gateway
from ..ws.helpers import connect_frame
from .support import LogCapture

HI = {"messages": [{"role": "user", "content": "hi"}]}


def spray_config(state: str) -> dict[str, Any]:
    return {
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN, "rateLimit": {}},
            "trustedProxies": ["127.0.0.1"],
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
        },
        "agents": {"defaults": {"model": "scripted/m"}},
    }


class SprayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        state = self.mktemp()
        self.gateway = make_gateway(state, data=spray_config(state), reactor=self.reactor)
        self.logs = LogCapture().install(self)

    def post(self, client_ip: str, token: str) -> Any:
        client = MemoryClient(self.gateway)  # the trusted proxy, forwarding for client_ip
        client.request(body=HI, token=token, headers={"X-Forwarded-For": client_ip})
        response = client.response()
        client.disconnect()
        return response

    def test_spray_from_ten_thousand_addresses(self) -> None:
        limiter = self.gateway.auth.limiter
        assert limiter is not None
        # A smaller cap than the real one (MAX_TRACKED_ADDRESSES), so the spray goes past it.
        self.patch(auth_module, "MAX_TRACKED_ADDRESSES", 1000)
        statuses = set()
        for i in range(10_000):
            statuses.add(self.post(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "wrong").status)
            if i % 1000 == 0:  # a legitimate client all along: never slowed or locked out
                self.reactor.advance(1)
                self.assertEqual(self.post("192.0.2.10", TOKEN).status, 200)
        self.assertEqual(statuses, {401})
        self.assertLessEqual(len(limiter), 1000)
        # Once the window has passed, the records go with the next failure.
        self.reactor.advance(61)
        self.assertEqual(self.post("10.255.0.1", "wrong").status, 401)
        self.assertEqual(len(limiter), 1)
        self.assertEqual(self.post("192.0.2.10", TOKEN).status, 200)
        self.assertEqual(self.logs.failures(), [])

    def test_one_address_hammering_is_locked_out_others_are_not(self) -> None:
        for _ in range(10):
            self.assertEqual(self.post("203.0.113.5", "wrong").status, 401)
        r = self.post("203.0.113.5", TOKEN)  # the lock holds even for the right token
        self.assertEqual((r.status, r.header("retry-after")), (429, "300"))
        # Spoofing X-Forwarded-For from an untrusted peer does not dodge the lock: the
        # gateway ignores the header and the peer is the client.
        client = MemoryClient(self.gateway, peer="203.0.113.5")
        client.request(body=HI, headers={"X-Forwarded-For": "198.51.100.1"})
        self.assertEqual(client.response().status, 429)
        self.assertEqual(self.post("192.0.2.10", TOKEN).status, 200)


SECRET_TOKEN = "gw-token-6f1d0c9e2b7a4d58"
SECRET_KEY = "sk-upstream-9a8b7c6d5e4f3210"


class NoSecretsTests(TestCase):
    timeout = 30

    async def test_nothing_secret_in_logs_bodies_or_headers(self) -> None:
        upstream = await FakeUpstream.start(reactor)
        self.addCleanup(upstream.stop)
        upstream.script(
            Reply(status=401, error_message=f"Incorrect API key provided: {SECRET_KEY}"),
            Reply(status=400, error_message=f"invalid request for key {SECRET_KEY}"),
            Reply(status=500, error_message=f"internal error ({SECRET_KEY})"),
            Reply(deltas=("a",), stream_error=f"overloaded, key {SECRET_KEY}"),
        )
        data = upstream.gateway_config(token=SECRET_TOKEN, api_key=SECRET_KEY)
        data["gateway"]["auth"]["rateLimit"] = {"exemptLoopback": False}
        config = parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()})
        logs = LogCapture().install(self)
        gateway = Gateway(config, reactor)
        self.addCleanup(lambda: Deferred.fromCoroutine(gateway.shutdown(0)))
        url = await listen(self, gateway)
        http = http_client(self)
        seen: list[str] = []

        async def post(token: str, body: Any = HI) -> int:
            r = await http.post(
                url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            seen.append(repr(list(r.headers.getAllRawHeaders())))
            seen.append((await r.content()).decode())
            return int(r.code)

        # The provider's failures, each of which echoes the key back.
        for stream in (False, False, False, True):
            await post(SECRET_TOKEN, {**HI, "stream": stream})
        # Near misses: a prefix, one character off, the token with more after it.
        for guess in (SECRET_TOKEN[:-1], SECRET_TOKEN[:-1] + "0", SECRET_TOKEN + "x"):
            self.assertEqual(await post(guess), 401)
        client = await ws_connect(self, url)
        await client.frames.get()
        client.send_json(connect_frame(SECRET_TOKEN[:10]))
        seen.append(json.dumps(await client.frames.get()))
        await client.closed
        for _ in range(10):
            await post("wrong")
        self.assertEqual(await post(SECRET_TOKEN), 429)  # locked out now

        everything = "\n".join(seen) + logs.text()
        for secret in (SECRET_TOKEN, SECRET_KEY):
            self.assertNotIn(secret, everything)
        self.assertIn("Unauthorized", everything)  # what was captured is the real thing
        self.assertEqual(logs.failures(), [])
