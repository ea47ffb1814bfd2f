"""A /v1/responses body → the run it asks for: input items, routing, sampling, clear 400s."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted import parse_config
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.config import ChatCompletionsConfig
from openclaw_twisted.providers.interface import Message, NamedTool, ToolCall, ToolSpec
from openclaw_twisted.web.chat import HISTORY_HEADER, InvalidRequest
from openclaw_twisted.web.openresponses import (
    INVALID_INPUT_IMAGE,
    MISSING_INPUT,
    PreviousResponse,
    ResponseIds,
    ResponsesRequest,
    parse_responses,
)

from .memory import gateway_config
from .test_chat_routing import GIF, PNG, data_uri

CONFIG = ChatCompletionsConfig()


def roster() -> Roster:
    return Roster.from_config(parse_config(gateway_config("x"), {"OPENCLAW_STATE_DIR": "/nowhere"}))


def parse(
    body: dict[str, Any], headers: dict[str, str] | None = None, **kw: Any
) -> ResponsesRequest:
    return parse_responses(
        body, headers or {}, roster(), CONFIG, response_id="resp_1", new_id=lambda: "fresh", **kw
    )


class ParseTests(SynchronousTestCase):
    def refused(self, body: dict[str, Any], **kw: Any) -> InvalidRequest:
        with self.assertRaises(InvalidRequest) as caught:
            parse(body, **kw)
        return caught.exception

    def test_string_input_is_the_message(self) -> None:
        req = parse({"model": "openclaw/beta", "input": "hello"})
        self.assertEqual(req.run.message, "hello")
        self.assertEqual(req.run.agent_id, "beta")
        self.assertEqual(req.model, "openclaw/beta")
        self.assertEqual(req.run.response_id, "resp_1")

    def test_items_follow_the_chat_rules(self) -> None:
        req = parse(
            {
                "instructions": "Be brief.",
                "input": [
                    {"role": "developer", "content": "Speak French."},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "q1"}],
                    },
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "a1"}],
                    },
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "reasoning", "summary": []},
                    {"type": "function_call_output", "call_id": "c1", "output": "42"},
                ],
            }
        )
        self.assertEqual(req.run.extra_system_prompt, "Be brief.\n\nSpeak French.")
        # The call and its output are real turns, the call joined to the assistant's text.
        self.assertEqual(
            req.run.conversation,
            (
                Message("user", "q1"),
                Message("assistant", "a1", tool_calls=(ToolCall("c1", "f", "{}"),)),
                Message.result("c1", "42"),
            ),
        )
        self.assertEqual(req.run.message, "q1")

    def test_messages_alone_are_flattened(self) -> None:
        req = parse(
            {
                "input": [
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "q2"},
                ]
            }
        )
        self.assertIsNone(req.run.conversation)
        self.assertEqual(req.run.message.splitlines()[:2], [HISTORY_HEADER, "User: q1"])

    def test_input_image_as_data_uri_and_as_source(self) -> None:
        req = parse(
            {
                "input": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "look"},
                            {"type": "input_image", "image_url": data_uri("image/png", PNG)},
                            {
                                "type": "input_image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/gif",
                                    "data": data_uri("image/gif", GIF).split(",")[1],
                                },
                            },
                        ],
                    }
                ]
            }
        )
        self.assertEqual([i.mime for i in req.run.images], ["image/png", "image/gif"])
        self.assertEqual(req.run.images[0].data, PNG)

    def test_bad_images_are_refused_with_input_as_param(self) -> None:
        for part in (
            {"type": "input_image", "image_url": data_uri("image/png", GIF)},
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            {"type": "input_image"},
        ):
            e = self.refused({"input": [{"role": "user", "content": [part]}]})
            self.assertEqual((e.message, e.param), (INVALID_INPUT_IMAGE, "input"), part)
        e = self.refused(
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}
        )
        self.assertIn("file_id", e.message)

    def test_bad_input(self) -> None:
        cases: list[tuple[Any, str]] = [
            (None, MISSING_INPUT),
            ("   ", MISSING_INPUT),
            (42, "`input` must be a string or an array of input items."),
            ([{"role": "system", "content": "only a system prompt"}], MISSING_INPUT),
            (["text"], "`input[0]` must be an object."),
            (
                [{"type": {}, "call_id": "", "output": ""}],
                "`input[0].type` must be a string such as 'message'.",
            ),
            ([{"type": "web_search_call"}], "`input[0]` has an unsupported type 'web_search_call'"),
            ([{"role": "robot", "content": "x"}], "`input[0].role` must be"),
            ([{"role": "user", "content": 5}], "`input[0].content` must be a string"),
            ([{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}], "input_file"),
            ([{"type": "function_call_output", "call_id": "c", "output": 5}], "`input[0].output`"),
        ]
        for value, message in cases:
            body = {} if value is None else {"input": value}
            e = self.refused(body)
            self.assertIn(message, e.message, value)
            self.assertEqual(e.param, "input")

    def test_function_tools_are_flat(self) -> None:
        tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
        req = parse(
            {
                "input": "hi",
                "tools": [tool, {"type": "function", "name": "g", "strict": True}],
                "tool_choice": {"type": "function", "name": "g"},
                "parallel_tool_calls": False,
            }
        )
        self.assertEqual(
            req.run.tools,
            (ToolSpec("f", None, {"type": "object"}), ToolSpec("g", strict=True)),
        )
        self.assertEqual(req.run.tool_choice, NamedTool("g"))
        self.assertIs(req.run.parallel_tool_calls, False)
        self.assertFalse(req.parallel_tool_calls)
        self.assertEqual(req.run.conversation, (Message("user", "hi"),))
        parse({"input": "hi", "tools": [], "tool_choice": "none"})

    def test_bad_tools_name_their_field(self) -> None:
        f = {"type": "function", "name": "f"}
        for body, param in [
            ({"tools": "all"}, "tools"),
            ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
            ({"tools": [f, {"type": "function", "function": {"name": "g"}}]}, "tools[1].name"),
            ({"tools": [f, f]}, "tools[1].name"),
            ({"tools": [{**f, "description": 1}]}, "tools[0].description"),
            ({"tool_choice": "required"}, "tool_choice"),
            ({"tools": [f], "tool_choice": {"type": "function", "name": "g"}}, "tool_choice"),
            ({"tools": [f], "tool_choice": "sometimes"}, "tool_choice"),
            ({"tools": [f], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ]:
            e = self.refused({"input": "hi", **body})
            self.assertEqual(e.param, param, body)

    def test_bad_tool_items(self) -> None:
        call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
        for items, said in [
            ([{**call, "arguments": {}}], "needs string `call_id`"),
            ([{"type": "function_call_output", "output": "x"}], "`input[1].call_id`"),
        ]:
            e = self.refused({"input": [{"role": "user", "content": "q"}, *items]})
            self.assertEqual(e.param, "input")
            self.assertIn(said, e.message)
        # Stateless: an output must follow its call in the same input.
        answer = {"type": "function_call_output", "call_id": "c1", "output": "42"}
        e = self.refused({"store": False, "input": [{"role": "user", "content": "q"}, answer]})
        self.assertIn("no `function_call` item before it", e.message)
        parse({"store": False, "input": [{"role": "user", "content": "q"}, call, answer]})

    def test_sampling(self) -> None:
        req = parse({"input": "hi", "max_output_tokens": 64, "temperature": 0.5, "top_p": 1})
        self.assertEqual(
            (req.run.sampling.max_tokens, req.run.sampling.temperature, req.run.sampling.top_p),
            (64, 0.5, 1.0),
        )
        for name, value in (
            ("temperature", 3),
            ("top_p", -1),
            ("max_output_tokens", 0),
            ("max_output_tokens", "9"),
        ):
            self.assertEqual(self.refused({"input": "hi", name: value}).param, name)
        for name in ("stream", "store"):
            self.assertEqual(self.refused({"input": "hi", name: "yes"}).param, name)
        self.assertEqual(self.refused({"input": "hi", "instructions": 1}).param, "instructions")

    def test_sessions(self) -> None:
        fresh = parse({"input": "hi"})
        self.assertEqual(fresh.run.session_key, "agent:main:openresponses:fresh")
        self.assertTrue(fresh.run.persist, "a stored response's session is kept to be continued")
        stateless = parse({"input": "hi", "store": False})
        self.assertFalse(stateless.run.persist)
        self.assertIsNone(stateless.run.response_id)
        self.assertEqual(
            parse({"input": "hi", "user": "Ada"}).run.session_key,
            "agent:main:openresponses-user:ada",
        )
        keyed = parse({"input": "hi"}, {"x-openclaw-session-key": "agent:beta:x"})
        self.assertEqual((keyed.run.agent_id, keyed.run.session_key), ("beta", "agent:beta:x"))
        self.assertEqual(self.refused({"input": "hi", "user": 5}).param, "user")
        self.assertEqual(self.refused({"input": "hi", "user": "u" * 300}).code, "too_long")
        self.assertEqual(self.refused({"model": "gpt-4o", "input": "hi"}).code, "invalid_model")

    def test_previous_response_decides_the_session(self) -> None:
        previous = PreviousResponse("beta", "my-session")
        req = parse(
            {"input": "hi", "previous_response_id": "resp_0", "user": "Ada"}, previous=previous
        )
        self.assertEqual((req.run.agent_id, req.run.session_key), ("beta", "my-session"))
        self.assertEqual(req.previous_response_id, "resp_0")
        e = self.refused(
            {"input": "hi", "previous_response_id": "resp_0"},
            headers={"x-openclaw-session-key": "other"},
            previous=previous,
        )
        self.assertEqual(e.param, "previous_response_id")
        self.assertEqual(
            self.refused({"input": "hi", "previous_response_id": 7}).param, "previous_response_id"
        )


class ResponseIdsTests(SynchronousTestCase):
    def test_bounded_oldest_forgotten(self) -> None:
        ids = ResponseIds(limit=2)
        for n in range(3):
            ids.remember(f"resp_{n}", PreviousResponse("main", f"k{n}"))
        self.assertIsNone(ids.get("resp_0"))
        self.assertEqual(ids.get("resp_2"), PreviousResponse("main", "k2"))
