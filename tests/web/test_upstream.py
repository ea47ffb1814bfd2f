"""End to end through a real provider: the gateway on loopback, a FakeUpstream model server."""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.agents.events import RunEvent
from openclaw_twisted.agents.runner import Run
from openclaw_twisted.testing import FakeUpstream, Reply, parse_sse

from ..support import http_client, listen
from .memory import TOKEN, parse_response
from .test_loopback import RawClient, Repeated, request_bytes, until

AUTH = {"Authorization": f"Bearer {TOKEN}"}


#: Agents main (default) and beta, each on its own model of the FakeUpstream.
AGENTS = {
    "defaults": {"model": "fake/model-a"},
    "list": [
        {"id": "main", "default": True},
        {"id": "beta", "name": "Beta", "model": "fake/model-b"},
    ],
}
MODELS = ("model-a", "model-b")


class UpstreamTests(TestCase):
    async def serve(self, *replies: Reply, **chat: Any) -> str:
        self.upstream = await FakeUpstream.start(reactor)
        self.addCleanup(self.upstream.stop)
        self.upstream.script(*replies)
        endpoints = {"chatCompletions": {"enabled": True, **chat}}
        data = self.upstream.gateway_config(models=MODELS, endpoints=endpoints, agents=AGENTS)
        config = parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()})
        self.gateway = Gateway(config, reactor)
        self.addCleanup(lambda: self.gateway.shutdown(0))
        self.http = http_client(self)
        self.url = await listen(self, self.gateway)
        return self.url + "/v1/chat/completions"

    async def post(self, url: str, body: dict[str, Any], **headers: str) -> tuple[int, Any, Any]:
        r = await self.http.post(url, json=body, headers={**AUTH, **headers})
        content = await r.content()
        ctype = (r.headers.getRawHeaders("content-type") or [""])[0]
        parsed = parse_sse(content) if "event-stream" in ctype else json.loads(content)
        return r.code, r.headers, parsed

    async def test_routing_history_and_system_prompt_seen_upstream(self) -> None:
        url = await self.serve()
        messages = [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "now"},
        ]
        code, _, body = await self.post(url, {"model": "openclaw/beta", "messages": messages})
        self.assertEqual(code, 200)
        self.assertEqual(body["choices"][0]["message"]["content"], "Hello from upstream.")
        self.assertEqual(
            body["usage"], {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        )
        sent = self.upstream.requests[0].json
        self.assertEqual(sent["model"], "model-b")
        # Nobody reads this answer as it is written: it is asked for whole.
        self.assertIs(sent["stream"], False)
        system = sent["messages"][0]
        self.assertEqual(system["role"], "system")
        self.assertIn("Beta", json.dumps(system))
        self.assertIn("Answer in French.", json.dumps(system))
        last = json.dumps(sent["messages"][-1])
        self.assertIn("[Current message - respond to this]", last)
        self.assertIn("User: now", last)
        # A stable session from `user`: the second turn carries the first one as history.
        for text in ("first", "second"):
            code, _, _ = await self.post(
                url,
                {"user": "Zoe", "messages": [{"role": "user", "content": text}]},
                **{"x-openclaw-agent-id": "main"},
            )
            self.assertEqual(code, 200)
        second = self.upstream.requests[2].json
        self.assertEqual(second["model"], "model-a")
        turns = [(m["role"], json.dumps(m["content"])) for m in second["messages"][1:]]
        self.assertEqual([r for r, _ in turns], ["user", "assistant", "user"])
        self.assertIn("first", turns[0][1])
        self.assertIn("second", turns[2][1])

    async def test_streaming_through_a_provider(self) -> None:
        url = await self.serve(Reply(deltas=("a", "b", "c"), delay=0.01))
        code, _, events = await self.post(
            url,
            {
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        self.assertEqual(code, 200)
        deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
        self.assertEqual(
            deltas,
            [{"role": "assistant"}, {"content": "a"}, {"content": "b"}, {"content": "c"}, {}],
        )
        self.assertEqual(events[-2]["usage"]["total_tokens"], 14)
        self.assertEqual(events[-1], "[DONE]")

    async def test_provider_failures(self) -> None:
        cases = [
            (Reply(status=429, retry_after="9"), 429, "upstream_rate_limited"),
            (Reply(status=401), 502, "upstream_auth"),
            (Reply(status=503), 502, "upstream_error"),
        ]
        url = await self.serve(*(reply for reply, _, _ in cases))
        for _, status, code in cases:
            got, headers, body = await self.post(
                url, {"messages": [{"role": "user", "content": "hi"}]}
            )
            self.assertEqual((got, body["error"]["code"]), (status, code))
            if status == 429:
                self.assertEqual(headers.getRawHeaders("retry-after"), ["9"])
            if code == "upstream_auth":
                self.assertEqual(headers.getRawHeaders("x-should-retry"), ["false"])
                self.assertNotIn("sk-test-key", json.dumps(body))

    async def test_unreachable_provider_is_502(self) -> None:
        url = await self.serve()
        await self.upstream.stop()
        code, _, body = await self.post(url, {"messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual((code, body["error"]["code"]), (502, "upstream_unavailable"))

    async def test_error_mid_stream(self) -> None:
        url = await self.serve(Reply(deltas=("a", "b"), stream_error="overloaded"))
        code, _, events = await self.post(
            url, {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
        )
        self.assertEqual(code, 200)
        self.assertEqual(
            [e["choices"][0]["delta"] for e in events[:3]],
            [{"role": "assistant"}, {"content": "a"}, {"content": "b"}],
        )
        self.assertIn("error", events[3])
        self.assertEqual(events[4:], ["[DONE]"])

    async def test_client_disconnect_closes_the_upstream_connection_within_a_second(
        self,
    ) -> None:
        for stream in (True, False):
            await self.serve(Reply(deltas=("a",), stall_after=1))
            port = int(self.url.rsplit(":", 1)[1])
            body = {"stream": stream, "messages": [{"role": "user", "content": "hi"}]}
            client = RawClient(request_bytes(body))
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            received = await self.upstream.request(0)
            if stream:
                await until(lambda c=client: b'"content":"a"' in c.received)
            started = time.monotonic()
            client.transport.loseConnection()  # type: ignore[union-attr]
            await received.disconnected
            self.assertLess(time.monotonic() - started, 1.0)
            await client.lost

    async def test_slow_client_pauses_the_upstream_body(self) -> None:
        await self.serve(Reply(forever=True))
        port = int(self.url.rsplit(":", 1)[1])
        body = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
        client = RawClient(request_bytes(body))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.pauseProducing()  # type: ignore[union-attr]
        # Backpressure travels client → gateway → run → provider → FakeUpstream's writer.
        received = await self.upstream.paused
        sent = received.chunks_sent
        self.assertFalse(received.completed)
        client.transport.loseConnection()  # type: ignore[union-attr]
        await received.disconnected
        self.assertLess(sent, 1_000_000)

    async def test_slow_reader_of_a_20mb_upstream_answer(self) -> None:
        piece, count = "y" * 131_072, 160  # 20 MiB
        await self.serve(Reply(deltas=Repeated(piece, count)))
        port = int(self.url.rsplit(":", 1)[1])
        most = [0]

        def sample(run: Run, event: RunEvent) -> None:
            most[0] = max(most[0], len(run._events) * len(piece))

        self.gateway.runner.listeners.append(sample)
        body = {"stream": True, "messages": [{"role": "user", "content": "big"}]}
        client = RawClient(request_bytes(body))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.pauseProducing()  # type: ignore[union-attr]
        received = await self.upstream.paused
        # The upstream was paused long before it sent the whole answer.
        self.assertLess(received.chunks_sent, count)
        client.read_step = 262_144
        client._next_pause = len(client.received) + client.read_step
        client.transport.resumeProducing()  # type: ignore[union-attr]
        await client.lost
        response = parse_response(bytes(client.received))
        assert response is not None
        events = parse_sse(response.body)
        content = sum(len(e["choices"][0]["delta"].get("content", "")) for e in events[:-1])
        self.assertEqual(content, len(piece) * count)
        self.assertEqual(events[-1], "[DONE]")
        self.assertLess(most[0], 4 * 1024 * 1024)
