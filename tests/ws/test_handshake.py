"""The WS handshake on a real socket: challenge, connect, hello-ok, and every refusal."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted.ws.server import EVENTS, METHODS

from ..support import WSClient, verdict, ws_connect
from .helpers import TOKEN, connect_frame, make_gateway, open_session, serve, ws_factory


class HandshakeTests(TestCase):
    async def start(self, config: dict[str, Any] | None = None, clock: Any = None) -> str:
        self.gateway = make_gateway(self, config, clock=clock)
        return await serve(self, self.gateway)

    async def refused(self, url: str, frame: Any, *, binary: bool = False) -> tuple[Any, int]:
        """Send ``frame`` as the first frame: the reply (if any) and the close code."""
        client = await ws_connect(self, url)
        challenge = await client.frames.get()
        self.assertEqual(challenge["event"], "connect.challenge")
        if binary:
            client.sendMessage(b"\x00\x01", isBinary=True)
        elif isinstance(frame, bytes):
            client.sendMessage(frame)
        else:
            client.send_json(frame)
        reply = await client.frames.get()
        code = await client.closed
        assert code is not None
        return reply, code

    async def test_hello_ok(self) -> None:
        url = await self.start()
        client = await ws_connect(self, url)
        challenge = await client.frames.get()
        self.assertEqual(challenge["type"], "event")
        self.assertRegex(challenge["payload"]["nonce"], "^[0-9a-f]{32}$")
        self.assertIsInstance(challenge["payload"]["ts"], int)
        # A client that speaks 3 and 4 (OpenClaw 2026.9) is answered with 3.
        client.send_json(connect_frame(low=3, high=4))
        res = await client.frames.get()
        self.assertEqual((res["type"], res["id"], res["ok"]), ("res", "connect-1", True))
        hello = res["payload"]
        self.assertEqual(hello["type"], "hello-ok")
        self.assertEqual(hello["protocol"], 3)
        self.assertEqual(hello["server"]["version"], "0.1.0")
        self.assertRegex(hello["server"]["connId"], "^[0-9a-f-]{36}$")
        self.assertEqual(hello["features"], {"methods": list(METHODS), "events": list(EVENTS)})
        factory = ws_factory(self.gateway)
        self.assertEqual(
            hello["policy"],
            {
                "maxPayload": factory.max_payload,
                "maxBufferedBytes": factory.max_buffered_bytes,
                "tickIntervalMs": 30000,
            },
        )
        snapshot = hello["snapshot"]
        self.assertEqual(snapshot["sessionDefaults"]["mainSessionKey"], "agent:main:main")
        self.assertTrue(snapshot["health"]["ok"])
        client.sendClose()
        self.assertEqual(await client.closed, 1000)

    async def test_password_auth(self) -> None:
        url = await self.start({"gateway": {"auth": {"mode": "password", "password": "pw"}}})
        client = await ws_connect(self, url)
        await client.frames.get()
        frame = connect_frame(None)
        frame["params"]["auth"] = {"password": "pw"}
        client.send_json(frame)
        self.assertTrue((await client.frames.get())["ok"])

    async def test_wrong_first_frame(self) -> None:
        url = await self.start()
        for frame in (
            {"type": "req", "id": "1", "method": "health", "params": {}},
            {"type": "event", "event": "connect"},
            ["not", "an", "object"],
            b"{not json",
        ):
            reply, code = await self.refused(url, frame)
            self.assertEqual(code, 1008, frame)
            self.assertFalse(reply["ok"])
            self.assertEqual(reply["error"]["code"], "INVALID_REQUEST")
            self.assertIn("connect", reply["error"]["message"])
        reply, code = await self.refused(url, None, binary=True)
        self.assertEqual((reply["error"]["code"], code), ("INVALID_REQUEST", 1008))

    async def test_bad_connect_params(self) -> None:
        url = await self.start()
        cases: list[tuple[str, Any]] = [
            ("minProtocol", "3"),
            ("maxProtocol", None),
            ("client", {"id": "x"}),
            ("client", "cli"),
            ("auth", {"token": 42}),
        ]
        for name, value in cases:
            frame = connect_frame()
            frame["params"][name] = value
            reply, code = await self.refused(url, frame)
            self.assertEqual(code, 1008, name)
            self.assertEqual(reply["id"], "connect-1")
            self.assertEqual(reply["error"]["code"], "INVALID_REQUEST")
        frame = connect_frame()
        frame["params"] = []
        reply, code = await self.refused(url, frame)
        self.assertEqual((reply["error"]["code"], code), ("INVALID_REQUEST", 1008))

    async def test_protocol_mismatch_closes_1002(self) -> None:
        url = await self.start()
        for low, high in ((4, 5), (1, 2)):
            reply, code = await self.refused(url, connect_frame(low=low, high=high))
            self.assertEqual(code, 1002)
            self.assertEqual(reply["error"]["code"], "INVALID_REQUEST")
            self.assertEqual(reply["error"]["details"], {"expectedProtocol": 3})

    async def test_bad_auth_closes_1008(self) -> None:
        url = await self.start()
        for token in ("wrong", None):
            reply, code = await self.refused(url, connect_frame(token))
            self.assertEqual(code, 1008)
            self.assertEqual(reply["error"]["code"], "UNAUTHORIZED")
            self.assertEqual(reply["error"]["details"]["reason"], "wrong" if token else "missing")

    async def test_failures_count_for_the_shared_limiter(self) -> None:
        url = await self.start(
            {
                "gateway": {
                    "auth": {
                        "token": TOKEN,
                        "rateLimit": {"maxAttempts": 2, "exemptLoopback": False},
                    }
                }
            }
        )
        for _ in range(2):
            reply, code = await self.refused(url, connect_frame("wrong"))
            self.assertEqual((reply["error"]["code"], code), ("UNAUTHORIZED", 1008))
        # Locked: even the right token is refused, and HTTP shares the verdict.
        reply, code = await self.refused(url, connect_frame(TOKEN))
        self.assertEqual((reply["error"]["code"], code), ("RATE_LIMITED", 1008))
        self.assertEqual(reply["error"]["details"]["retryAfterMs"], 300_000)
        self.assertEqual(verdict(self.gateway.auth, TOKEN, "127.0.0.1").reason, "locked")

    async def test_client_ip_behind_trusted_proxy(self) -> None:
        url = await self.start(
            {
                "gateway": {
                    "trustedProxies": ["127.0.0.1"],
                    "auth": {
                        "token": TOKEN,
                        "rateLimit": {"maxAttempts": 1, "exemptLoopback": False},
                    },
                }
            }
        )
        client = await ws_connect(self, url, headers={"X-Forwarded-For": "203.0.113.9"})
        await client.frames.get()
        client.send_json(connect_frame("wrong"))
        await client.frames.get()
        self.assertEqual(await client.closed, 1008)
        # The forwarded address was locked, not the proxy's.
        self.assertEqual(verdict(self.gateway.auth, TOKEN, "203.0.113.9").reason, "locked")
        self.assertTrue(verdict(self.gateway.auth, TOKEN, "127.0.0.1").ok)

    async def test_no_connect_within_10s_closes(self) -> None:
        clock = Clock()
        url = await self.start(clock=clock)
        client = await ws_connect(self, url)
        await client.frames.get()
        clock.advance(9.9)
        self.assertFalse(client.closed.called)
        clock.advance(0.1)
        self.assertEqual(await client.closed, 1008)

    async def test_connected_client_is_not_timed_out_and_gets_ticks(self) -> None:
        clock = Clock()
        url = await self.start(clock=clock)
        session = await open_session(self, url)
        clock.advance(10)
        clock.advance(20)
        tick = await session.event("tick")
        self.assertEqual(tick["payload"], {"ts": 30_000})
        clock.advance(30)
        tick2 = await session.event("tick")
        self.assertEqual(tick2["payload"], {"ts": 60_000})
        self.assertEqual(tick2["seq"], tick["seq"] + 1)
        self.assertTrue((await session.call("health"))["ok"])
        self.assertFalse(session.client.closed.called)

    async def test_second_connect_is_refused_without_closing(self) -> None:
        url = await self.start()
        session = await open_session(self, url)
        frame = await session.call("connect", connect_frame()["params"])
        self.assertEqual(frame["error"]["code"], "INVALID_REQUEST")
        self.assertTrue((await session.call("health"))["ok"])

    async def test_oversized_frame_is_refused(self) -> None:
        url = await self.start()
        factory = ws_factory(self.gateway)
        factory.max_payload = 1024
        factory.setProtocolOptions(maxMessagePayloadSize=1024, maxFramePayloadSize=1024)
        session = await open_session(self, url)
        session.send("chat.send", {"message": "x" * 2048})
        self.assertEqual(await session.client.closed, 1009)

    async def test_shutdown_event_is_not_overtaken_by_the_close(self) -> None:
        # The client's socket is backed up when the gateway stops: the shutdown event waits
        # in the outbox, and the close frame must wait behind it (it used to go out first).
        url = await self.start()
        session = await open_session(self, url)
        (conn,) = ws_factory(self.gateway).connections
        assert conn.outbox is not None
        conn.outbox.pauseProducing()
        await self.gateway.shutdown(0)
        conn.outbox.resumeProducing()
        event = await session.event("shutdown")
        self.assertEqual(event["payload"]["reason"], "gateway stopping")
        self.assertEqual(await session.client.closed, 1001)

    async def test_shutdown_event_then_close(self) -> None:
        url = await self.start()
        session = await open_session(self, url)
        client: WSClient = await ws_connect(self, url)  # still in the handshake
        await client.frames.get()
        await self.gateway.shutdown(0)
        event = await session.event("shutdown")
        self.assertEqual(event["payload"]["reason"], "gateway stopping")
        self.assertEqual(await session.client.closed, 1001)
        self.assertEqual(await client.closed, 1001)
