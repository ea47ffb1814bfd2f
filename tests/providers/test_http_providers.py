"""Both HTTP providers against a real loopback upstream (FakeUpstream), wire format and faults."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import TestCase

from openclaw_twisted.config import ProviderApi, ProviderConfig
from openclaw_twisted.providers._http import HIGH_WATER
from openclaw_twisted.providers.interface import (
    Finish,
    Image,
    IModelStream,
    IProvider,
    Message,
    ModelEvent,
    ModelRequest,
    ProviderError,
    Sampling,
    TextDelta,
    Usage,
)
from openclaw_twisted.providers.registry import build_provider
from openclaw_twisted.testing import GARBAGE, FakeUpstream, Received, Reply
from tests.support import http_client

KEY = "sk-secret-test-key-0123456789"
REQUEST = ModelRequest("m1", "Be brief.", (Message("user", "hello"),))


async def closed_port() -> int:
    """A loopback port nobody listens on any more."""
    from twisted.internet.protocol import Factory

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = int(port.getHost().port)
    await port.stopListening()
    return number


async def drain(stream: IModelStream) -> tuple[list[str], Finish | None]:
    deltas: list[str] = []
    finish: Finish | None = None
    while (event := await stream.next()) is not None:
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            self_check = finish is None
            assert self_check, "two Finish events"
            finish = event
    return deltas, finish


class _ProviderTests:
    """The scenarios both APIs must pass; subclasses set ``api``."""

    api: ProviderApi

    # Provided by TestCase.
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertFalse: Any
    assertIs: Any
    assertIsInstance: Any
    assertLessEqual: Any
    assertGreater: Any
    failureResultOf: Any

    async def upstream(self, *replies: Reply) -> FakeUpstream:
        server = await FakeUpstream.start(reactor)
        self.addCleanup(server.stop)
        server.script(*replies)
        return server

    def provider(self, server: FakeUpstream, config: ProviderConfig | None = None) -> IProvider:
        config = config or server.provider("fake", self.api, ["m1"], api_key=KEY)
        return build_provider(config, http_client(self), reactor)  # type: ignore[arg-type]

    async def error(self, d: Deferred[Any]) -> ProviderError:
        try:
            await d
        except ProviderError as e:
            self.assertNotIn(KEY, e.message)
            return e
        raise AssertionError("no ProviderError")

    async def test_streams_deltas_and_usage(self) -> None:
        server = await self.upstream(Reply(deltas=["Hel", "lo", " wörld"], usage=Usage(12, 5)))
        stream = await self.provider(server).open(REQUEST)
        deltas, finish = await drain(stream)
        self.assertEqual(deltas, ["Hel", "lo", " wörld"])
        self.assertEqual(finish, Finish("stop", Usage(12, 5)))
        self.assertTrue(server.requests[0].json["stream"])

    async def test_length_stop(self) -> None:
        server = await self.upstream(Reply(deltas=["a"], stop_reason="length"))
        stream = await self.provider(server).open(REQUEST)
        _, finish = await drain(stream)
        assert finish is not None
        self.assertEqual(finish.stop_reason, "length")

    async def test_connection_reused(self) -> None:
        """A completed stream leaves its connection for the next request."""
        server = await self.upstream()
        provider = self.provider(server)
        for _ in range(2):
            stream = await provider.open(REQUEST)
            await drain(stream)
            stream.cancel()  # what the runner always does; a finished stream stays pooled
        self.assertIs(server.requests[0].disconnected, server.requests[1].disconnected)
        self.assertFalse(server.requests[0].closed)

    async def test_refused(self) -> None:
        port = await closed_port()
        config = ProviderConfig("down", self.api, f"http://127.0.0.1:{port}", KEY)
        provider = build_provider(config, http_client(self), reactor)
        e = await self.error(provider.open(REQUEST))
        self.assertEqual(e.kind, "unavailable")
        self.assertEqual(
            e.message, "model provider 'down' is unreachable: the connection was refused"
        )
        self.assertTrue(e.try_next_model)

    async def test_401(self) -> None:
        server = await self.upstream(Reply(status=401, error_message=f"invalid key {KEY}"))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual((e.kind, e.status), ("auth", 401))
        self.assertIn("invalid key [redacted]", e.message)
        self.assertFalse(e.try_next_model)

    async def test_403(self) -> None:
        server = await self.upstream(Reply(status=403))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual(e.kind, "auth")

    async def test_429_retry_after(self) -> None:
        server = await self.upstream(Reply(status=429, retry_after="17", error_message="slow"))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual((e.kind, e.status, e.retry_after), ("rate_limited", 429, "17"))
        self.assertIn("slow", e.message)

    async def test_500(self) -> None:
        server = await self.upstream(Reply(status=503, error_message="overloaded"))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual((e.kind, e.status), ("upstream_error", 503))
        self.assertIn("503", e.message)
        self.assertIn("overloaded", e.message)

    async def test_400_carries_upstream_message(self) -> None:
        server = await self.upstream(Reply(status=404, error_message="model 'm1' not found"))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual((e.kind, e.status), ("bad_request", 404))
        self.assertIn("model 'm1' not found", e.message)

    async def test_cut_mid_stream(self) -> None:
        server = await self.upstream(Reply(deltas=["a", "b", "c", "d"], cut_after=2))
        stream = await self.provider(server).open(REQUEST)
        got: list[ModelEvent | None] = [await stream.next(), await stream.next()]
        self.assertEqual(got, [TextDelta("a"), TextDelta("b")])
        e = await self.error(stream.next())
        # CONTRACT §4.6: a reset is "unavailable"; the message is a sentence, not a repr.
        self.assertEqual(e.kind, "unavailable")
        self.assertEqual(e.message, "model provider 'fake' closed the connection mid-answer")

    async def test_cut_before_the_first_token_fails_open(self) -> None:
        """So the next fallback runs and the client gets a real status."""
        server = await self.upstream(Reply(deltas=["a"], cut_after=0))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual(e.kind, "unavailable")
        self.assertEqual(e.message, "model provider 'fake' closed the connection before answering")

    async def test_clean_end_without_finish_is_a_cut(self) -> None:
        """A body that just ends (a server stopped by SIGTERM) is no answer, and no stop."""
        server = await self.upstream(
            Reply(deltas=["a", "b"], omit_finish=True, omit_end=True),
            Reply(deltas=[], omit_finish=True, omit_end=True),
        )
        stream = await self.provider(server).open(REQUEST)
        self.assertEqual(
            [await stream.next(), await stream.next()], [TextDelta("a"), TextDelta("b")]
        )
        e = await self.error(stream.next())
        self.assertEqual(e.kind, "unavailable")
        self.assertEqual(e.message, "model provider 'fake' closed the connection mid-answer")
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual(e.kind, "unavailable")
        self.assertIn("before answering", e.message)

    async def test_no_usage_is_unknown(self) -> None:
        """An upstream that reports no usage (llama-cpp-python): Usage(), never zeros."""
        server = await self.upstream(Reply(deltas=["a"], usage=Usage()))
        deltas, finish = await drain(await self.provider(server).open(REQUEST))
        self.assertEqual((deltas, finish), (["a"], Finish("stop", Usage())))
        assert finish is not None
        self.assertIsNone(finish.usage.to_json())

    async def test_whole_answer_when_not_streaming(self) -> None:
        """``ModelRequest.stream=False``: one JSON answer, asked for as such."""
        server = await self.upstream(
            Reply(deltas=["Hel", "lo"], usage=Usage(4, 2)), Reply(usage=Usage())
        )
        request = ModelRequest("m1", "", REQUEST.messages, stream=False)
        deltas, finish = await drain(await self.provider(server).open(request))
        self.assertEqual((deltas, finish), (["Hello"], Finish("stop", Usage(4, 2))))
        sent = server.requests[0]
        self.assertIs(sent.json["stream"], False)
        self.assertNotIn("stream_options", sent.json)
        self.assertEqual(sent.headers["accept"], "application/json")
        _, finish = await drain(await self.provider(server).open(request))
        self.assertEqual(finish, Finish("stop", Usage()))

    async def test_whole_answer_cut(self) -> None:
        """A whole answer cut mid-body is unavailable, a 5xx is the provider's error."""
        server = await self.upstream(Reply(cut_after=0), Reply(stream_error="overloaded"))
        request = ModelRequest("m1", "", REQUEST.messages, stream=False)
        e = await self.error(self.provider(server).open(request))
        self.assertEqual(
            (e.kind, e.message),
            ("unavailable", "model provider 'fake' closed the connection mid-answer"),
        )
        e = await self.error(self.provider(server).open(request))
        self.assertEqual((e.kind, e.status), ("upstream_error", 500))
        self.assertIn("overloaded", e.message)

    async def test_garbage(self) -> None:
        """Broken before the first token: open() fails (a fallback may run)."""
        server = await self.upstream(Reply(raw=GARBAGE))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("not JSON", e.message)
        await server.requests[0].disconnected

    async def test_garbage_after_deltas(self) -> None:
        """Deltas already received are delivered before the error."""
        server = await self.upstream(Reply(deltas=["ok"], stream_error="overloaded"))
        stream = await self.provider(server).open(REQUEST)
        self.assertEqual(await stream.next(), TextDelta("ok"))
        e = await self.error(stream.next())
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("overloaded", e.message)
        await server.requests[0].disconnected

    async def test_endless_line(self) -> None:
        """A body that never ends a line stops at the cap with an error, not a leak."""
        server = await self.upstream(Reply(raw=[b"data: " + b"x" * 600_000] * 3))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("longer than", e.message)
        await server.requests[0].disconnected

    async def test_empty_body(self) -> None:
        server = await self.upstream(Reply(raw=[]))
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual(e.kind, "unavailable")
        self.assertIn("before answering", e.message)

    async def test_never_a_first_byte_cancel_open(self) -> None:
        """Cancelling open() while the upstream is silent aborts the request."""
        server = await self.upstream(Reply(hang=True))
        d = self.provider(server).open(REQUEST)
        received = await server.request(0)
        self.assertFalse(d.called)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        await received.disconnected

    async def test_cancel_while_waiting_for_the_first_token(self) -> None:
        """Accepted (headers in) but silent: open() waits; cancelling it closes the request."""
        server = await self.upstream(Reply(deltas=["a"], stall_after=0))
        d = self.provider(server).open(REQUEST)
        received = await server.request(0)
        self.assertTrue(received.answered)
        self.assertFalse(d.called)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        await received.disconnected

    async def test_cancel_mid_stream_closes_connection(self) -> None:
        server = await self.upstream(Reply(deltas=["a", "b", "c"], stall_after=1))
        stream = await self.provider(server).open(REQUEST)
        self.assertEqual(await stream.next(), TextDelta("a"))
        pending = stream.next()
        stream.cancel()
        self.assertIsNone(await pending)
        await server.requests[0].disconnected
        self.assertFalse(server.requests[0].completed)

    def assertIsNone(self, value: object) -> None:
        self.assertIs(value, None)

    async def test_backpressure_pauses_the_body(self) -> None:
        """While nobody pulls, the body is paused and the upstream soon cannot write."""
        server = await self.upstream(Reply(forever=True))
        stream = await self.provider(server).open(REQUEST)
        received: Received = await server.paused
        self.assertTrue(stream.paused)  # type: ignore[attr-defined]
        # Bounded: at most one socket read beyond the high-water mark.
        self.assertLessEqual(stream.buffered, HIGH_WATER + 1000)  # type: ignore[attr-defined]
        sent = received.chunks_sent
        for _ in range(sent // 2):
            self.assertIsInstance(await stream.next(), TextDelta)
        self.assertGreater(stream.resumes, 0)  # type: ignore[attr-defined]
        stream.cancel()
        await received.disconnected

    async def test_server_ignoring_stream(self) -> None:
        """A whole JSON answer (the server ignored ``stream``) is one delta and the finish."""
        server = await self.upstream(
            Reply(deltas=["Hel", "lo"], usage=Usage(4, 2), stop_reason="length", ignore_stream=True)
        )
        deltas, finish = await drain(await self.provider(server).open(REQUEST))
        self.assertEqual((deltas, finish), (["Hello"], Finish("length", Usage(4, 2))))

    async def test_json_that_is_no_answer(self) -> None:
        json_type = (("content-type", "application/json"),)
        server = await self.upstream(
            Reply(raw=[b'{"object": "something else"}'], headers=json_type),
            Reply(raw=[b"<html>"], headers=json_type),
        )
        provider = self.provider(server)
        e = await self.error(provider.open(REQUEST))
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("answered JSON that is not", e.message)
        e = await self.error(provider.open(REQUEST))
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("not JSON", e.message)

    async def test_sampling_and_images(self) -> None:
        server = await self.upstream()
        png = b"\x89PNG\r\n\x1a\n-fake"
        request = ModelRequest(
            "m1",
            "Be brief.",
            (
                Message("user", "earlier"),
                Message("assistant", "answer"),
                Message("user", "look", (Image("image/png", png),)),
            ),
            Sampling(max_tokens=7, temperature=0.5, top_p=0.9, stop=("END",), seed=3),
        )
        stream = await self.provider(server).open(request)
        await drain(stream)
        self.check_request(server.requests[0], base64.b64encode(png).decode())

    def check_request(self, received: Received, png_b64: str) -> None:
        raise NotImplementedError


class OpenAITests(_ProviderTests, TestCase):
    api: ProviderApi = "openai-completions"

    def check_request(self, received: Received, png_b64: str) -> None:
        self.assertEqual(received.path, "/v1/chat/completions")
        self.assertEqual(received.headers["authorization"], f"Bearer {KEY}")
        self.assertEqual(received.headers["content-type"], "application/json")
        body = received.json
        self.assertEqual(body["model"], "m1")
        self.assertEqual(body["stream_options"], {"include_usage": True})
        self.assertEqual(
            body["messages"][:3],
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "earlier"},
                {"role": "assistant", "content": "answer"},
            ],
        )
        self.assertEqual(
            body["messages"][3]["content"],
            [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_b64}"}},
            ],
        )
        for k, v in {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3}.items():
            self.assertEqual(body[k], v)
        self.assertEqual(body["stop"], ["END"])
        self.assertNotIn("presence_penalty", body)

    async def test_no_key_no_authorization_and_config_headers(self) -> None:
        server = await self.upstream()
        config = ProviderConfig(
            "local", self.api, server.base_url + "/v1", None, (("x-extra", "1"),)
        )
        await drain(await self.provider(server, config).open(REQUEST))
        self.assertNotIn("authorization", server.requests[0].headers)
        self.assertEqual(server.requests[0].headers["x-extra"], "1")

    async def test_end_without_done(self) -> None:
        """After the finish reason (and usage) a body that ends without [DONE] is complete."""
        server = await self.upstream(Reply(deltas=["x"], omit_end=True))
        deltas, finish = await drain(await self.provider(server).open(REQUEST))
        self.assertEqual((deltas, finish), (["x"], Finish("stop", Usage(11, 3))))

    async def test_bare_done(self) -> None:
        """[DONE] without a finish reason (an interrupted llama-cpp-python answer): an error."""
        server = await self.upstream(Reply(deltas=["x"], omit_finish=True))
        stream = await self.provider(server).open(REQUEST)
        self.assertEqual(await stream.next(), TextDelta("x"))
        e = await self.error(stream.next())
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("no finish reason", e.message)
        await server.requests[0].disconnected

    async def test_usage_on_the_finish_chunk(self) -> None:
        server = await self.upstream(Reply(deltas=["x"], usage=Usage(5, 1), usage_in_finish=True))
        deltas, finish = await drain(await self.provider(server).open(REQUEST))
        self.assertEqual((deltas, finish), (["x"], Finish("stop", Usage(5, 1))))

    async def test_remote_image_url(self) -> None:
        server = await self.upstream()
        image = Image("image/png", url="https://example.invalid/a.png")
        request = ModelRequest("m1", "", (Message("user", "", (image,)),))
        await drain(await self.provider(server).open(request))
        body = server.requests[0].json
        self.assertEqual(
            body["messages"],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image.url}}]}],
        )


class AnthropicTests(_ProviderTests, TestCase):
    api: ProviderApi = "anthropic-messages"

    def check_request(self, received: Received, png_b64: str) -> None:
        self.assertEqual(received.path, "/v1/messages")
        self.assertEqual(received.headers["x-api-key"], KEY)
        self.assertEqual(received.headers["anthropic-version"], "2023-06-01")
        self.assertNotIn("authorization", received.headers)
        body = received.json
        self.assertEqual(body["system"], "Be brief.")
        self.assertEqual(body["max_tokens"], 7)
        self.assertEqual(body["stop_sequences"], ["END"])
        self.assertEqual((body["temperature"], body["top_p"]), (0.5, 0.9))
        self.assertNotIn("seed", body)
        self.assertEqual(
            body["messages"],
            [
                {"role": "user", "content": "earlier"},
                {"role": "assistant", "content": "answer"},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": png_b64,
                            },
                        },
                        {"type": "text", "text": "look"},
                    ],
                },
            ],
        )

    async def test_max_tokens_default(self) -> None:
        """Required by the API: the config model's maxTokens, else 4096."""
        from openclaw_twisted.config import ProviderModel

        server = await self.upstream()
        config = ProviderConfig(
            "a", self.api, server.base_url, KEY, (), (ProviderModel("m1", max_tokens=1234),)
        )
        provider = self.provider(server, config)
        await drain(await provider.open(REQUEST))
        await drain(await provider.open(ModelRequest("other", "", REQUEST.messages)))
        self.assertEqual(server.requests[0].json["max_tokens"], 1234)
        self.assertEqual(server.requests[1].json["max_tokens"], 4096)
        self.assertNotIn("system", server.requests[1].json)

    async def test_conversation_normalised(self) -> None:
        """Empty turns dropped, same-role turns joined, the first turn is the user's."""
        server = await self.upstream()
        request = ModelRequest(
            "m1",
            "",
            (
                Message("assistant", "orphan"),
                Message("user", "a"),
                Message("assistant", ""),
                Message("user", "b"),
            ),
        )
        await drain(await self.provider(server).open(request))
        self.assertEqual(
            server.requests[0].json["messages"], [{"role": "user", "content": "a\n\nb"}]
        )

    async def test_base_url_with_v1(self) -> None:
        server = await self.upstream()
        config = ProviderConfig("a", self.api, server.base_url + "/v1", KEY)
        await drain(await self.provider(server, config).open(REQUEST))
        self.assertEqual(server.requests[0].path, "/v1/messages")

    async def test_end_without_message_stop(self) -> None:
        """After message_delta (stop reason, usage) a clean end is a complete answer."""
        server = await self.upstream(Reply(deltas=["x"], omit_end=True))
        deltas, finish = await drain(await self.provider(server).open(REQUEST))
        self.assertEqual((deltas, finish), (["x"], Finish("stop", Usage(11, 3))))

    async def test_stream_ending_mid_message(self) -> None:
        """A clean body end before the message is complete is an error, not a short answer."""
        server = await self.upstream(
            Reply(
                raw=[
                    b"event: message_start\n"
                    b'data: {"type": "message_start", "message":{"usage": {"input_tokens": 3}}}\n\n'
                ]
            )
        )
        e = await self.error(self.provider(server).open(REQUEST))
        self.assertEqual(e.kind, "unavailable")
        self.assertIn("closed the connection before answering", e.message)

    async def test_message_stop_without_stop_reason(self) -> None:
        """message_stop says the message is complete, stop reason or not."""
        server = await self.upstream(Reply(deltas=["x"], omit_finish=True, usage=Usage()))
        deltas, finish = await drain(await self.provider(server).open(REQUEST))
        self.assertEqual((deltas, finish), (["x"], Finish("stop", Usage())))
