"""FakeUpstream (openclaw_twisted.testing) speaks the real wire formats on loopback."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseFailed

from openclaw_twisted import parse_config
from openclaw_twisted.testing import FakeUpstream, Reply
from tests.support import http_client


def events(body: bytes) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        assert data is not None, block
        out.append((name, data if data == "[DONE]" else json.loads(data)))
    return out


class FakeUpstreamTests(TestCase):
    async def server(self) -> FakeUpstream:
        server = await FakeUpstream.start(reactor)
        self.addCleanup(server.stop)
        return server

    async def test_openai_stream(self) -> None:
        server = await self.server()
        server.script(Reply(deltas=["a", "b"]))
        http = http_client(self)
        body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
        response = await http.post(
            server.base_url + "/v1/chat/completions",
            json=body,
            headers={"authorization": "Bearer k"},
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"]
        )
        got = events(await response.content())
        deltas = [e[1]["choices"][0]["delta"].get("content") for e in got[1:3]]
        self.assertEqual(deltas, ["a", "b"])
        self.assertEqual(got[3][1]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(got[4][1]["usage"]["total_tokens"], 14)
        self.assertEqual(got[5], (None, "[DONE]"))
        self.assertEqual(server.requests[0].json, body)
        self.assertEqual(server.requests[0].headers["authorization"], "Bearer k")
        self.assertTrue(server.requests[0].completed)

    async def test_anthropic_stream(self) -> None:
        server = await self.server()
        server.script(Reply(deltas=["x"], stop_reason="length"))
        http = http_client(self)
        response = await http.post(
            server.base_url + "/v1/messages", json={"model": "c", "stream": True}
        )
        got = events(await response.content())
        self.assertEqual(
            [name for name, _ in got],
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ],
        )
        self.assertEqual(got[3][1]["delta"], {"type": "text_delta", "text": "x"})
        self.assertEqual(got[5][1]["delta"]["stop_reason"], "max_tokens")

    async def test_error_status(self) -> None:
        server = await self.server()
        server.script(Reply(status=429, retry_after="7", error_message="slow down"))
        http = http_client(self)
        response = await http.post(
            server.base_url + "/v1/messages", json={"model": "c", "stream": True}
        )
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["7"])
        self.assertEqual((await response.json())["error"]["message"], "slow down")

    async def test_hang_and_disconnect(self) -> None:
        server = await self.server()
        server.script(Reply(hang=True))
        http = http_client(self)
        d: Deferred[Any] = http.post(
            server.base_url + "/v1/chat/completions", json={"stream": True}
        )
        received = await server.request(0)
        self.assertFalse(received.closed)
        self.assertFalse(received.answered)
        d.cancel()
        await received.disconnected
        self.assertTrue(received.closed)
        self.assertFalse(received.completed)
        self.failureResultOf(d)

    async def test_stop_drops_open_connections(self) -> None:
        server = await FakeUpstream.start(reactor)
        server.script(Reply(stall_after=1))
        http = http_client(self)
        response = await http.post(
            server.base_url + "/v1/chat/completions", json={"stream": True}, unbuffered=True
        )
        self.assertEqual(response.code, 200)
        await server.stop()
        self.assertTrue(server.requests[0].closed)
        # The client sees the cut body.
        with self.assertRaises(ResponseFailed):
            await response.content()

    async def test_accept_delay_on_a_clock(self) -> None:
        clock = Clock()
        server = await FakeUpstream.start(reactor, clock)
        self.addCleanup(server.stop)
        server.script(Reply(accept_delay=5, deltas=["z"]))
        http = http_client(self)
        d = http.post(
            server.base_url + "/v1/chat/completions", json={"stream": True}, unbuffered=True
        )
        received = await server.request(0)
        clock.advance(4.9)
        self.assertFalse(received.answered)
        clock.advance(0.1)
        self.assertTrue(received.answered)
        response = await d
        self.assertEqual(response.code, 200)
        body = response.content()
        while not server.requests[0].completed:
            clock.advance(0)
        got = events(await body)
        self.assertEqual(got[1][1]["choices"][0]["delta"], {"content": "z"})

    async def test_gateway_config(self) -> None:
        """The document parses to this server as a provider, every agent on its first model."""
        server = await self.server()
        for api in ("openai-completions", "anthropic-messages"):
            data = server.gateway_config(api, ["m", "spare"])  # type: ignore[arg-type]
            config = parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()})
            expected = server.provider("fake", api, ["m", "spare"])  # type: ignore[arg-type]
            self.assertEqual(config.provider("fake"), expected)
            self.assertEqual(config.gateway.auth.secret, "test-token")
            self.assertTrue(config.chat_completions.enabled)
            self.assertEqual(data["agents"], {"defaults": {"model": "fake/m"}})
        # A test adds what it needs to a fresh mapping; the next call is unchanged.
        server.gateway_config()["gateway"]["http"]["endpoints"]["responses"] = {"enabled": True}
        self.assertNotIn("responses", server.gateway_config()["gateway"]["http"]["endpoints"])
        self.assertNotIn("apiKey", server.provider_config(api_key=None))
