"""Limits in memory: slow headers (slowloris), huge headers, trickled bodies, deep and wide JSON."""

from __future__ import annotations

import json
import time

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.testing import Script, ScriptedProvider
from openclaw_twisted.web.request import BODY_TIMEOUT_SECONDS, HEADER_TIMEOUT_SECONDS

from ..web.memory import TOKEN, MemoryClient, gateway_config, make_gateway, post
from .support import LogCapture, assert_error_envelope

HI = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    b"Content-Type: application/json\r\n"
)


def request_bytes(body: bytes = json.dumps(HI).encode()) -> bytes:
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.provider = ScriptedProvider(clock=self.reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, reactor=self.reactor)
        self.logs = LogCapture().install(self)

    def tearDown(self) -> None:
        self.assertEqual(self.logs.failures(), [])


class SlowHeaderTests(Base):
    def test_headers_one_byte_at_a_time_are_dropped_with_408(self) -> None:
        client = MemoryClient(self.gateway)
        data = request_bytes()
        for i in range(int(HEADER_TIMEOUT_SECONDS) - 1):
            client.send(data[i : i + 1])  # each byte resets twisted's idle timeout...
            self.reactor.advance(1)
        self.assertFalse(client.closed)
        self.reactor.advance(1)  # ...but not the header deadline
        self.assertTrue(client.closed)
        r = client.response()
        self.assertEqual(r.status, 408)
        self.assertEqual(assert_error_envelope(self, r)["code"], "request_timeout")
        self.assertEqual(self.provider.requests, [])

    def test_slowloris_does_not_starve_normal_clients(self) -> None:
        """500 connections trickling headers; normal requests are served all along."""
        slow = [MemoryClient(self.gateway, peer=f"10.0.{i // 250}.{i % 250}") for i in range(500)]
        line = request_bytes()
        served = 0
        for second in range(int(HEADER_TIMEOUT_SECONDS)):
            for client in slow:
                client.send(line[second : second + 1])
            r = post(self.gateway, HI)
            self.assertEqual(r.status, 200)
            served += 1
            self.reactor.advance(1)
        self.assertEqual(served, 30)
        self.assertTrue(all(c.closed for c in slow))
        # Nothing is left behind for the dropped connections.
        for client in slow:
            client.disconnect()
        self.assertEqual([c for c in slow if c.channel._header_deadline is not None], [])

    def test_idle_connection_is_closed_quietly(self) -> None:
        client = MemoryClient(self.gateway)
        self.reactor.advance(HEADER_TIMEOUT_SECONDS)
        self.assertTrue(client.closed)
        self.assertEqual(client.transport.value(), b"")

    def test_keep_alive_gets_a_fresh_deadline_per_request(self) -> None:
        client = MemoryClient(self.gateway)
        self.reactor.advance(HEADER_TIMEOUT_SECONDS - 1)
        client.send(request_bytes())
        self.assertEqual(client.response().status, 200)
        self.reactor.advance(HEADER_TIMEOUT_SECONDS - 1)
        self.assertFalse(client.closed)
        client.transport.clear()
        client.send(request_bytes())
        self.assertEqual(client.response().status, 200)
        self.assertFalse(client.closed)

    def test_a_long_response_is_not_cut_by_the_header_deadline(self) -> None:
        self.provider = ScriptedProvider(
            Script(deltas=("tick",) * 100, delta_delay=1.0), clock=self.reactor
        )
        self.gateway = make_gateway(self.mktemp(), self.provider, reactor=self.reactor)
        client = MemoryClient(self.gateway)
        client.request(body={**HI, "stream": True})
        self.reactor.pump([1.0] * 101)
        r = client.response()
        self.assertTrue(r.complete)
        self.assertEqual(r.events()[-1], "[DONE]")
        self.assertEqual(len([e for e in r.events() if e != "[DONE]"]), 102)


class HugeHeaderTests(Base):
    def send(self, head: bytes) -> MemoryClient:
        client = MemoryClient(self.gateway)
        client.send(head)
        return client

    def assertRefused(self, client: MemoryClient, status: int, code: str) -> None:
        r = client.response()
        self.assertEqual(r.status, status)
        self.assertEqual(assert_error_envelope(self, r)["code"], code)
        self.assertTrue(client.closed)
        self.assertEqual(self.provider.requests, [])

    def test_one_huge_header_value_is_431(self) -> None:
        for name in (b"x-openclaw-session-key", b"authorization", b"x-anything"):
            client = self.send(HEAD + name + b": " + b"k" * 100_000 + b"\r\n")
            self.assertRefused(client, 431, "headers_too_large")

    def test_huge_request_line_is_431(self) -> None:
        client = self.send(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n")
        self.assertRefused(client, 431, "headers_too_large")

    def test_too_many_or_too_much_headers_is_431(self) -> None:
        many = b"".join(b"x-h%d: v\r\n" % i for i in range(600))
        self.assertRefused(self.send(HEAD + many), 431, "headers_too_large")
        big = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 8000) for i in range(3))
        self.assertRefused(self.send(HEAD + big), 431, "headers_too_large")

    def test_malformed_heads_are_400(self) -> None:
        for head in (
            HEAD + b"x-openclaw-agent-id: ma\x00in\r\n\r\n",
            HEAD + b"no colon here\r\n\r\n",
            b"NOT A REQUEST LINE AT ALL\r\n\r\n",
            HEAD + b"Transfer-Encoding: gzip, chunked, x\r\n\r\n",
        ):
            self.assertRefused(self.send(head), 400, "bad_request")
        self.assertEqual(post(self.gateway, HI).status, 200)


class BodyLimitTests(Base):
    def test_chunked_body_trickling_in_is_408_after_30_seconds(self) -> None:
        client = MemoryClient(self.gateway)
        client.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(int(BODY_TIMEOUT_SECONDS) - 1):
            client.send(b"1\r\n \r\n")
            self.reactor.advance(1)
        self.assertEqual(client.transport.value(), b"")
        self.reactor.advance(1)
        r = client.response()
        self.assertEqual(r.status, 408)
        self.assertEqual(assert_error_envelope(self, r)["code"], "request_timeout")
        self.assertTrue(client.closed)

    def test_over_the_limit_with_and_without_content_length(self) -> None:
        self.gateway = make_gateway(
            self.mktemp(), self.provider, gateway_config("x", maxBodyBytes=1000), self.reactor
        )
        body = json.dumps({**HI, "pad": "x" * 2000}).encode()
        r = post(self.gateway, raw=body)
        self.assertEqual(
            (r.status, assert_error_envelope(self, r)["code"]), (413, "payload_too_large")
        )
        client = MemoryClient(self.gateway)
        client.send(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        r = client.response()
        self.assertEqual(
            (r.status, assert_error_envelope(self, r)["code"]), (413, "payload_too_large")
        )
        self.assertEqual(self.provider.requests, [])


class JsonShapeTests(Base):
    def test_invalid_utf8_anywhere_is_400(self) -> None:
        for raw in (
            b"\xff",
            b'{"model": "\xc3\x28"}',
            b'{"messages": [{"content": "\xed\xa0\x80"}]}',
        ):
            r = post(self.gateway, raw=raw)
            self.assertEqual(r.status, 400, raw)
            assert_error_envelope(self, r)

    def test_unpaired_surrogate_escapes_are_400_not_500(self) -> None:
        """They decode, but could never be written to a transcript or sent on as UTF-8."""
        for body in (
            {"user": "u", "messages": [{"role": "user", "content": "hi \ud800"}]},
            {"model": "x\udfff", "messages": [{"role": "user", "content": "hi"}]},
        ):
            r = post(
                self.gateway, raw=json.dumps(body).encode(), headers={"x-openclaw-agent-id": "main"}
            )
            self.assertEqual(r.status, 400, r.body)
            self.assertIn("surrogate", assert_error_envelope(self, r)["message"])
        # A proper pair (an emoji written as escapes) is fine and reaches the model intact.
        ok = {"messages": [{"role": "user", "content": "hi \ud83d\ude00"}]}
        self.assertEqual(post(self.gateway, raw=json.dumps(ok).encode()).status, 200)
        self.assertEqual(self.provider.requests[-1].messages[-1].text, "hi \U0001f600")

    def test_deep_nesting_is_400_not_a_recursion_error(self) -> None:
        for depth in (10_000, 1_000_000):
            raw = b'{"messages": ' + b'[{"a":' * depth + b"0" + b"}]" * depth + b"}"
            r = post(self.gateway, raw=raw)
            self.assertEqual(r.status, 400)
            assert_error_envelope(self, r)
        # Nesting the parser does take is just ignored where it does not belong.
        raw = (
            b'{"metadata_of_ours": '
            + b"[" * 500
            + b"]" * 500
            + b', "messages": [{"role": "user", "content": "hi"}]}'
        )
        self.assertEqual(post(self.gateway, raw=raw).status, 200)
        # ``tools`` is read now: the same nesting there is a 400 naming the field.
        r = post(self.gateway, raw=raw.replace(b"metadata_of_ours", b"tools"))
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["param"], "tools[0]")

    def test_ten_thousand_messages(self) -> None:
        messages = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
            for i in range(10_000)
        ]
        body = json.dumps({"model": "openclaw", "messages": messages}).encode()
        started = time.perf_counter()
        r = post(self.gateway, raw=body)
        elapsed = time.perf_counter() - started
        self.assertEqual(r.status, 200, r.body[:300])
        sent = self.provider.requests[-1].messages[-1].text
        # The header, 9,998 earlier entries, a blank line, the header and the current entry.
        self.assertEqual(sent.count("\n"), 10_001)
        self.assertTrue(sent.endswith("User: message 9998"))
        self.assertLess(elapsed, 5.0)  # about 0.1 s here: linear, nothing quadratic
