"""The official ``openai`` SDK's ``client.responses`` against the gateway and a FakeUpstream."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import openai
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, load_config, parse_config
from openclaw_twisted.config import ResponsesConfig
from openclaw_twisted.providers.interface import Usage
from openclaw_twisted.testing import FakeToolCall, FakeUpstream, Reply

from ..support import REPO, http_client, listen
from .memory import TOKEN
from .test_loopback import RawClient, request_bytes, until
from .test_upstream import AGENTS, MODELS

T = TypeVar("T")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
#: The arguments as the model streams them: split mid-string.
PIECES = ['{"ci', 'ty": "Par', 'is"}']
CALL_THEN_ANSWER = (
    Reply(deltas=[], tool_calls=[FakeToolCall("get_weather", PIECES)], usage=Usage(20, 5)),
    Reply(deltas=["It is ", "sunny."]),
)


def responses_config(upstream: FakeUpstream, state_dir: str, **responses: Any) -> Any:
    endpoints = {"responses": {"enabled": True, **responses}}
    data = upstream.gateway_config(models=MODELS, endpoints=endpoints, agents=AGENTS)
    return parse_config(data, {"OPENCLAW_STATE_DIR": state_dir})


class ResponsesSDKTests(TestCase):
    async def serve(self, *replies: Reply, **responses: Any) -> str:
        self.upstream = await FakeUpstream.start(reactor)
        self.addCleanup(self.upstream.stop)
        self.upstream.script(*replies)
        self.gateway = Gateway(responses_config(self.upstream, self.mktemp(), **responses), reactor)
        self.addCleanup(lambda: self.gateway.shutdown(0))
        self.url = await listen(self, self.gateway)
        return self.url + "/v1"

    async def sync(self, base_url: str, call: Callable[[openai.OpenAI], T]) -> T:
        """``call(client)`` in a thread: the sync client must not block the reactor."""

        def run() -> T:
            with openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as client:
                return call(client)

        return await deferToThread(run)

    async def test_non_streaming(self) -> None:
        url = await self.serve()
        response = await self.sync(
            url,
            lambda c: c.responses.create(
                model="openclaw/beta", input="hi", instructions="Answer in French."
            ),
        )
        self.assertEqual(response.output_text, "Hello from upstream.")
        self.assertTrue(response.id.startswith("resp_"))
        self.assertEqual(response.object, "response")
        self.assertEqual(response.status, "completed")
        self.assertEqual(response.model, "openclaw/beta")
        message = response.output[0]
        assert message.type == "message"
        self.assertTrue(message.id.startswith("msg_"))
        self.assertEqual(message.role, "assistant")
        self.assertEqual(message.status, "completed")
        assert response.usage is not None
        self.assertEqual(
            (
                response.usage.input_tokens,
                response.usage.output_tokens,
                response.usage.total_tokens,
            ),
            (11, 3, 14),
        )
        sent = self.upstream.requests[0].json
        self.assertEqual(sent["model"], "model-b")
        self.assertIn("Answer in French.", sent["messages"][0]["content"])
        self.assertEqual(sent["messages"][-1], {"role": "user", "content": "hi"})
        # Asked whole: the client does not stream.
        self.assertFalse(sent.get("stream"))

    async def test_streaming_parses_every_event(self) -> None:
        url = await self.serve(Reply(deltas=("one", " two", " three"), usage=Usage(5, 3)))

        def call(c: openai.OpenAI) -> list[Any]:
            return list(c.responses.create(model="openclaw", input="hi", stream=True))

        events = await self.sync(url, call)
        types = [e.type for e in events]
        self.assertEqual(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
        )
        # Every event parsed into its SDK type (not the fallback of an unknown event).
        self.assertEqual(
            [type(e).__name__ for e in events][:2],
            ["ResponseCreatedEvent", "ResponseInProgressEvent"],
        )
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        self.assertEqual(
            [e.delta for e in events if e.type == "response.output_text.delta"],
            ["one", " two", " three"],
        )
        done = events[-1].response
        self.assertEqual(done.status, "completed")
        self.assertEqual(done.output_text, "one two three")
        self.assertEqual(events[7].text, "one two three")
        assert done.usage is not None
        self.assertEqual(done.usage.total_tokens, 8)
        item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
        self.assertEqual(item_ids, {done.output[0].id})

    async def test_length_stop_is_incomplete(self) -> None:
        cut = Reply(deltas=("cut",), stop_reason="length")
        url = await self.serve(cut, cut)

        def call(c: openai.OpenAI) -> tuple[Any, list[Any]]:
            whole = c.responses.create(model="openclaw", input="hi", max_output_tokens=16)
            return whole, list(c.responses.create(model="openclaw", input="hi", stream=True))

        whole, events = await self.sync(url, call)
        self.assertEqual(whole.status, "incomplete")
        assert whole.incomplete_details is not None
        self.assertEqual(whole.incomplete_details.reason, "max_output_tokens")
        self.assertEqual(whole.max_output_tokens, 16)
        self.assertEqual(self.upstream.requests[0].json["max_tokens"], 16)
        self.assertEqual(events[-1].type, "response.incomplete")
        self.assertEqual(events[-1].response.output[0].status, "incomplete")

    async def test_previous_response_id_continues_the_session(self) -> None:
        url = await self.serve(Reply(deltas=("first answer",)), Reply(deltas=("second answer",)))

        def call(c: openai.OpenAI) -> tuple[Any, list[Any]]:
            first = c.responses.create(model="openclaw/beta", input="remember 42")
            events = list(
                c.responses.create(
                    model="openclaw/beta",
                    input="what number?",
                    previous_response_id=first.id,
                    stream=True,
                )
            )
            return first, events

        first, events = await self.sync(url, call)
        self.assertEqual(events[-1].response.previous_response_id, first.id)
        sent = self.upstream.requests[1].json["messages"]
        self.assertEqual(
            [(m["role"], m["content"]) for m in sent[1:]],
            [
                ("user", "remember 42"),
                ("assistant", "first answer"),
                ("user", "what number?"),
            ],
        )

    async def test_unknown_previous_response_id_is_a_400(self) -> None:
        url = await self.serve()
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sync(
                url,
                lambda c: c.responses.create(
                    model="openclaw", input="hi", previous_response_id="resp_nope"
                ),
            )
        self.assertEqual(caught.exception.code, "previous_response_not_found")
        self.assertEqual(caught.exception.param, "previous_response_id")
        self.assertEqual(self.upstream.requests, [])

    async def test_store_false_cannot_be_continued(self) -> None:
        url = await self.serve()

        def call(c: openai.OpenAI) -> Any:
            first = c.responses.create(model="openclaw", input="hi", store=False)
            return c.responses.create(
                model="openclaw", input="again", previous_response_id=first.id
            )

        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sync(url, call)
        self.assertEqual(caught.exception.code, "previous_response_not_found")

    async def test_a_bad_tool_is_a_400_naming_it(self) -> None:
        url = await self.serve()
        cases = [
            ({"type": "web_search"}, "tools[0].type", "only 'function' tools"),
            # The chat completions spelling: the name is flat on a Responses tool.
            ({"type": "function", "function": {"name": "f"}}, "tools[0].name", "1 to 64"),
            ({**WEATHER, "parameters": "city"}, "tools[0].parameters", "JSON schema"),
        ]
        for tool, param, said in cases:
            with self.assertRaises(openai.BadRequestError) as caught:
                await self.sync(
                    url,
                    lambda c, t=tool: c.responses.create(  # type: ignore[misc]
                        model="openclaw", input="hi", tools=[t]
                    ),
                )
            self.assertEqual(caught.exception.param, param)
            self.assertIn(said, caught.exception.message)
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sync(
                url,
                lambda c: c.responses.create(
                    model="openclaw",
                    input="hi",
                    tools=[WEATHER],  # type: ignore[list-item]
                    tool_choice={"type": "function", "name": "nope"},
                ),
            )
        self.assertEqual(caught.exception.param, "tool_choice")
        self.assertEqual(self.upstream.requests, [])

    async def test_function_call_round_trip(self) -> None:
        url = await self.serve(*CALL_THEN_ANSWER)
        first = await self.sync(
            url,
            lambda c: c.responses.create(
                model="openclaw",
                input="Weather in Paris?",
                tools=[WEATHER],  # type: ignore[list-item]
                tool_choice="required",
            ),
        )
        self.assertEqual(first.status, "completed")
        (call,) = first.output  # no text: no message item
        assert call.type == "function_call"
        self.assertTrue(call.id and call.id.startswith("fc_"))
        self.assertEqual((call.name, call.status), ("get_weather", "completed"))
        self.assertEqual(json.loads(call.arguments), {"city": "Paris"})
        self.assertEqual([t.name for t in first.tools], ["get_weather"])
        sent = self.upstream.requests[0].json
        self.assertEqual(sent["tools"][0]["function"]["name"], "get_weather")
        self.assertEqual(sent["tool_choice"], "required")

        final = await self.sync(
            url,
            lambda c: c.responses.create(
                model="openclaw",
                previous_response_id=first.id,
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "24C"}],
                tools=[WEATHER],  # type: ignore[list-item]
            ),
        )
        self.assertEqual(final.output_text, "It is sunny.")
        self.assertEqual([o.type for o in final.output], ["message"])
        self.assert_call_replayed(call.call_id)

    async def test_streaming_function_call_round_trip(self) -> None:
        url = await self.serve(
            Reply(deltas=["Let me look."], tool_calls=[FakeToolCall("get_weather", PIECES)]),
            CALL_THEN_ANSWER[1],
        )

        def call(c: openai.OpenAI) -> list[Any]:
            return list(
                c.responses.create(
                    model="openclaw",
                    input="Weather in Paris?",
                    tools=[WEATHER],  # type: ignore[list-item]
                    stream=True,
                )
            )

        events = await self.sync(url, call)
        self.assertEqual(
            [e.type for e in events],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                *["response.function_call_arguments.delta"] * len(PIECES),
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ],
        )
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        added = events[8].item
        assert added.type == "function_call"
        self.assertEqual(
            (added.name, added.arguments, events[8].output_index), ("get_weather", "", 1)
        )
        deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        self.assertEqual([d.delta for d in deltas], PIECES)
        self.assertTrue(all((d.item_id, d.output_index) == (added.id, 1) for d in deltas))
        self.assertEqual(events[-3].arguments, "".join(PIECES))
        done = events[-2].item
        self.assertEqual(
            (done.id, done.status, done.arguments), (added.id, "completed", "".join(PIECES))
        )
        response = events[-1].response
        self.assertEqual(response.status, "completed")
        self.assertEqual([o.type for o in response.output], ["message", "function_call"])
        self.assertEqual(response.output_text, "Let me look.")

        def follow_up(c: openai.OpenAI) -> list[Any]:
            return list(
                c.responses.create(
                    model="openclaw",
                    previous_response_id=response.id,
                    input=[
                        {"type": "function_call_output", "call_id": done.call_id, "output": "24C"}
                    ],
                    tools=[WEATHER],  # type: ignore[list-item]
                    stream=True,
                )
            )

        events = await self.sync(url, follow_up)
        self.assertEqual(events[-1].response.output_text, "It is sunny.")
        self.assert_call_replayed(done.call_id)

    async def test_stateless_input_items_are_real_turns(self) -> None:
        """Without a session, the client sends the call and its output as input items."""
        url = await self.serve(CALL_THEN_ANSWER[1])
        items = [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "24C"},
        ]
        final = await self.sync(
            url,
            lambda c: c.responses.create(
                model="openclaw",
                input=items,
                tools=[WEATHER],
                store=False,  # type: ignore[arg-type,list-item]
            ),
        )
        self.assertEqual(final.output_text, "It is sunny.")
        self.assert_call_replayed("call_1")
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sync(
                url,
                lambda c: c.responses.create(
                    model="openclaw",
                    input=items[2:],
                    tools=[WEATHER],
                    store=False,  # type: ignore[arg-type,list-item]
                ),
            )
        self.assertIn("no `function_call` item before it", caught.exception.message)

    def assert_call_replayed(self, call_id: str) -> None:
        """The last upstream request had the call and its result as real turns."""
        msgs = self.upstream.requests[-1].json["messages"]
        (made,) = [m for m in msgs if m.get("tool_calls")]
        self.assertEqual(made["tool_calls"][0]["id"], call_id)
        self.assertEqual(made["tool_calls"][0]["function"]["name"], "get_weather")
        (result,) = [m for m in msgs if m["role"] == "tool"]
        self.assertEqual((result["tool_call_id"], result["content"]), (call_id, "24C"))
        self.assertEqual(json.dumps(msgs).count("Weather in Paris?"), 1)
        self.assertNotIn("[Chat messages", json.dumps(msgs))

    async def test_upstream_failure_before_streaming_is_http_error(self) -> None:
        url = await self.serve(Reply(status=429, retry_after="3"))
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sync(
                url, lambda c: list(c.responses.create(model="openclaw", input="hi", stream=True))
            )
        self.assertEqual(caught.exception.code, "upstream_rate_limited")

    async def test_mid_stream_failure_is_response_failed(self) -> None:
        url = await self.serve(Reply(deltas=("a", "b"), stream_error="the model fell over"))

        def call(c: openai.OpenAI) -> list[Any]:
            return list(c.responses.create(model="openclaw", input="hi", stream=True))

        events = await self.sync(url, call)
        self.assertEqual(events[-1].type, "response.failed")
        failed = events[-1].response
        self.assertEqual(failed.status, "failed")
        assert failed.error is not None
        self.assertEqual(failed.error.code, "server_error")
        self.assertIn("the model fell over", failed.error.message)
        self.assertEqual(failed.output[0].content[0].text, "ab")

    async def test_disconnect_mid_stream_cancels_the_run(self) -> None:
        await self.serve(Reply(forever=True))
        body = json.dumps({"model": "openclaw", "input": "hi", "stream": True}).encode()
        request = request_bytes({}).replace(b"/v1/chat/completions", b"/v1/responses")
        request = request.replace(
            b"Content-Length: 2\r\n\r\n{}", b"Content-Length: %d\r\n\r\n" % len(body)
        )
        client = RawClient(request + body)
        port = int(self.url.rsplit(":", 1)[1])
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = await self.upstream.request(0)
        await until(lambda: b"response.output_text.delta" in client.received)
        [run] = self.gateway.runner.active.values()
        client.transport.abortConnection()  # type: ignore[union-attr]
        await received.disconnected
        result = await run.wait()
        self.assertEqual(result.stop_reason, "aborted")
        self.assertEqual(self.gateway.runner.active, {})

    async def test_sessions_history_and_kill(self) -> None:
        url = await self.serve(Reply(deltas=("kept",)), Reply(forever=True))
        http = http_client(self)
        r = await http.post(
            url + "/responses",
            json={"model": "openclaw", "input": "hi", "user": "Ada"},
            headers=AUTH,
        )
        first = json.loads(await r.content())
        key = "agent:main:openresponses-user:ada"
        quoted = "agent%3Amain%3Aopenresponses-user%3Aada"
        r = await http.get(f"{self.url}/sessions/{quoted}/history", headers=AUTH)
        self.assertEqual(r.code, 200)
        history = json.loads(await r.content())
        self.assertEqual(history["sessionKey"], key)
        self.assertEqual(
            [(m["role"], m["content"][0]["text"]) for m in history["messages"]],
            [("user", "hi"), ("assistant", "kept")],
        )
        self.assertEqual(history["messages"][1]["responseId"], first["id"])

        # A run in flight on the session: kill aborts it.
        streaming = http.post(
            url + "/responses",
            json={"model": "openclaw", "input": "go on", "user": "Ada", "stream": True},
            headers=AUTH,
        )
        await self.upstream.request(1)
        r = await http.post(f"{self.url}/sessions/{quoted}/kill", headers=AUTH)
        self.assertEqual(r.code, 200)
        killed = json.loads(await r.content())
        self.assertEqual(killed["ok"], True)
        self.assertEqual(killed["killed"], True)
        self.assertEqual(len(killed["runIds"]), 1)
        stream = await streaming
        body = (await stream.content()).decode()
        self.assertIn("event: response.failed", body)
        await self.upstream.requests[1].disconnected

        r = await http.post(f"{self.url}/sessions/{quoted}/kill", headers=AUTH)
        self.assertEqual(json.loads(await r.content()), {"ok": True, "killed": False, "runIds": []})
        r = await http.get(f"{self.url}/sessions/agent%3Amain%3Anobody/history", headers=AUTH)
        self.assertEqual(r.code, 404)
        self.assertEqual(json.loads(await r.content())["error"]["type"], "not_found")
        r = await http.get(f"{self.url}/sessions/{quoted}/history")
        self.assertEqual(r.code, 401)
        await r.content()


class ReadmeResponsesExampleTests(TestCase):
    async def test_readme_responses_example_runs(self) -> None:
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        m = re.search(r"<!-- responses-example -->\n```python\n(.*?)```", readme, re.S)
        assert m is not None, "README lost its client.responses example"
        code = m.group(1)
        config = load_config(
            os.path.join(REPO, "examples", "openclaw.json5"), {"OPENCLAW_STATE_DIR": self.mktemp()}
        )
        on = attrs.evolve(config.gateway, responses=ResponsesConfig(enabled=True))
        gateway = Gateway(attrs.evolve(config, gateway=on), reactor)
        self.addCleanup(lambda: gateway.shutdown(0))
        url = await listen(self, gateway)
        code = code.replace("http://127.0.0.1:18789", url)
        printed: list[str] = []

        def fake_print(*args: Any, end: str = "\n", **kw: Any) -> None:
            printed.append(" ".join(map(str, args)) + end)

        await deferToThread(exec, compile(code, "README.md", "exec"), {"print": fake_print})
        # The built-in echo model answers with the turn's own text.
        self.assertEqual("".join(printed), "My name is Ada.\nWhat is my name?\n")
        self.assertGreater(len(printed), 3)  # the second answer streamed, piece by piece
