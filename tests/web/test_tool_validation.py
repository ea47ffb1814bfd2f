"""What a chat completion request with tools must look like, and what reaches the model."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.providers.interface import Message, NamedTool, ToolCall, ToolSpec
from openclaw_twisted.testing import ScriptedProvider

from .memory import make_gateway, post

FN = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "q"}]
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    ],
}


class ToolValidationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.provider = ScriptedProvider(clock=self.reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, reactor=self.reactor)

    def refused(self, body: dict[str, Any]) -> tuple[str, str]:
        r = post(self.gateway, {"messages": ASK, **body})
        self.assertEqual(r.status, 400, r.body)
        error = r.json()["error"]
        self.assertEqual(error["type"], "invalid_request_error")
        self.assertEqual(self.provider.requests, [], "the agent must not run")
        return error["param"], error["message"]

    def test_bad_tools_are_400_with_param(self) -> None:
        cases: list[tuple[Any, str]] = [
            ("lookup", "tools"),
            ([{"type": "custom", "custom": {"name": "x"}}], "tools[0].type"),
            ([{"type": "web_search"}], "tools[0].type"),
            ([FN, {"function": {"name": "y"}}], "tools[1].type"),
            ([{"type": "function"}], "tools[0].function"),
            ([{"type": "function", "function": {"name": "no spaces"}}], "tools[0].function.name"),
            ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
            ([FN, FN], "tools[1].function.name"),
            (
                [{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
                "tools[0].function.parameters",
            ),
            ([FN] * 129, "tools"),
        ]
        for tools, param in cases:
            got, message = self.refused({"tools": tools})
            self.assertEqual(got, param, tools)
            self.assertNotIn("Traceback", message)
        _, message = self.refused({"tools": [{"type": "custom"}]})
        self.assertIn("only 'function' tools are supported", message)

    def test_bad_tool_choice_is_400(self) -> None:
        for choice in (
            "any",
            {"type": "function", "function": {"name": "missing"}},
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [FN]}},
            {"type": "custom", "custom": {"name": "lookup"}},
            {"type": "function"},
        ):
            param, _ = self.refused({"tools": [FN], "tool_choice": choice})
            self.assertEqual(param, "tool_choice", choice)
        _, message = self.refused(
            {"tools": [FN], "tool_choice": {"type": "function", "function": {"name": "nope"}}}
        )
        self.assertIn("'nope', which is not in `tools`", message)
        self.assertEqual(self.refused({"tool_choice": "required"})[0], "tool_choice")
        self.assertEqual(
            self.refused({"tools": [FN], "parallel_tool_calls": "yes"})[0], "parallel_tool_calls"
        )

    def test_bad_tool_turns_are_400(self) -> None:
        orphan = [*ASK, {"role": "tool", "tool_call_id": "c9", "content": "x"}]
        self.assertEqual(self.refused({"messages": orphan})[0], "messages[1].tool_call_id")
        no_id = [*ASK, CALL, {"role": "tool", "content": "x"}]
        self.assertEqual(
            self.refused({"tools": [FN], "messages": no_id})[0], "messages[2].tool_call_id"
        )
        bad_call = {**CALL, "tool_calls": [{"id": "c1", "function": {"name": "lookup"}}]}
        bad_call["tool_calls"][0]["function"]["arguments"] = {"not": "a string"}
        self.assertEqual(
            self.refused({"messages": [*ASK, bad_call]})[0], "messages[1].tool_calls[0]"
        )

    def test_what_reaches_the_model(self) -> None:
        messages = [
            {"role": "system", "content": "Be brief."},
            *ASK,
            CALL,
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
        ]
        body = {
            "messages": messages,
            "tools": [FN],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "parallel_tool_calls": False,
        }
        r = post(self.gateway, body)
        self.assertEqual(r.status, 200, r.body)
        (req,) = self.provider.requests
        self.assertEqual(req.tools, (ToolSpec("lookup", None, {"type": "object"}),))
        self.assertEqual(req.tool_choice, NamedTool("lookup"))
        self.assertIs(req.parallel_tool_calls, False)
        self.assertEqual(
            req.messages,
            (
                Message("user", "q"),
                Message("assistant", "", tool_calls=(ToolCall("c1", "lookup", "{}"),)),
                Message.result("c1", "42"),
            ),
        )
        self.assertTrue(req.system.endswith("Be brief."))

    def test_without_tools_nothing_changes(self) -> None:
        """No tools, no tool turns: §4.3's flattening, and no tool fields for the model."""
        messages = [*ASK, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
        r = post(self.gateway, {"messages": messages, "tool_choice": "none"})
        self.assertEqual(r.status, 200, r.body)
        (req,) = self.provider.requests
        self.assertEqual(len(req.messages), 1)
        self.assertTrue(req.messages[0].text.startswith("[Chat messages since your last reply"))
        self.assertEqual((req.tools, req.tool_choice, req.parallel_tool_calls), ((), None, None))
