"""/v1/responses and the session routes in memory: enabling, the gate's table, errors, streams."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted import parse_config
from openclaw_twisted.config import ConfigError
from openclaw_twisted.providers.interface import ProviderError
from openclaw_twisted.testing import Script, ScriptedProvider, parse_sse

from .memory import TOKEN, MemoryClient, Response, make_gateway

KiB = 1024


def config(chat: bool = False, responses: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN},
            "http": {
                "endpoints": {
                    "chatCompletions": {"enabled": chat},
                    "responses": {"enabled": responses, **extra},
                }
            },
        },
        "agents": {"defaults": {"model": "scripted/model-a"}},
    }


class Base(SynchronousTestCase):
    def serve(self, script: Script | None = None, **kw: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.provider = ScriptedProvider(script or Script(), clock=self.reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, config(**kw), self.reactor)

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        client = MemoryClient(self.gateway)
        client.request(method, path, body, **kw)
        self.reactor.advance(0)
        return client.response()


class EnablingTests(Base):
    def test_off_by_default_is_404(self) -> None:
        self.serve(responses=False)
        r = self.call("POST", "/v1/responses", {"input": "hi"})
        self.assertEqual((r.status, r.body), (404, b"Not Found"))
        self.assertEqual(self.call("POST", "/v1/responses").status, 404)  # without a body too
        self.assertEqual(self.call("GET", "/v1/models").status, 404)

    def test_models_served_with_responses_alone(self) -> None:
        self.serve()
        r = self.call("GET", "/v1/models")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["data"][0]["id"], "openclaw")
        self.assertEqual(self.call("POST", "/v1/chat/completions", {"messages": []}).status, 404)

    def test_config_key_is_checked(self) -> None:
        data = {"gateway": {"http": {"endpoints": {"responses": {"enabled": "yes"}}}}}
        with self.assertRaises(ConfigError) as caught:
            parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()})
        self.assertIn("gateway.http.endpoints.responses.enabled", str(caught.exception))
        defaults = parse_config({}, {"OPENCLAW_STATE_DIR": self.mktemp()}).gateway.responses
        self.assertEqual((defaults.enabled, defaults.max_body_bytes), (False, 20 * 1024 * 1024))

    def test_start_line_names_the_endpoint(self) -> None:
        self.serve()
        self.assertIn("POST /v1/responses, GET /v1/models", self.gateway.describe()[0])


class GateTests(Base):
    def test_the_gate_table(self) -> None:
        self.serve(maxBodyBytes=64 * KiB)
        big = {"input": "x" * (64 * KiB)}
        cases: list[tuple[str, str, Any, dict[str, Any], int]] = [
            ("POST", "/v1/responses", big, {}, 413),
            ("POST", "/v1/responses", big, {"token": None}, 401),
            (
                "POST",
                "/v1/responses",
                {"input": "hi"},
                {"headers": {"Content-Type": "text/plain"}},
                415,
            ),
            ("GET", "/v1/responses", None, {}, 405),
            ("GET", "/sessions/agent%3Amain%3Amain/history", {"a": 1}, {}, 413),
            ("POST", "/sessions/agent%3Amain%3Amain/kill", {"a": "x" * 2 * KiB}, {}, 413),
            ("POST", "/sessions/agent%3Amain%3Amain/kill", {}, {}, 404),
            ("POST", "/sessions/agent%3Amain%3Amain/kill", None, {}, 404),
            ("POST", "/sessions/agent%3Amain%3Amain/kill", [1], {}, 400),
            ("POST", "/sessions/agent%3Amain%3Amain/kill", {}, {"token": None}, 401),
            ("GET", "/sessions/agent%3Amain%3Amain/kill", None, {}, 405),
            ("POST", "/sessions/agent%3Amain%3Amain/history", None, {}, 405),
            ("GET", "/sessions/agent%3Amain%3Amain/history", None, {"token": "wrong"}, 401),
            ("GET", "/sessions/agent%3Amain%3Amain/history?limit=0", None, {}, 400),
            ("GET", "/sessions/%20/history", None, {}, 400),
            ("GET", "/sessions/" + "k" * 600 + "/history", None, {}, 400),
            ("GET", "/sessions/agent%3Anobody%3Ax/history", None, {}, 400),
        ]
        for method, path, body, kw, status in cases:
            r = self.call(method, path, body, **kw)
            self.assertEqual(r.status, status, (method, path[:60], r.body[:200]))
        self.assertEqual(self.provider.requests, [])

    def test_session_key_too_long_says_so(self) -> None:
        self.serve()
        r = self.call("GET", "/sessions/" + "k" * 600 + "/history")
        self.assertEqual(r.json()["ok"], False)
        self.assertIn("the limit is 512", r.json()["error"]["message"])


class AnswerTests(Base):
    def test_non_streaming_object(self) -> None:
        self.serve(Script(deltas=("Hi", "!")))
        r = self.call("POST", "/v1/responses", {"model": "openclaw", "input": "hi", "user": "u"})
        self.assertEqual(r.status, 200, r.body)
        body = r.json()
        self.assertRegex(body["id"], "^resp_[0-9a-f]{32}$")
        self.assertEqual(body["object"], "response")
        self.assertEqual(body["status"], "completed")
        self.assertEqual(body["created_at"], int(self.reactor.seconds()))
        self.assertEqual(
            body["output"][0]["content"],
            [{"type": "output_text", "text": "Hi!", "annotations": []}],
        )
        self.assertIsNone(body["error"])
        self.assertIsNone(body["incomplete_details"])
        self.assertEqual(
            set(body["usage"]),
            {
                "input_tokens",
                "input_tokens_details",
                "output_tokens",
                "output_tokens_details",
                "total_tokens",
            },
        )

    def test_unknown_usage_is_null(self) -> None:
        from openclaw_twisted.providers.interface import Usage

        self.serve(Script(usage=Usage()))
        r = self.call("POST", "/v1/responses", {"input": "hi"})
        self.assertIsNone(r.json()["usage"])

    def test_failure_before_the_answer_is_an_http_error(self) -> None:
        refuse = ProviderError("unavailable", "connection refused")
        for stream in (False, True):
            self.serve(Script(refuse=refuse))
            r = self.call("POST", "/v1/responses", {"input": "hi", "stream": stream})
            self.assertEqual(r.status, 502)
            self.assertEqual(r.json()["error"]["code"], "upstream_unavailable")

    def test_stream_frames_carry_event_lines_and_types(self) -> None:
        self.serve(Script(deltas=("a", "b")))
        r = self.call("POST", "/v1/responses", {"input": "hi", "stream": True})
        self.assertEqual(r.header("content-type"), "text/event-stream; charset=utf-8")
        frames = [f for f in r.body.decode().split("\n\n") if f]
        self.assertEqual(frames[-1], "data: [DONE]")
        for n, f in enumerate(frames[:-1]):
            event, data = f.split("\n")
            self.assertTrue(event.startswith("event: response."), f)
            self.assertIn(f'"type":"{event[len("event: ") :]}"', data)
            self.assertIn(f'"sequence_number":{n}', data)
        events = parse_sse(r.body)[:-1]  # then "[DONE]"
        self.assertEqual(
            [e["delta"] for e in events if e["type"] == "response.output_text.delta"], ["a", "b"]
        )
