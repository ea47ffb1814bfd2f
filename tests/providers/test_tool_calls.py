"""Client function tools at the provider level: what each API is sent, and what comes back."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone

from openclaw_twisted.config import ProviderApi
from openclaw_twisted.providers._http import HTTPModelStream
from openclaw_twisted.providers.anthropic import MessageDecoder
from openclaw_twisted.providers.echo import EchoProvider
from openclaw_twisted.providers.interface import (
    Finish,
    IModelStream,
    IProvider,
    Message,
    ModelEvent,
    ModelRequest,
    NamedTool,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)
from openclaw_twisted.providers.openai import ChunkDecoder
from openclaw_twisted.providers.registry import build_provider
from openclaw_twisted.testing import FakeToolCall, FakeUpstream, Reply, parse_sse, reply_body
from tests.providers.test_stream import FakeResponse
from tests.support import http_client

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"],
}
WEATHER = ToolSpec("get_weather", "The weather in a city, now.", WEATHER_SCHEMA)
CLOCK = ToolSpec("now")  # no description, no parameters
TOOLS = (WEATHER, CLOCK)
ASK = (Message("user", "Weather in Zürich and Malmö?"),)

#: The arguments of one call, cut mid-key, mid-value and between the bytes of "ü".
ZURICH = ('{"ci', 'ty": "Z', "ü", 'rich", "un', 'it": "c"}')
MALMO = ('{"city": ', '"Malm', 'ö"}')


def request(**fields: Any) -> ModelRequest:
    return ModelRequest("m1", "Be brief.", fields.pop("messages", ASK), **fields)


def calls_of(events: list[ModelEvent]) -> dict[int, tuple[str | None, str | None, str]]:
    """Tool call deltas reassembled: index → (id, name, arguments), as a runner would."""
    calls: dict[int, tuple[str | None, str | None, str]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            if e.index not in calls:
                # The first delta of a call names it.
                assert e.id and e.name, e
                calls[e.index] = (e.id, e.name, e.arguments_delta)
            else:
                assert e.id is None and e.name is None, e
                call_id, name, args = calls[e.index]
                calls[e.index] = (call_id, name, args + e.arguments_delta)
    return calls


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def drain(stream: IModelStream) -> list[ModelEvent]:
    events: list[ModelEvent] = []
    while (event := await stream.next()) is not None:
        events.append(event)
    return events


class _Tools:
    """The scenarios both APIs must pass; subclasses set ``api``."""

    api: ProviderApi

    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertTrue: Any
    assertIsInstance: Any
    failureResultOf: Any

    async def upstream(self, *replies: Reply) -> FakeUpstream:
        server = await FakeUpstream.start(reactor)
        self.addCleanup(server.stop)
        server.script(*replies)
        return server

    def provider(self, server: FakeUpstream) -> IProvider:
        config = server.provider("fake", self.api, ["m1"])
        return build_provider(config, http_client(self), reactor)  # type: ignore[arg-type]

    async def answer(self, reply: Reply, req: ModelRequest) -> tuple[list[ModelEvent], Any]:
        """The events of ``req`` answered with ``reply``, and the body the upstream got."""
        server = await self.upstream(reply)
        events = await drain(await self.provider(server).open(req))
        return events, server.bodies[0]

    async def failure(self, reply: Reply, req: ModelRequest | None = None) -> ProviderError:
        server = await self.upstream(reply)
        try:
            await drain(await self.provider(server).open(req or request(tools=TOOLS)))
        except ProviderError as e:
            return e
        raise AssertionError("no ProviderError")

    async def test_streamed_calls_reassembled(self) -> None:
        reply = Reply(
            deltas=["Let me ", "check."],
            tool_calls=[FakeToolCall("get_weather", ZURICH), FakeToolCall("get_weather", MALMO)],
            usage=Usage(30, 9),
        )
        events, body = await self.answer(reply, request(tools=TOOLS))
        self.assertEqual(text_of(events), "Let me check.")
        ids = ("toolu_fake0", "toolu_fake1") if self.api == "anthropic-messages" else None
        ids = ids or ("call_fake0", "call_fake1")
        self.assertEqual(
            calls_of(events),
            {
                0: (ids[0], "get_weather", '{"city": "Zürich", "unit": "c"}'),
                1: (ids[1], "get_weather", '{"city": "Malmö"}'),
            },
        )
        self.assertEqual(events[-1], Finish("tool_calls", Usage(30, 9)))
        self.assertTrue(body["stream"])

    async def test_whole_calls(self) -> None:
        reply = Reply(
            deltas=[],
            tool_calls=[FakeToolCall("now", "{}", id="c-1"), FakeToolCall("get_weather", ZURICH)],
        )
        events, body = await self.answer(reply, request(tools=TOOLS, stream=False))
        self.assertEqual(text_of(events), "")
        arguments = '{"city": "Zürich", "unit": "c"}'
        if self.api == "anthropic-messages":
            # The input object, as Anthropic gives it, written back as JSON text.
            arguments = json.dumps(json.loads(arguments), ensure_ascii=False)
        other = "toolu_fake1" if self.api == "anthropic-messages" else "call_fake1"
        self.assertEqual(
            calls_of(events), {0: ("c-1", "now", "{}"), 1: (other, "get_weather", arguments)}
        )
        self.assertEqual(events[-1], Finish("tool_calls", Usage(11, 3)))
        self.assertEqual(body["stream"], False)

    async def test_text_answer_with_tools_offered(self) -> None:
        """No call made: the same deltas and stop as without tools."""
        for stream in (True, False):
            req = request(tools=TOOLS, stream=stream)
            events, body = await self.answer(Reply(deltas=["Sun", "ny."]), req)
            self.assertEqual(body["stream"], stream)
            self.assertEqual(text_of(events), "Sunny.")
            self.assertEqual(calls_of(events), {})
            self.assertEqual(events[-1], Finish("stop", Usage(11, 3)))

    async def test_stop_after_calls_is_tool_calls(self) -> None:
        """A server that says "stop" after calling tools (older Ollama) still asked for them."""
        stop = "end_turn" if self.api == "anthropic-messages" else "stop"
        for stream in (True, False):
            reply = Reply(deltas=[], tool_calls=[FakeToolCall("now")], finish_reason=stop)
            events, _ = await self.answer(reply, request(tools=TOOLS, stream=stream))
            self.assertEqual(events[-1], Finish("tool_calls", Usage(11, 3)))

    async def test_length_during_a_call_stays_length(self) -> None:
        reply = Reply(
            deltas=[],
            tool_calls=[FakeToolCall("get_weather", '{"ci')],
            stop_reason="length",
        )
        events, _ = await self.answer(reply, request(tools=TOOLS))
        self.assertEqual(events[-1].stop_reason, "length")  # type: ignore[union-attr]

    async def test_no_tools_no_tool_fields(self) -> None:
        """A text-only request is sent exactly as before tools existed."""
        _, body = await self.answer(Reply(), request())
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            self.assertNotIn(key, body)

    async def test_no_tools_means_no_choice(self) -> None:
        """Both APIs refuse a tool_choice without tools."""
        _, body = await self.answer(Reply(), request(tool_choice="required"))
        self.assertNotIn("tool_choice", body)
        self.assertNotIn("parallel_tool_calls", body)


class OpenAITools(_Tools, TestCase):
    api: ProviderApi = "openai-completions"

    async def test_tools_and_choice_encoded(self) -> None:
        _, body = await self.answer(Reply(), request(tools=TOOLS, parallel_tool_calls=False))
        self.assertEqual(
            body["tools"],
            [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "The weather in a city, now.",
                        "parameters": WEATHER_SCHEMA,
                    },
                },
                {"type": "function", "function": {"name": "now"}},
            ],
        )
        self.assertNotIn("tool_choice", body)  # unset: the API's default, auto
        self.assertIs(body["parallel_tool_calls"], False)
        strict = ToolSpec("f", parameters={"type": "object"}, strict=True)
        _, body = await self.answer(Reply(), request(tools=(strict,)))
        self.assertEqual(body["tools"][0]["function"]["strict"], True)
        self.assertNotIn("parallel_tool_calls", body)

    async def test_every_tool_choice(self) -> None:
        choices: list[tuple[Any, Any]] = [
            ("auto", "auto"),
            ("none", "none"),
            ("required", "required"),
            (NamedTool("now"), {"type": "function", "function": {"name": "now"}}),
        ]
        for choice, wire in choices:
            _, body = await self.answer(Reply(), request(tools=TOOLS, tool_choice=choice))
            self.assertEqual(body["tool_choice"], wire)

    async def test_history_as_real_turns(self) -> None:
        messages = (
            *ASK,
            Message(
                "assistant",
                "",
                tool_calls=(
                    ToolCall("call_1", "get_weather", '{"city": "Zürich"}'),
                    ToolCall("call_2", "get_weather", '{"city": "Malmö"}'),
                ),
            ),
            Message.result("call_1", "12°C, rain"),
            Message.result("call_2", "no such city", is_error=True),
            Message("assistant", "Rain in Zürich.", tool_calls=(ToolCall("call_3", "now", ""),)),
            Message.result("call_3", "09:00"),
            Message("user", "Thanks!"),
        )
        _, body = await self.answer(Reply(), request(messages=messages, tools=TOOLS))
        self.assertEqual(
            body["messages"],
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Zürich and Malmö?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Malmö"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "12°C, rain"},
                {"role": "tool", "tool_call_id": "call_2", "content": "no such city"},
                {
                    "role": "assistant",
                    "content": "Rain in Zürich.",
                    "tool_calls": [
                        {
                            "id": "call_3",
                            "type": "function",
                            "function": {"name": "now", "arguments": ""},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_3", "content": "09:00"},
                {"role": "user", "content": "Thanks!"},
            ],
        )

    async def test_interleaved_parallel_calls(self) -> None:
        """Chunks of parallel calls interleaved by index, as some servers send them."""
        reply = Reply(
            deltas=[],
            interleave=True,
            tool_calls=[FakeToolCall("get_weather", ZURICH), FakeToolCall("get_weather", MALMO)],
        )
        server = await self.upstream(reply)
        events = await drain(await self.provider(server).open(request(tools=TOOLS)))
        order = [e.index for e in events if isinstance(e, ToolCallDelta)]
        self.assertEqual(order[:6], [0, 1, 0, 1, 0, 1])
        self.assertEqual(calls_of(events)[0][2], '{"city": "Zürich", "unit": "c"}')
        self.assertEqual(calls_of(events)[1][2], '{"city": "Malmö"}')

    async def test_several_calls_in_one_chunk_and_no_id(self) -> None:
        """Two calls in one chunk; a server that gives no id gets one made up (unique)."""
        chunks = [
            {"tool_calls": [{"index": 0, "function": {"name": "now", "arguments": "{"}}]},
            {
                "tool_calls": [
                    {"index": 1, "id": "b", "function": {"name": "now", "arguments": "{}"}},
                    {"index": 0, "id": None, "function": {"arguments": "}"}},
                ]
            },
        ]
        raw = [b"data: %s\n\n" % json.dumps({"choices": [{"delta": c}]}).encode() for c in chunks]
        raw.append(b'data: {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}\n\n')
        server = await self.upstream(Reply(raw=raw))
        events = await drain(await self.provider(server).open(request(tools=TOOLS)))
        calls = calls_of(events)
        made_up = calls[0][0]
        assert made_up is not None
        self.assertTrue(made_up.startswith("call_") and len(made_up) > 10, made_up)
        self.assertEqual((calls[0][1:], calls[1]), (("now", "{}"), ("b", "now", "{}")))
        self.assertEqual(events[-1], Finish("tool_calls", Usage()))

    async def test_every_call_numbered_zero(self) -> None:
        """A proxy that gives every call index 0 (and a new id): the calls still come apart."""
        first = {"index": 0, "id": "a", "function": {"name": "now", "arguments": "{"}}
        chunks = [
            {"tool_calls": [first]},
            {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
            {"tool_calls": [{**first, "id": "b", "function": {"name": "f", "arguments": "[]"}}]},
            {"tool_calls": [{"index": 5, "id": "c", "function": {"name": "g"}}]},
        ]
        raw = [b"data: %s\n\n" % json.dumps({"choices": [{"delta": c}]}).encode() for c in chunks]
        raw.append(b'data: {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}\n\n')
        server = await self.upstream(Reply(raw=raw))
        events = await drain(await self.provider(server).open(request(tools=TOOLS)))
        self.assertEqual(
            calls_of(events), {0: ("a", "now", "{}"), 1: ("b", "f", "[]"), 2: ("c", "g", "")}
        )

    async def test_malformed_tool_chunks(self) -> None:
        def raw(*deltas: Any) -> Reply:
            chunks = [
                b"data: %s\n\n" % json.dumps({"choices": [{"delta": d}]}).encode() for d in deltas
            ]
            return Reply(raw=chunks)

        first = {"index": 0, "id": "a", "function": {"name": "now", "arguments": ""}}
        cases = [
            (raw({"tool_calls": {"index": 0}}), "tool_calls is not a list"),
            (raw({"tool_calls": [{"function": {"name": "now"}}]}), "has no valid index"),
            (raw({"tool_calls": [{"index": "0", "id": "a"}]}), "has no valid index"),
            (raw({"tool_calls": [{"index": 0, "id": "a"}]}), "has no function name"),
            (
                raw({"tool_calls": [{"index": 0, "function": {"name": "now", "arguments": {}}}]}),
                "not a string",
            ),
            (
                raw(
                    {"tool_calls": [first]},
                    {"tool_calls": [{"index": 0, "id": "b", "function": {"arguments": "{}"}}]},
                ),
                "tool call 0 changed its id mid-answer",
            ),
        ]
        for reply, why in cases:
            e = await self.failure(reply)
            self.assertEqual(e.kind, "upstream_error")
            self.assertIn("model provider 'fake' sent a malformed tool call: ", e.message)
            self.assertIn(why, e.message)
        whole = {"choices": [{"message": {"tool_calls": [{"id": "x"}]}, "finish_reason": "x"}]}
        reply = Reply(raw=[json.dumps(whole).encode()])
        e = await self.failure(reply, request(tools=TOOLS, stream=False))
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("malformed tool call: tool call 0 has no function", e.message)


class AnthropicTools(_Tools, TestCase):
    api: ProviderApi = "anthropic-messages"

    async def test_tools_and_choice_encoded(self) -> None:
        _, body = await self.answer(Reply(), request(tools=TOOLS))
        self.assertEqual(
            body["tools"],
            [
                {
                    "name": "get_weather",
                    "description": "The weather in a city, now.",
                    "input_schema": WEATHER_SCHEMA,
                },
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ],
        )
        self.assertNotIn("tool_choice", body)
        self.assertNotIn("parallel_tool_calls", body)

    async def test_every_tool_choice(self) -> None:
        choices: list[tuple[Any, bool | None, Any]] = [
            ("auto", None, {"type": "auto"}),
            ("required", None, {"type": "any"}),
            (NamedTool("now"), None, {"type": "tool", "name": "now"}),
            ("none", None, {"type": "none"}),
            # parallel_tool_calls: false rides on tool_choice.
            (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
            ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
            ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
            (
                NamedTool("now"),
                False,
                {"type": "tool", "name": "now", "disable_parallel_tool_use": True},
            ),
            ("none", False, {"type": "none"}),
            (None, True, None),
        ]
        for choice, parallel, wire in choices:
            req = request(tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel)
            _, body = await self.answer(Reply(), req)
            self.assertEqual(body.get("tool_choice"), wire, (choice, parallel))
            self.assertNotIn("parallel_tool_calls", body)

    async def test_history_as_blocks(self) -> None:
        """tool_use blocks; consecutive results (and the user's next words) one user turn."""
        messages = (
            *ASK,
            Message(
                "assistant",
                "Checking.",
                tool_calls=(
                    ToolCall("toolu_1", "get_weather", '{"city": "Zürich"}'),
                    ToolCall("toolu_2", "now", ""),
                ),
            ),
            Message.result("toolu_1", "12°C, rain"),
            Message.result("toolu_2", "clock broken", is_error=True),
            Message("user", "And tomorrow?"),
            Message("assistant", "", tool_calls=(ToolCall("toolu_3", "now", "{}"),)),
            Message.result("toolu_3", ""),
        )
        _, body = await self.answer(Reply(), request(messages=messages, tools=TOOLS))
        self.assertEqual(
            body["messages"],
            [
                {"role": "user", "content": "Weather in Zürich and Malmö?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Zürich"},
                        },
                        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "12°C, rain"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": "clock broken",
                            "is_error": True,
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_3", "name": "now", "input": {}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
            ],
        )

    async def test_history_cut_before_its_call(self) -> None:
        """A history that begins with a call's result (its call cut off): the result goes too."""
        messages = (
            Message("assistant", "", tool_calls=(ToolCall("t0", "now", "{}"),)),
            Message.result("t0", "09:00"),
            Message("user", "Hi"),
        )
        _, body = await self.answer(Reply(), request(messages=messages, tools=TOOLS))
        self.assertEqual(body["messages"], [{"role": "user", "content": "Hi"}])

    async def test_history_arguments_not_an_object(self) -> None:
        server = await self.upstream()
        for arguments in ("[1]", '{"city": '):
            messages = (*ASK, Message("assistant", "", tool_calls=(ToolCall("t", "f", arguments),)))
            d = self.provider(server).open(request(messages=messages, tools=TOOLS))
            e = self.failureResultOf(d, ProviderError).value
            self.assertEqual(e.kind, "bad_request")
            self.assertEqual(
                e.message,
                "the arguments of tool call 't' are not a JSON object, "
                "which the Anthropic API requires",
            )
        self.assertEqual(server.requests, [])

    async def test_start_block_input_without_pieces(self) -> None:
        """A tool_use block whose input came whole at its start (no input_json_delta)."""
        events = [
            {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"a": "ß"}},
            },
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
            {"type": "message_stop"},
        ]
        raw = [b"data: %s\n\n" % json.dumps(e).encode() for e in events]
        server = await self.upstream(Reply(raw=raw))
        got = await drain(await self.provider(server).open(request(tools=TOOLS)))
        self.assertEqual(calls_of(got), {0: ("t", "f", '{"a": "ß"}')})
        self.assertEqual(got[-1], Finish("tool_calls", Usage(3, 0)))

    async def test_malformed_tool_blocks(self) -> None:
        def raw(*blocks: Any) -> Reply:
            events = [{"type": "message_start", "message": {}}, *blocks]
            return Reply(raw=[b"data: %s\n\n" % json.dumps(e).encode() for e in events])

        def start(index: int, block: dict[str, Any]) -> dict[str, Any]:
            return {"type": "content_block_start", "index": index, "content_block": block}

        def piece(index: int, text: Any) -> dict[str, Any]:
            delta = {"type": "input_json_delta", "partial_json": text}
            return {"type": "content_block_delta", "index": index, "delta": delta}

        use = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
        cases = [
            (raw(start(0, {**use, "id": None})), "a tool_use block has no id"),
            (raw(start(0, {**use, "name": ""})), "tool_use block 't' has no name"),
            (raw(start(0, {**use, "input": "x"})), "the input of tool_use block 't' is not an"),
            (raw(start(0, {"type": "text", "text": ""}), piece(0, "{}")), "not for a tool_use"),
            (raw(start(0, use), piece(0, 7)), "partial_json is not a string"),
        ]
        for reply, why in cases:
            e = await self.failure(reply)
            self.assertEqual(e.kind, "upstream_error")
            self.assertIn("model provider 'fake' sent a malformed tool call: ", e.message)
            self.assertIn(why, e.message)
        whole = {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}
        e = await self.failure(Reply(raw=[json.dumps(whole).encode()]), request(stream=False))
        self.assertEqual(e.kind, "upstream_error")
        self.assertIn("the input of tool_use block 't' is not an object", e.message)


class ByteByByte(SynchronousTestCase):
    """Tool call streams fed one byte at a time: UTF-8 and JSON split anywhere."""

    def events(self, api: ProviderApi, reply: Reply) -> list[ModelEvent]:
        response = FakeResponse()
        decoder = ChunkDecoder("up") if api == "openai-completions" else MessageDecoder("up")
        stream = HTTPModelStream(response, decoder, Clock(), "up")  # type: ignore[arg-type]
        body = reply_body(api, reply, {"stream": True, "stream_options": {"include_usage": True}})
        self.assertIn("ü".encode(), body)  # on the wire as UTF-8, not as an escape
        for i in range(len(body)):
            response.protocol.dataReceived(body[i : i + 1])
        response.protocol.connectionLost(Failure(ResponseDone()))
        events = []
        while (event := self.successResultOf(stream.next())) is not None:
            events.append(event)
        return events

    def test_both_apis(self) -> None:
        calls = [FakeToolCall("get_weather", ZURICH), FakeToolCall("get_weather", MALMO)]
        for api in ("openai-completions", "anthropic-messages"):
            events = self.events(api, Reply(deltas=["Grüße"], tool_calls=calls))  # type: ignore[arg-type]
            self.assertEqual(text_of(events), "Grüße")
            got = {i: c[2] for i, c in calls_of(events).items()}
            self.assertEqual(got, {0: '{"city": "Zürich", "unit": "c"}', 1: '{"city": "Malmö"}'})
            self.assertEqual(events[-1], Finish("tool_calls", Usage(11, 3)))


class EchoAndMessages(SynchronousTestCase):
    def test_echo_accepts_tools(self) -> None:
        history = (
            Message("user", "what time is it"),
            Message("assistant", "", tool_calls=(ToolCall("c", "now", "{}"),)),
            Message.result("c", "09:00"),
        )
        req = ModelRequest("echo", "", history, tools=TOOLS, tool_choice="required")
        stream = self.successResultOf(EchoProvider().open(req))
        events = []
        while (event := self.successResultOf(stream.next())) is not None:
            events.append(event)
        self.assertEqual(text_of(events), "what time is it")
        self.assertEqual([type(e) for e in events][-1], Finish)
        self.assertEqual(events[-1].stop_reason, "stop")  # type: ignore[union-attr]

    def test_message_shapes(self) -> None:
        self.assertEqual(
            Message.result("c", "x", True).tool_result.tool_call_id,  # type: ignore[union-attr]
            "c",
        )
        with self.assertRaises(ValueError):
            Message("user", "hi", tool_calls=(ToolCall("c", "f"),))
        with self.assertRaises(ValueError):
            Message("tool", "text without a result")
        with self.assertRaises(ValueError):
            Message("tool", "both", tool_result=Message.result("c", "x").tool_result)
        # Today's text-only callers are unchanged.
        self.assertEqual(Message("user", "hi"), Message("user", "hi", (), (), None))
        self.assertEqual(ModelRequest("m", "", ()).tools, ())


class FakeUpstreamWire(SynchronousTestCase):
    """FakeUpstream's tool calls are each API's real wire format."""

    call = FakeToolCall("get_weather", ['{"city"', ': "Oslo"}'], id="c1")

    def test_openai_streamed(self) -> None:
        body = reply_body("openai-completions", Reply(deltas=[], tool_calls=[self.call]))
        chunks = [e for e in parse_sse(body) if isinstance(e, dict) and e.get("choices")]
        deltas = [c["choices"][0]["delta"] for c in chunks]
        self.assertEqual(
            deltas[1:4],
            [
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]},
            ],
        )
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")

    def test_openai_whole(self) -> None:
        reply = Reply(deltas=[], tool_calls=[self.call])
        answer = json.loads(reply_body("openai-completions", reply, {"stream": False}))
        choice = answer["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(
            choice["message"],
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
        )

    def test_anthropic_streamed(self) -> None:
        body = reply_body("anthropic-messages", Reply(deltas=["Hm."], tool_calls=[self.call]))
        events = [e for e in parse_sse(body) if e["type"] != "ping"]
        self.assertEqual(
            [e["type"] for e in events],
            ["message_start"]
            + ["content_block_start", "content_block_delta", "content_block_stop"]
            + ["content_block_start"]
            + ["content_block_delta"] * 3
            + ["content_block_stop", "message_delta", "message_stop"],
        )
        self.assertEqual(
            events[4],
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "c1",
                    "name": "get_weather",
                    "input": {},
                },
            },
        )
        pieces = [e["delta"] for e in events[5:8]]
        self.assertEqual(
            pieces,
            [{"type": "input_json_delta", "partial_json": p} for p in ("", '{"city"', ': "Oslo"}')],
        )
        self.assertEqual(events[-2]["delta"]["stop_reason"], "tool_use")

    def test_anthropic_whole(self) -> None:
        reply = Reply(deltas=[], tool_calls=[self.call])
        answer = json.loads(reply_body("anthropic-messages", reply, {"stream": False}))
        self.assertEqual(
            answer["content"],
            [{"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Oslo"}}],
        )
        self.assertEqual(answer["stop_reason"], "tool_use")
