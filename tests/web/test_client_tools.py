"""Client function tools end to end: the official SDK's tool loop through the gateway to a
FakeUpstream speaking each provider API's real tool wire format, streaming and not."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import openai
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.providers.interface import Usage
from openclaw_twisted.testing import FakeToolCall, FakeUpstream, Reply

from ..support import listen
from .memory import TOKEN

T = TypeVar("T")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
#: The arguments as the model streams them: split mid-string.
PIECES = ['{"ci', 'ty": "Par', 'is"}']
ARGS = "".join(PIECES)


def calls_then_answer() -> tuple[Reply, Reply]:
    return (
        Reply(deltas=[], tool_calls=[FakeToolCall("get_weather", PIECES)], usage=Usage(20, 5)),
        Reply(deltas=["It is ", "sunny."]),
    )


class Served:
    """A gateway in front of a FakeUpstream speaking ``api``; the SDK in a thread."""

    api: str

    async def serve(self: Any, *replies: Reply, session: bool = False) -> str:
        self.upstream = await FakeUpstream.start(reactor)
        self.addCleanup(self.upstream.stop)
        self.upstream.script(*replies)
        agents = {"defaults": {"model": "fake/m"}, "list": [{"id": "main"}]}
        data = self.upstream.gateway_config(self.api, agents=agents)
        config = parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()})
        self.gateway = Gateway(config, reactor)
        self.addCleanup(lambda: self.gateway.shutdown(0))
        return await listen(self, self.gateway) + "/v1"

    async def sdk(self, url: str, call: Callable[[openai.OpenAI], T], **headers: str) -> T:
        def run() -> T:
            with openai.OpenAI(
                base_url=url, api_key=TOKEN, max_retries=0, default_headers=headers
            ) as client:
                return call(client)

        return await deferToThread(run)

    def sent_tool_turns(self: Any, body: dict[str, Any]) -> tuple[Any, Any]:
        """(the assistant's call, the result) as the second upstream request carried them."""
        msgs = body["messages"]
        if self.api == "openai-completions":
            call = next(m for m in msgs if m.get("tool_calls"))["tool_calls"][0]
            result = next(m for m in msgs if m["role"] == "tool")
            return (call["id"], call["function"]["name"], call["function"]["arguments"]), (
                result["tool_call_id"],
                result["content"],
            )
        blocks = [b for m in msgs if isinstance(m["content"], list) for b in m["content"]]
        use = next(b for b in blocks if b["type"] == "tool_use")
        result = next(b for b in blocks if b["type"] == "tool_result")
        content = result["content"]
        if isinstance(content, list):
            content = "".join(c["text"] for c in content)
        return (use["id"], use["name"], json.dumps(use["input"], separators=(",", ":"))), (
            result["tool_use_id"],
            content,
        )


class ClientToolsMixin(Served):
    """The loop against one provider API (``api``); subclasses pick it."""

    async def test_sdk_round_trip(self: Any) -> None:
        url = await self.serve(*calls_then_answer())
        first = await self.sdk(
            url,
            lambda c: c.chat.completions.create(model="openclaw", messages=ASK, tools=[WEATHER]),
        )
        choice = first.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertIsNone(choice.message.content)
        (call,) = choice.message.tool_calls
        self.assertEqual((call.type, call.function.name), ("function", "get_weather"))
        self.assertEqual(json.loads(call.function.arguments), {"city": "Paris"})
        self.assertEqual(first.usage.total_tokens, 25)
        # The tools reached the model in its API's own format.
        offered = self.upstream.bodies[0]["tools"][0]
        name = offered["function"]["name"] if self.api == "openai-completions" else offered["name"]
        self.assertEqual(name, "get_weather")

        follow_up = [
            *ASK,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24C"},
        ]
        final = await self.sdk(
            url,
            lambda c: c.chat.completions.create(
                model="openclaw", messages=follow_up, tools=[WEATHER]
            ),
        )
        self.assertEqual(final.choices[0].message.content, "It is sunny.")
        self.assertEqual(final.choices[0].finish_reason, "stop")
        self.assertIsNone(final.choices[0].message.tool_calls)
        made, result = self.sent_tool_turns(self.upstream.bodies[1])
        self.assertEqual(made[:2], (call.id, "get_weather"))
        self.assertEqual(json.loads(made[2]), {"city": "Paris"})
        self.assertEqual(result, (call.id, "sunny, 24C"))
        # Not flattened into text: the question is the model's own user turn.
        self.assertNotIn("[Chat messages", json.dumps(self.upstream.bodies[1]))

    async def test_sdk_streaming_round_trip(self: Any) -> None:
        url = await self.serve(*calls_then_answer())

        def stream(messages: list[Any]) -> Callable[[openai.OpenAI], list[Any]]:
            return lambda c: list(
                c.chat.completions.create(
                    model="openclaw",
                    messages=messages,
                    tools=[WEATHER],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )

        chunks = await self.sdk(url, stream(ASK))
        deltas = [
            tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])
        ]
        self.assertGreaterEqual(len(deltas), 2)
        self.assertEqual((deltas[0].index, deltas[0].function.name), (0, "get_weather"))
        call_id = deltas[0].id
        self.assertTrue(call_id)
        self.assertTrue(all(d.id is None and d.index == 0 for d in deltas[1:]))
        self.assertEqual("".join(d.function.arguments or "" for d in deltas), ARGS)
        self.assertEqual(chunks[-2].choices[0].finish_reason, "tool_calls")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.total_tokens, 25)

        follow_up = [
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ARGS},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "sunny, 24C"},
        ]
        chunks = await self.sdk(url, stream(follow_up))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        self.assertEqual(text, "It is sunny.")
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")
        made, result = self.sent_tool_turns(self.upstream.bodies[1])
        self.assertEqual(made[0], call_id)
        self.assertEqual(result, (call_id, "sunny, 24C"))

    async def test_stable_session_keeps_the_calls(self: Any) -> None:
        """A session replays its tool calls and results as real turns on the next turn."""
        url = await self.serve(*calls_then_answer(), Reply(deltas=["Paris again."]))
        key = {"x-openclaw-session-key": "weather-chat"}

        def ask(messages: list[Any]) -> Callable[[openai.OpenAI], Any]:
            return lambda c: c.chat.completions.create(
                model="openclaw", messages=messages, tools=[WEATHER]
            )

        first = await self.sdk(url, ask(ASK), **key)
        call = first.choices[0].message.tool_calls[0]
        result = {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24C"}
        sent = [*ASK, first.choices[0].message.model_dump(exclude_none=True), result]
        await self.sdk(url, ask(sent), **key)
        # The session had the question and the call: the request adds only the result.
        body = self.upstream.bodies[1]
        made, got = self.sent_tool_turns(body)
        self.assertEqual((made[0], got), (call.id, (call.id, "sunny, 24C")))
        self.assertEqual(json.dumps(body).count("Weather in Paris?"), 1)

        # A new question: the history replays the call and the result before it.
        await self.sdk(url, ask([{"role": "user", "content": "And tomorrow?"}]), **key)
        made, got = self.sent_tool_turns(self.upstream.bodies[2])
        self.assertEqual((made[0], got), (call.id, (call.id, "sunny, 24C")))
        records = await self.gateway.store.transcript("main", "weather-chat")
        kinds = [(r["role"], bool(r.get("toolCalls")), r.get("toolCallId")) for r in records]
        self.assertEqual(
            kinds,
            [
                ("user", False, None),
                ("assistant", True, None),
                ("tool", False, call.id),
                ("assistant", False, None),
                ("user", False, None),
                ("assistant", False, None),
            ],
        )
        self.assertEqual(records[1]["stopReason"], "tool_calls")


class OpenAIUpstreamTests(ClientToolsMixin, TestCase):
    api = "openai-completions"


class AnthropicUpstreamTests(ClientToolsMixin, TestCase):
    api = "anthropic-messages"


class ParallelCallTests(Served, TestCase):
    api = "openai-completions"

    async def test_parallel_calls_stream_with_their_indexes(self) -> None:
        """Two calls the model writes interleaved: each its own index, id and name once."""
        calls = [
            FakeToolCall("get_weather", ['{"city":', '"Paris"}']),
            FakeToolCall("get_weather", ['{"city":', '"Oslo"}']),
        ]
        url = await self.serve(Reply(deltas=["Checking. "], tool_calls=calls, interleave=True))

        def call(c: openai.OpenAI) -> Any:
            with c.chat.completions.stream(
                model="openclaw", messages=ASK, tools=[WEATHER], parallel_tool_calls=True
            ) as stream:
                for _ in stream:
                    pass
                return stream.get_final_completion()

        done = await self.sdk(url, call)
        message = done.choices[0].message
        self.assertEqual(message.content, "Checking. ")
        self.assertEqual(done.choices[0].finish_reason, "tool_calls")
        got = [(c.id, json.loads(c.function.arguments)["city"]) for c in message.tool_calls]
        self.assertEqual([city for _, city in got], ["Paris", "Oslo"])
        self.assertEqual(len({i for i, _ in got}), 2)
        self.assertIs(self.upstream.bodies[0]["parallel_tool_calls"], True)


class LangChainTests(Served, TestCase):
    api = "anthropic-messages"

    async def test_bind_tools_agent_loop(self) -> None:
        """LangChain's ChatOpenAI with bind_tools: the model's call, our tool, the answer."""
        try:
            from langchain_core.messages import HumanMessage, ToolMessage
            from langchain_core.tools import tool
            from langchain_openai import ChatOpenAI
        except ImportError:
            raise SkipTest("langchain-openai is not installed (pip install -e '.[test]')") from None

        url = await self.serve(*calls_then_answer())

        @tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            return f"sunny in {city}"

        def loop() -> Any:
            llm = ChatOpenAI(model="openclaw", base_url=url, api_key=TOKEN, max_retries=0)
            bound = llm.bind_tools([get_weather])
            messages: list[Any] = [HumanMessage("Weather in Paris?")]
            for _ in range(4):
                reply = bound.invoke(messages)
                messages.append(reply)
                if not reply.tool_calls:
                    return messages
                for call in reply.tool_calls:
                    result = get_weather.invoke(call["args"])
                    messages.append(ToolMessage(result, tool_call_id=call["id"]))
            raise AssertionError("the loop did not end")

        messages = await deferToThread(loop)
        self.assertEqual(messages[-1].content, "It is sunny.")
        self.assertEqual(messages[1].tool_calls[0]["args"], {"city": "Paris"})
        self.assertEqual(messages[2].content, "sunny in Paris")
        _, result = self.sent_tool_turns(self.upstream.bodies[1])
        self.assertEqual(result[1], "sunny in Paris")
