"""``GET /metrics`` on a real loopback gateway: counters after real runs, auth, the gate, labels."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.agents.events import RunEvent
from openclaw_twisted.agents.runner import Run
from openclaw_twisted.testing import FakeUpstream, Reply

from ..support import listen, ws_connect
from .memory import TOKEN, parse_response
from .test_loopback import RawClient, request_bytes, until
from .test_upstream import MODELS

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: Every route label the gateway may write: its endpoint names, and the two fallbacks.
ROUTES = {
    "health",
    "ready",
    "openapi",
    "metrics",
    "chat_completions",
    "models",
    "model",
    "none",
    "websocket",
}


def samples(text: str) -> Samples:
    """``{(sample name, sorted labels): value}`` of a scrape, parsed by prometheus-client."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def raw_get(path: bytes, *headers: bytes, body: bytes = b"") -> bytes:
    head = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *headers]
    if body:
        head += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


BEARER = b"Authorization: Bearer " + TOKEN.encode()


class MetricsTests(TestCase):
    timeout = 60

    async def serve(self, *replies: Reply, metrics: dict[str, Any] | None = None) -> int:
        self.upstream = await FakeUpstream.start(reactor)
        self.addCleanup(self.upstream.stop)
        self.upstream.script(*replies)
        data = self.upstream.gateway_config(models=MODELS)
        if metrics is not None:
            data["gateway"]["metrics"] = metrics
        config = parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()})
        self.gateway = Gateway(config, reactor)
        self.addCleanup(lambda: self.gateway.shutdown(0))
        url = await listen(self, self.gateway)
        return int(url.rsplit(":", 1)[1])

    async def send(self, port: int, request: bytes) -> RawClient:
        client = RawClient(request)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(client.transport.abortConnection)  # type: ignore[union-attr]
        return client

    async def fetch(self, port: int, request: bytes) -> Any:
        client = await self.send(port, request)
        await client.lost
        response = parse_response(bytes(client.received))
        assert response is not None
        return response

    def run_ends(self) -> list[Deferred[tuple[Run, RunEvent]]]:
        """Deferreds that fire with the final event of the next runs, one each, in order."""
        ends: list[Deferred[tuple[Run, RunEvent]]] = [Deferred() for _ in range(8)]

        def on_event(run: Run, event: RunEvent) -> None:
            if event.phase in ("end", "error"):
                next(d for d in ends if not d.called).callback((run, event))

        self.gateway.runner.listeners.append(on_event)
        return ends

    async def scrape(self, port: int) -> Samples:
        response = await self.fetch(port, raw_get(b"/metrics", BEARER))
        self.assertEqual(response.status, 200, response.body)
        self.assertTrue(response.header("content-type").startswith("text/plain; version=0.0.4"))
        return samples(response.body.decode("utf-8"))

    async def test_counters_after_an_answer_a_provider_500_and_a_client_that_left(self) -> None:
        port = await self.serve(
            Reply(),
            Reply(status=500),
            Reply(deltas=("one", " two", " three"), stall_after=1),
            metrics={"enabled": True},
        )
        ends = self.run_ends()
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        ok = await self.fetch(port, request_bytes(chat))
        self.assertEqual(ok.status, 200)
        failed = await self.fetch(port, request_bytes(chat))
        self.assertEqual(failed.status, 502, failed.body)
        leaving = await self.send(port, request_bytes({**chat, "stream": True}))
        # The first delta reached the client: the stream is open and the run has begun.
        while b"one" not in leaving.received:
            await leaving.first
            leaving.first = Deferred()
        mid = await self.scrape(port)
        self.assertEqual(mid[("openclaw_streams_open", (("kind", "sse"),))], 1)
        self.assertEqual(mid[("openclaw_runs_active", ())], 1)
        leaving.transport.loseConnection()  # type: ignore[union-attr]
        outcomes = [(await d)[1] for d in ends[:3]]
        self.assertEqual(
            [e.data.get("error", {}).get("kind", "ok") for e in outcomes],
            ["ok", "upstream_error", "aborted"],
        )
        s = await self.scrape(port)

        def requests(status: str) -> float:
            labels = (("route", "chat_completions"), ("status", status))
            return s.get(("openclaw_http_requests_total", labels), 0)

        self.assertEqual((requests("200"), requests("502"), requests("499")), (1, 1, 1))
        self.assertEqual(
            s[("openclaw_http_requests_total", (("route", "metrics"), ("status", "200")))], 1
        )
        for outcome in ("ok", "upstream_error", "aborted"):
            self.assertEqual(s[("openclaw_run_completed_total", (("outcome", outcome),))], 1)
        self.assertEqual(s[("openclaw_provider_errors_total", (("kind", "upstream_error"),))], 1)
        self.assertNotIn(("openclaw_provider_errors_total", (("kind", "aborted"),)), s)
        self.assertEqual(s[("openclaw_run_duration_seconds_count", ())], 3)
        # The 500 never gave a first token; the other two did.
        self.assertEqual(s[("openclaw_run_first_token_seconds_count", ())], 2)
        self.assertEqual(s[("openclaw_run_first_token_seconds_bucket", (("le", "120.0"),))], 2)
        self.assertEqual(s[("openclaw_runs_active", ())], 0)
        self.assertEqual(s[("openclaw_streams_open", (("kind", "sse"),))], 0)

    async def test_websocket_connections_are_open_streams(self) -> None:
        port = await self.serve(metrics={"enabled": True, "auth": "none"})
        ws = await ws_connect(self, f"http://127.0.0.1:{port}")
        s = await self.scrape(port)
        self.assertEqual(s[("openclaw_streams_open", (("kind", "websocket"),))], 1)
        ws.sendClose()
        await ws.closed
        metrics = self.gateway.metrics
        assert metrics is not None
        # The server hears of the close on its own side of the socket, a moment later.
        value = metrics.registry.get_sample_value
        await until(lambda: value("openclaw_streams_open", {"kind": "websocket"}) == 0)
        s = await self.scrape(port)
        self.assertEqual(s[("openclaw_streams_open", (("kind", "websocket"),))], 0)

    async def test_off_by_default(self) -> None:
        port = await self.serve()
        response = await self.fetch(port, raw_get(b"/metrics", BEARER))
        self.assertEqual(response.status, 404)
        self.assertIsNone(self.gateway.metrics)

    async def test_token_auth_is_the_gateways_bearer(self) -> None:
        port = await self.serve(metrics={"enabled": True})
        missing = await self.fetch(port, raw_get(b"/metrics"))
        self.assertEqual(missing.status, 401)
        self.assertEqual(missing.header("www-authenticate"), "Bearer")
        wrong = await self.fetch(port, raw_get(b"/metrics", b"Authorization: Bearer nope"))
        self.assertEqual(wrong.status, 401)
        self.assertEqual(wrong.json()["error"]["type"], "unauthorized")
        await self.scrape(port)

    async def test_auth_none_lets_a_scraper_in_without_a_credential(self) -> None:
        port = await self.serve(metrics={"enabled": True, "auth": "none"})
        response = await self.fetch(port, raw_get(b"/metrics"))
        self.assertEqual(response.status, 200)
        self.assertIn(b"openclaw_http_requests_total", response.body)

    async def test_the_gate_refuses_a_body_on_get_metrics(self) -> None:
        port = await self.serve(metrics={"enabled": True})
        body = json.dumps({"x": "y" * 1000}).encode()
        refused = await self.fetch(port, raw_get(b"/metrics", BEARER, body=body))
        self.assertEqual(refused.status, 413)
        self.assertEqual(refused.json()["error"]["message"], "This endpoint takes no request body.")
        # The credential is checked first, before anything is said about the body.
        anonymous = await self.fetch(port, raw_get(b"/metrics", body=body))
        self.assertEqual(anonymous.status, 401)

    async def test_route_labels_never_carry_the_path(self) -> None:
        port = await self.serve(metrics={"enabled": True})
        hostile = [
            b"/%3Cscript%3Ealert(1)%3C/script%3E",
            b"/../../etc/passwd",
            b"/v1/chat/completions/extra",
            b"/metrics/../health%00x",
            b"/v1/models/" + b"x" * 2000,
            b"/%ff%fe",
            *(b"/random-%d" % i for i in range(50)),
        ]
        for path in hostile:
            await self.fetch(port, raw_get(path, BEARER))
        s = await self.scrape(port)
        routes = {
            dict(labels)["route"] for name, labels in s if name == "openclaw_http_requests_total"
        }
        self.assertLessEqual(routes, ROUTES)
        self.assertIn("none", routes)
        self.assertIn("model", routes)  # /v1/models/xxxx…: a route, named, not spelt
        none_404 = s[("openclaw_http_requests_total", (("route", "none"), ("status", "404")))]
        self.assertGreaterEqual(none_404, 50)
