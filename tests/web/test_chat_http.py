"""POST /v1/chat/completions in memory: every status, body and header of CONTRACT §4."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from openclaw_twisted.providers.interface import ProviderError, Usage
from openclaw_twisted.testing import Script, ScriptedProvider
from openclaw_twisted.web.request import BODY_TIMEOUT_SECONDS

from .memory import TOKEN, MemoryClient, gateway_config, make_gateway, post

HI = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}
SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.provider = ScriptedProvider(clock=self.reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, reactor=self.reactor)

    def with_config(self, data: dict[str, Any], script: Any = None) -> None:
        self.provider = ScriptedProvider(script or Script(), clock=self.reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, data, reactor=self.reactor)

    def assertError(
        self,
        r: Any,
        status: int,
        message: str,
        type_: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry: bool | None = False,
    ) -> None:
        self.assertEqual(r.status, status, r.body)
        self.assertEqual(r.header("content-type"), "application/json; charset=utf-8")
        self.assertEqual(
            r.json(), {"error": {"message": message, "type": type_, "param": param, "code": code}}
        )
        self.assertEqual(r.header("x-should-retry"), "false" if retry is False else None)
        for name, value in SECURITY.items():
            self.assertEqual(r.header(name), value)


class OrderOfChecksTests(Base):
    def test_disabled_is_a_plain_404_even_with_a_body(self) -> None:
        self.with_config({"gateway": {"auth": {"mode": "token", "token": TOKEN}}})
        for body in (HI, None):
            r = post(self.gateway, body)
            self.assertEqual((r.status, r.body), (404, b"Not Found"))
            self.assertEqual(r.header("content-type"), "text/plain; charset=utf-8")
        r = post(self.gateway, None, method="GET", path="/v1/models")
        self.assertEqual((r.status, r.body), (404, b"Not Found"))
        self.assertEqual(self.provider.requests, [])

    def test_wrong_method_is_405_before_auth(self) -> None:
        for method in ("GET", "PUT", "DELETE"):
            r = post(self.gateway, None, method=method, token=None)
            self.assertEqual(r.status, 405)
            self.assertEqual(r.header("allow"), "POST")
        r = post(self.gateway, HI, method="PUT", token=None)  # with a body: refused early
        self.assertEqual((r.status, r.header("allow")), (405, "POST"))

    def test_missing_or_wrong_token_is_401(self) -> None:
        for token in (None, "wrong", ""):
            r = post(self.gateway, HI, token=token)
            self.assertError(r, 401, "Unauthorized", "unauthorized")
        r = post(self.gateway, HI, token=None, headers={"Authorization": "Basic dGVzdA=="})
        self.assertEqual(r.status, 401)
        self.assertEqual(self.provider.requests, [])
        # The scheme is case-insensitive and the value trimmed.
        r = post(self.gateway, HI, token=None, headers={"Authorization": f"bEaReR   {TOKEN}  "})
        self.assertEqual(r.status, 200)

    def test_auth_holds_for_every_spelling_of_the_path(self) -> None:
        for path in ("/v1/chat/%63ompletions", "/v1/chat/completions?x=1"):
            r = post(self.gateway, HI, path=path, token=None)
            self.assertEqual(r.status, 401, path)
        self.assertEqual(self.provider.requests, [])

    def test_password_mode(self) -> None:
        data = gateway_config("x")
        data["gateway"]["auth"] = {"mode": "password", "password": "pw"}
        self.with_config(data)
        self.assertEqual(post(self.gateway, HI, token="pw").status, 200)
        self.assertEqual(post(self.gateway, HI, token=TOKEN).status, 401)

    def test_rate_limit_locks_even_the_right_token_with_retry_after(self) -> None:
        data = gateway_config("x")
        data["gateway"]["auth"]["rateLimit"] = {
            "maxAttempts": 2,
            "exemptLoopback": False,
            "lockoutMs": 10_000,
        }
        self.with_config(data)
        self.assertEqual(post(self.gateway, HI, token="bad").status, 401)
        self.assertEqual(post(self.gateway, HI, token="bad").status, 401)
        self.reactor.advance(2.5)
        for token in ("bad", TOKEN, None):
            r = post(self.gateway, HI, token=token)
            self.assertError(
                r,
                429,
                "Too many failed authentication attempts. Please try again later.",
                "rate_limited",
                retry=None,
            )
            self.assertEqual(r.header("retry-after"), "8")
        self.reactor.advance(8)
        self.assertEqual(post(self.gateway, HI).status, 200)

    def test_content_length_over_the_limit_is_413_without_reading(self) -> None:
        self.with_config(gateway_config("x", maxBodyBytes=1000))
        client = MemoryClient(self.gateway)
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 1001\r\n\r\n"
        )
        r = client.response()
        self.assertError(
            r, 413, "Payload too large", "invalid_request_error", code="payload_too_large"
        )
        self.assertNotIn(b"100 Continue", client.transport.value())
        self.assertTrue(client.closed)
        # Whatever the client still sends is drained, never parsed as a request.
        client.send(b"x" * 5000 + b"GET /healthz HTTP/1.1\r\n\r\n")
        self.assertEqual(client.transport.value().count(b"HTTP/1.1"), 1)
        self.assertEqual(self.provider.requests, [])

    def test_auth_is_checked_before_the_body_size(self) -> None:
        self.with_config(gateway_config("x", maxBodyBytes=10))
        r = post(self.gateway, HI, token="wrong")
        self.assertEqual(r.status, 401)
        r = post(self.gateway, HI)
        self.assertEqual(r.status, 413)

    def test_body_at_the_limit_is_read(self) -> None:
        body = json.dumps(HI).encode()
        self.with_config(gateway_config("x", maxBodyBytes=len(body)))
        self.assertEqual(post(self.gateway, raw=body).status, 200)

    def test_chunked_body_is_stopped_once_over_the_limit(self) -> None:
        self.with_config(gateway_config("x", maxBodyBytes=100))
        client = MemoryClient(self.gateway)
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        client.send(b"3c\r\n" + b"a" * 60 + b"\r\n")
        self.assertEqual(client.transport.value(), b"")
        client.send(b"3c\r\n" + b"a" * 60 + b"\r\n")
        r = client.response()
        self.assertEqual(r.status, 413)
        self.assertTrue(client.closed)

    def test_slow_body_is_408_after_30_seconds(self) -> None:
        client = MemoryClient(self.gateway)
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model":'
        )
        self.reactor.advance(BODY_TIMEOUT_SECONDS - 0.5)
        client.send(b' "openclaw"')  # trickling bytes does not extend the deadline
        self.assertEqual(client.transport.value(), b"")
        self.reactor.advance(0.5)
        r = client.response()
        self.assertError(
            r,
            408,
            "The request body was not received in time.",
            "invalid_request_error",
            code="request_timeout",
            retry=None,
        )
        self.assertTrue(client.closed)
        self.assertEqual(self.provider.requests, [])

    def test_complete_body_cancels_the_deadline(self) -> None:
        post(self.gateway, HI)
        pending = [c.func for c in self.reactor.getDelayedCalls() if c.active()]
        self.assertNotIn("_too_slow", [getattr(f, "__name__", "") for f in pending])

    def test_a_failing_gate_is_a_500_not_a_broken_connection(self) -> None:
        def broken(request: Any, route: Any) -> None:
            raise RuntimeError("gate bug")

        self.gateway._http_app.gate = broken  # type: ignore[assignment]
        r = post(self.gateway, HI)
        self.assertError(r, 500, "Internal error.", "api_error", code="internal_error", retry=None)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_invalid_json_is_400_with_the_parsers_message(self) -> None:
        r = post(self.gateway, raw=b'{"model": ')
        self.assertError(
            r, 400, "Expecting value: line 1 column 11 (char 10)", "invalid_request_error"
        )
        r = post(self.gateway, raw=b'{"a": NaN}')
        self.assertEqual(r.status, 400)
        r = post(self.gateway, raw=b"[" * 100_000)
        self.assertEqual(r.status, 400)

    def test_invalid_utf8_is_400(self) -> None:
        r = post(self.gateway, raw=b'{"model": "\xff"}')
        self.assertError(r, 400, "Request body is not valid UTF-8.", "invalid_request_error")

    def test_json_that_is_not_an_object_is_400(self) -> None:
        for raw in (b"[]", b'"hi"', b"3", b"null"):
            r = post(self.gateway, raw=raw)
            self.assertError(r, 400, "Request body must be a JSON object.", "invalid_request_error")

    def test_empty_body_is_an_empty_object(self) -> None:
        for raw in (b"", b"  \n"):
            r = post(self.gateway, raw=raw)
            self.assertError(
                r,
                400,
                "Missing user message in `messages`.",
                "invalid_request_error",
                param="messages",
                code="missing_user_message",
            )


class PlainSiteTests(Base):
    """Mounted in someone else's ``Site`` the checks are the same, after the body was read."""

    def test_order_of_checks(self) -> None:
        self.with_config(gateway_config("x", maxBodyBytes=100))
        site = Site(self.gateway.resource(), reactor=self.reactor)
        big = {"messages": [{"role": "user", "content": "x" * 200}]}
        self.assertEqual(post(self.gateway, big, site=site, token="wrong").status, 401)
        r = post(self.gateway, big, site=site)
        self.assertError(
            r, 413, "Payload too large", "invalid_request_error", code="payload_too_large"
        )
        self.assertEqual(post(self.gateway, HI, site=site, method="PUT").status, 405)
        r = post(self.gateway, HI, site=site)
        self.assertEqual(r.json()["choices"][0]["message"]["content"], "Hello from the script.")
        self.assertEqual(self.provider.requests[0].messages[-1].text, "hi")


class ValidationTests(Base):
    def test_invalid_model(self) -> None:
        for model in ("gpt-4o", "openclaw/", "openclaw:-x", "agent:", 3, ["openclaw"]):
            r = post(self.gateway, {**HI, "model": model})
            self.assertError(
                r,
                400,
                "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.",
                "invalid_request_error",
                param="model",
                code="invalid_model",
            )
        self.assertEqual(self.provider.requests, [])

    def test_unknown_agent_by_model_and_by_header(self) -> None:
        r = post(self.gateway, {**HI, "model": "openclaw/nope"})
        self.assertError(
            r,
            400,
            "Unknown agent 'nope'.",
            "invalid_request_error",
            param="model",
            code="unknown_agent",
        )
        r = post(self.gateway, HI, headers={"x-openclaw-agent-id": "  No Such!Agent "})
        self.assertError(
            r, 400, "Unknown agent 'no-such-agent'.", "invalid_request_error", code="unknown_agent"
        )
        r = post(self.gateway, HI, headers={"x-openclaw-session-key": "agent:zzz:mine"})
        self.assertError(
            r, 400, "Unknown agent 'zzz'.", "invalid_request_error", code="unknown_agent"
        )

    def test_sampling_out_of_range_names_the_param(self) -> None:
        bad = {
            "temperature": 2.5,
            "top_p": -0.1,
            "max_tokens": 0,
            "max_completion_tokens": 1.5,
            "presence_penalty": 3,
            "frequency_penalty": "1",
            "seed": 1.2,
            "stop": ["a", "b", "c", "d", "e"],
        }
        for name, value in bad.items():
            r = post(self.gateway, {**HI, name: value})
            self.assertEqual(r.status, 400, name)
            self.assertEqual(r.json()["error"]["param"], name)
            self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        self.assertEqual(self.provider.requests, [])

    def test_bad_stream_fields(self) -> None:
        self.assertEqual(
            post(self.gateway, {**HI, "stream": "yes"}).json()["error"]["param"], "stream"
        )
        r = post(self.gateway, {**HI, "stream_options": {"include_usage": 1}})
        self.assertEqual(r.json()["error"]["param"], "stream_options.include_usage")

    def test_sampling_reaches_the_provider(self) -> None:
        post(
            self.gateway,
            {
                **HI,
                "temperature": 0.5,
                "top_p": 1,
                "max_tokens": 9,
                "max_completion_tokens": 7,
                "stop": "END",
                "seed": 42,
                "presence_penalty": -2,
                "frequency_penalty": 2,
                "logit_bias": {"x": 1},  # unknown fields are ignored
            },
        )
        s = self.provider.requests[0].sampling
        self.assertEqual(
            (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed),
            (0.5, 1.0, 7, ("END",), 42),
        )
        self.assertEqual((s.presence_penalty, s.frequency_penalty), (-2.0, 2.0))

    def test_image_problems_are_400_and_the_agent_never_runs(self) -> None:
        png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="
        for url in (
            "https://example.invalid/cat.png",  # remote URLs need images.allowUrl
            "data:image/png,notbase64",
            "data:image/svg+xml;base64,PHN2Zz4=",
            "data:image/png;base64,@@@",
            "data:image/png;base64,R0lGODlhAQ==",  # a GIF declared as PNG
            "",
        ):
            content = [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": url}},
            ]
            r = post(self.gateway, {"messages": [{"role": "user", "content": content}]})
            self.assertError(
                r,
                400,
                "Invalid image_url content in `messages`.",
                "invalid_request_error",
                param="messages",
                code="invalid_image",
            )
        too_many = [{"type": "image_url", "image_url": {"url": png}}] * 9
        r = post(self.gateway, {"messages": [{"role": "user", "content": too_many}]})
        self.assertEqual(r.status, 400)
        self.assertEqual(self.provider.requests, [])


class ResponseTests(Base):
    def test_non_streaming_body(self) -> None:
        r = post(self.gateway, {**HI, "model": "openclaw/main"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-type"), "application/json; charset=utf-8")
        body = r.json()
        self.assertRegex(body.pop("id"), r"^chatcmpl-[0-9a-f]{32}$")
        self.assertEqual(body.pop("created"), int(self.reactor.seconds()))
        self.assertEqual(
            body,
            {
                "object": "chat.completion",
                "model": "openclaw/main",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello from the script."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
            },
        )
        for name, value in SECURITY.items():
            self.assertEqual(r.header(name), value)

    def test_lone_surrogate_from_the_provider_is_written_escaped(self) -> None:
        # "\\ud800" is legal JSON from a provider but cannot be UTF-8: escaped, not a 500.
        for stream in (False, True):
            self.with_config(gateway_config("x"), Script(deltas=("a\ud800", "b")))
            r = post(self.gateway, {**HI, "stream": stream})
            self.assertEqual(r.status, 200)
            self.assertIn(b"a\\ud800", r.body)
            r.body.decode("utf-8")
            if stream:
                chunks = [e for e in r.events() if e != "[DONE]"]
                text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            else:
                text = r.json()["choices"][0]["message"]["content"]
            self.assertEqual(text, "a\ud800b")

    def test_empty_answer_and_length(self) -> None:
        self.with_config(gateway_config("x"), Script(deltas=(), usage=Usage()))
        body = post(self.gateway, HI).json()
        self.assertEqual(body["choices"][0]["message"]["content"], "No response from OpenClaw.")
        # The provider reported no usage: null, not made-up zeros.
        self.assertIsNone(body["usage"])
        self.with_config(gateway_config("x"), Script(deltas=("cut",), stop_reason="length"))
        body = post(self.gateway, HI).json()
        self.assertEqual(body["choices"][0]["finish_reason"], "length")

    def test_streaming_frames(self) -> None:
        for include_usage in (False, True):
            body = {**HI, "stream": True, "stream_options": {"include_usage": include_usage}}
            r = post(self.gateway, body)
            self.assertEqual(r.status, 200)
            self.assertTrue(r.complete)
            self.assertEqual(r.header("content-type"), "text/event-stream; charset=utf-8")
            self.assertEqual(r.header("cache-control"), "no-cache")
            self.assertEqual(r.header("connection"), "keep-alive")
            self.assertEqual(r.header("x-accel-buffering"), "no")
            for name, value in SECURITY.items():
                self.assertEqual(r.header(name), value)
            events = r.events()
            self.assertEqual(events[-1], "[DONE]")
            chunks = events[:-1]
            self.assertEqual(len({c["id"] for c in chunks}), 1)
            self.assertEqual(len({c["created"] for c in chunks}), 1)
            self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
            self.assertTrue(all(c["model"] == "openclaw" for c in chunks))
            choices = [c["choices"] for c in chunks]
            expected = [
                [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
                *(
                    [{"index": 0, "delta": {"content": d}, "finish_reason": None}]
                    for d in ("Hello", " from", " the", " script.")
                ),
                [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            ]
            if include_usage:
                expected.append([])
                self.assertEqual(
                    chunks[-1]["usage"],
                    {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
                )
                self.assertTrue(all("usage" not in c for c in chunks[:-1]))
            else:
                self.assertTrue(all("usage" not in c for c in chunks))
            self.assertEqual(choices, expected)
            self.assertTrue(r.body.endswith(b"data: [DONE]\n\n"))

    def test_each_delta_is_written_as_it_arrives(self) -> None:
        self.with_config(gateway_config("x"), Script(deltas=("a", "b", "c"), delta_delay=1.0))
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        seen = []
        for _ in range(3):
            self.reactor.advance(1.0)
            seen.append([c["choices"][0]["delta"] for c in client.response().events()])
        self.assertEqual(
            seen,
            [
                [{"role": "assistant"}, {"content": "a"}],
                [{"role": "assistant"}, {"content": "a"}, {"content": "b"}],
                [{"role": "assistant"}, {"content": "a"}, {"content": "b"}, {"content": "c"}],
            ],
        )
        self.reactor.advance(1.0)
        self.assertTrue(client.response().complete)

    def test_heartbeat_while_the_run_is_silent(self) -> None:
        self.with_config(gateway_config("x", heartbeatSeconds=5), Script(hang=True))
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        self.assertEqual(client.response().status, 200)
        self.reactor.advance(4.9)
        self.assertNotIn(b": ping", client.response().body)
        self.reactor.advance(0.1)
        self.assertEqual(client.response().body.count(b": ping\n\n"), 1)
        self.reactor.advance(5)
        self.assertEqual(client.response().body.count(b": ping\n\n"), 2)
        self.assertEqual(len(client.response().events()), 1)  # pings are not events
        client.disconnect()
        self.assertTrue(self.provider.streams[0].cancelled)
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.active()], [])

    def test_heartbeat_counts_silence_from_the_last_write(self) -> None:
        # Chunks 3 s apart: never 5 s of silence, so never a ping.
        script = Script(deltas=("a", "b", "c", "d"), delta_delay=3.0)
        self.with_config(gateway_config("x", heartbeatSeconds=5), script)
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        self.reactor.pump([3.0] * 5)
        self.assertTrue(client.response().complete)
        self.assertNotIn(b": ping", client.response().body)
        client.disconnect()
        # Chunks 6 s apart: a ping at 5 s, the delta at 6 s, the next ping 5 s after it.
        script = Script(deltas=("a",), delta_delay=6.0)
        self.with_config(gateway_config("x", heartbeatSeconds=5), script)
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        self.reactor.pump([5.0])
        self.assertEqual(client.response().body.count(b": ping\n\n"), 1)
        self.reactor.pump([1.0, 4.5])
        self.assertEqual(client.response().body.count(b": ping\n\n"), 1)
        self.reactor.pump([0.5])
        self.assertEqual(client.response().body.count(b": ping\n\n"), 2)
        self.reactor.pump([1.0])
        self.assertTrue(client.response().complete)
        client.disconnect()
        self.assertEqual([c for c in self.reactor.getDelayedCalls() if c.active()], [])

    def test_status_waits_until_the_provider_accepted(self) -> None:
        self.with_config(gateway_config("x"), Script(accept_delay=3))
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        self.reactor.advance(2.9)
        self.assertEqual(client.transport.value(), b"")
        self.reactor.advance(0.1)
        self.assertEqual(client.response().status, 200)


class ProviderFailureTests(Base):
    CASES = [
        (
            ProviderError("unavailable", "connection refused"),
            502,
            "api_error",
            "upstream_unavailable",
            None,
        ),
        (
            ProviderError("auth", "401 from upstream: key sk-secret"),
            502,
            "api_error",
            "upstream_auth",
            False,
        ),
        (
            ProviderError("rate_limited", "slow down", status=429, retry_after="7"),
            429,
            "rate_limit_error",
            "upstream_rate_limited",
            None,
        ),
        (
            ProviderError("upstream_error", "503 from upstream", status=503),
            502,
            "api_error",
            "upstream_error",
            None,
        ),
        (
            ProviderError("misconfigured", "no such provider"),
            502,
            "api_error",
            "upstream_misconfigured",
            False,
        ),
    ]

    def test_failures_before_the_first_token_are_http_errors(self) -> None:
        for stream in (False, True):
            for error, status, type_, code, retry in self.CASES:
                self.with_config(gateway_config("x"), Script(refuse=error))
                r = post(self.gateway, {**HI, "stream": stream})
                self.assertEqual(r.status, status, error)
                body = r.json()["error"]
                self.assertEqual((body["type"], body["code"]), (type_, code))
                self.assertEqual(r.header("x-should-retry"), "false" if retry is False else None)
                self.assertNotIn("sk-secret", r.body.decode())
                if status == 429:
                    self.assertEqual(r.header("retry-after"), "7")

    def test_agent_timeout_is_504(self) -> None:
        data = gateway_config("x")
        data["agents"]["defaults"]["timeoutSeconds"] = 5
        self.with_config(data, Script(hang=True))
        client = MemoryClient(self.gateway)
        client.request(body=HI)
        self.reactor.advance(5)
        r = client.response()
        self.assertEqual(r.status, 504)
        self.assertEqual(r.json()["error"]["type"], "timeout")
        self.assertEqual(r.json()["error"]["code"], "agent_timeout")
        self.assertTrue(self.provider.streams[0].cancelled)

    def test_internal_error_is_500_without_details(self) -> None:
        def broken(request: Any) -> Script:
            raise RuntimeError("secret detail")

        self.with_config(gateway_config("x"), broken)
        r = post(self.gateway, HI)
        self.assertError(r, 500, "Internal error.", "api_error", code="internal_error", retry=None)
        self.assertNotIn(b"secret detail", r.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failure_mid_stream_is_one_error_frame_then_done(self) -> None:
        error = ProviderError("upstream_error", "stream broke")
        self.with_config(
            gateway_config("x"), Script(deltas=("a", "b", "c"), fail=error, fail_after=2)
        )
        r = post(self.gateway, {**HI, "stream": True})
        self.assertEqual(r.status, 200)
        events = r.events()
        self.assertEqual(
            [e["choices"][0]["delta"] for e in events[:3]],
            [{"role": "assistant"}, {"content": "a"}, {"content": "b"}],
        )
        self.assertEqual(
            events[3],
            {
                "error": {
                    "message": "Model provider error: stream broke",
                    "type": "api_error",
                    "param": None,
                    "code": "upstream_error",
                }
            },
        )
        self.assertEqual(events[4:], ["[DONE]"])
        self.assertTrue(r.complete)

    def test_failure_mid_answer_without_streaming_is_an_http_error(self) -> None:
        error = ProviderError("upstream_error", "stream broke")
        self.with_config(gateway_config("x"), Script(fail=error, fail_after=2))
        r = post(self.gateway, HI)
        self.assertEqual((r.status, r.json()["error"]["code"]), (502, "upstream_error"))

    def test_shutdown_mid_stream_ends_with_an_error_frame(self) -> None:
        self.with_config(gateway_config("x"), Script(deltas=("a",) * 100, delta_delay=1))
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        self.reactor.advance(1)
        done = self.gateway.runner.shutdown(0.5)
        self.reactor.advance(0.5)
        self.assertIsNone(self.successResultOf(done))
        r = client.response()
        self.assertTrue(r.complete)
        events = r.events()
        self.assertEqual(events[-2]["error"]["code"], "shutdown")
        self.assertEqual(events[-1], "[DONE]")


class FlowTests(Base):
    def test_backpressure_stops_pulling_from_the_provider(self) -> None:
        self.with_config(gateway_config("x"), Script(deltas=("x" * 1000,) * 500))
        client = MemoryClient(self.gateway, buffer_size=8_000)
        client.request(body={**HI, "stream": True})
        stream = self.provider.streams[0]
        # The transport's buffer filled and paused the stream: only the run's small event
        # buffer is filled, the provider is not drained.
        self.assertTrue(client.transport.paused)
        self.assertLess(stream.sent, 40)
        self.assertLess(len(client.transport.value()), 10_000)
        while client.transport.paused:
            client.transport.drain()
        r = client.response()
        self.assertTrue(r.complete)
        self.assertEqual(stream.sent, 500)
        self.assertEqual(len(r.events()), 500 + 3)
        self.assertLess(client.transport.most_buffered, 10_000)

    def test_client_disconnect_cancels_the_run(self) -> None:
        for stream in (True, False):
            self.with_config(gateway_config("x"), Script(hang=True))
            client = MemoryClient(self.gateway)
            client.request(body={**HI, "stream": stream})
            self.assertEqual(len(self.gateway.runner.active), 1)
            client.disconnect()
            self.assertTrue(self.provider.streams[0].cancelled)
            self.assertEqual(self.gateway.runner.active, {})

    def test_disconnect_while_waiting_for_the_provider(self) -> None:
        self.with_config(gateway_config("x"), Script(accept_delay=10))
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        client.disconnect()
        self.assertEqual(self.gateway.runner.active, {})
