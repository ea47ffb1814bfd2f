"""A /v1/responses body → the run it asks for: input items, routing, sampling, clear 400s."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted import parse_config
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.config import ChatCompletionsConfig
from openclaw_twisted.web.chat import HISTORY_HEADER, InvalidRequest
from openclaw_twisted.web.openresponses import (
    INVALID_INPUT_IMAGE,
    MISSING_INPUT,
    TOOLS_UNSUPPORTED,
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
        self.assertEqual(
            req.run.message.splitlines(),
            [
                HISTORY_HEADER,
                "User: q1",
                "Assistant: a1",
                "",
                "[Current message - respond to this]",
                "Tool:c1: 42",
            ],
        )

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

    def test_tools_are_refused_for_now(self) -> None:
        e = self.refused({"input": "hi", "tools": [{"type": "function", "name": "f"}]})
        self.assertEqual((e.message, e.param), (TOOLS_UNSUPPORTED, "tools"))
        parse({"input": "hi", "tools": [], "tool_choice": "none"})
        e = self.refused({"input": "hi", "tool_choice": "required"})
        self.assertEqual(e.param, "tool_choice")
        e = self.refused({"input": "hi", "tools": "all"})
        self.assertEqual(e.param, "tools")

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
