"""Agent choice, session keys and the agent's input, observed at the model provider."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.providers.interface import Image, Message
from openclaw_twisted.testing import Script, ScriptedProvider

from .memory import MemoryClient, gateway_config, make_gateway, post

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
GIF = b"GIF89a" + b"\x01" * 10


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


class RoutingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.provider = ScriptedProvider(clock=self.reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, reactor=self.reactor)

    def ask(self, body: dict[str, Any], **headers: str) -> Any:
        r = post(self.gateway, {"messages": [user("hi")], **body}, headers=headers)
        self.assertEqual(r.status, 200, r.body)
        return self.provider.requests[-1]

    def test_model_chooses_the_agent(self) -> None:
        cases = {
            "openclaw": "model-a",
            "openclaw/default": "model-a",
            "OpenClaw": "model-a",
            "openclaw/main": "model-a",
            "openclaw/beta": "model-b",
            "openclaw:beta": "model-b",
            "agent:beta": "model-b",
            "AGENT:Beta": "model-b",
        }
        for model, asked in cases.items():
            self.assertEqual(self.ask({"model": model}).model, asked, model)
        self.assertIn("You are Beta", self.ask({"model": "openclaw/beta"}).system)

    def test_missing_model_is_the_default_agent_and_echoed_as_openclaw(self) -> None:
        r = post(self.gateway, {"messages": [user("hi")]})
        self.assertEqual(r.json()["model"], "openclaw")
        self.assertEqual(self.provider.requests[-1].model, "model-a")

    def test_header_wins_over_model(self) -> None:
        for name in ("x-openclaw-agent-id", "x-openclaw-agent"):
            req = self.ask({"model": "openclaw/main"}, **{name: " BETA "})
            self.assertEqual(req.model, "model-b")
        # With a header the model is not an agent choice, so any model string is fine.
        self.assertEqual(
            self.ask({"model": "gpt-4o"}, **{"x-openclaw-agent-id": "beta"}).model, "model-b"
        )

    def test_session_key_of_an_agent_decides(self) -> None:
        req = self.ask(
            {"model": "openclaw/main"},
            **{"x-openclaw-agent-id": "main", "x-openclaw-session-key": "agent:beta:work"},
        )
        self.assertEqual(req.model, "model-b")

    def test_stateless_by_default(self) -> None:
        keys = []
        self.gateway.runner.listeners.append(lambda run, event: keys.append(run.session_key))
        self.ask({"messages": [user("one")]})
        self.ask({"messages": [user("two")]})
        unique = sorted(set(keys))
        self.assertEqual(len(unique), 2)
        for key in unique:
            self.assertRegex(key, r"^agent:main:openai:[0-9a-f-]{36}$")
        # Nothing was kept, so the second turn saw no history.
        self.assertEqual(self.provider.requests[-1].messages, (Message("user", "two"),))
        self.assertEqual(self.successResultOf(self.gateway.store.sessions("main")), [])

    def test_user_makes_a_stable_persisted_session(self) -> None:
        keys = []
        self.gateway.runner.listeners.append(lambda run, event: keys.append(run.session_key))
        self.ask({"user": "Alice", "messages": [user("one")]})
        self.ask({"user": "alice", "messages": [user("two")], "model": "openclaw/beta"})
        self.ask({"user": "ALICE", "messages": [user("three")]})
        self.assertEqual(
            sorted(set(keys)), ["agent:beta:openai-user:alice", "agent:main:openai-user:alice"]
        )
        self.assertEqual(
            self.provider.requests[-1].messages,
            (
                Message("user", "one"),
                Message("assistant", "Hello from the script."),
                Message("user", "three"),
            ),
        )

    def test_session_key_header_is_verbatim_and_persisted(self) -> None:
        keys = []
        self.gateway.runner.listeners.append(lambda run, event: keys.append(run.session_key))
        self.ask({"user": "bob"}, **{"x-openclaw-session-key": "  My-Key:1  "})
        self.ask({}, **{"x-openclaw-session-key": "My-Key:1"})
        self.assertEqual(set(keys), {"My-Key:1"})
        self.assertEqual(len(self.provider.requests[-1].messages), 3)

    def test_only_a_stateless_stream_lets_go_of_the_answer(self) -> None:
        kept: list[bool] = []
        self.gateway.runner.listeners.append(lambda run, event: kept.append(run.request.keep_text))
        for body, keep in (
            ({}, True),
            ({"stream": True}, False),
            ({"stream": True, "user": "a"}, True),
        ):
            kept.clear()
            self.ask(body)
            self.assertEqual(set(kept), {keep}, body)

    def test_persist_ephemeral(self) -> None:
        data = gateway_config("x")
        data["session"] = {"persistEphemeral": True}
        self.gateway = make_gateway(self.mktemp(), self.provider, data, reactor=self.reactor)
        self.ask({})
        self.assertEqual(len(self.successResultOf(self.gateway.store.sessions("main"))), 1)

    def test_messages_become_the_agents_input(self) -> None:
        req = self.ask(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    user("first question"),
                    {"role": "assistant", "content": [{"type": "text", "text": "an answer"}]},
                    {"role": "developer", "content": [{"type": "input_text", "text": "Be kind."}]},
                    {"role": "tool", "name": "search", "content": "result 1"},
                    {"role": "function", "content": "result 2"},
                    {"role": "critic", "content": "dropped"},
                    {"role": "user", "content": "   "},
                    user([{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]),
                    {"role": "assistant", "content": "after the current one: dropped"},
                ]
            }
        )
        self.assertEqual(
            req.messages[-1].text,
            "[Chat messages since your last reply - for context]\n"
            "User: first question\n"
            "Assistant: an answer\n"
            "Tool:search: result 1\n"
            "Tool: result 2\n"
            "\n"
            "[Current message - respond to this]\n"
            "User: line 1\nline 2",
        )
        self.assertTrue(req.system.endswith("Be brief.\n\nBe kind."))
        self.assertNotIn("Be brief", req.messages[-1].text)

    def test_single_message_is_the_raw_text(self) -> None:
        req = self.ask({"messages": [{"role": "system", "content": "S"}, user("  just this  ")]})
        self.assertEqual(req.messages, (Message("user", "just this"),))

    def test_tool_entry_can_be_current(self) -> None:
        req = self.ask({"messages": [user("q"), {"role": "tool", "content": "42"}]})
        self.assertTrue(
            req.messages[-1].text.endswith("[Current message - respond to this]\nTool: 42")
        )

    def test_no_usable_text_is_400(self) -> None:
        for messages in (
            [],
            [{"role": "system", "content": "only a system prompt"}],
            [user(""), user([{"type": "text", "text": "  "}])],
            [{"role": "critic", "content": "x"}],
        ):
            r = post(self.gateway, {"messages": messages})
            self.assertEqual(r.status, 400)
            self.assertEqual(r.json()["error"]["message"], "Missing user message in `messages`.")

    def test_images_of_the_current_user_turn_reach_the_provider(self) -> None:
        content = [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": data_uri("image/png", PNG)}},
            {"type": "image_url", "image_url": data_uri("image/gif", GIF)},
        ]
        old = [
            {"type": "image_url", "image_url": {"url": data_uri("image/png", PNG)}},
            {"type": "text", "text": "older"},
        ]
        req = self.ask({"messages": [user(old), user(content)]})
        self.assertEqual(
            req.messages[-1].images, (Image("image/png", PNG), Image("image/gif", GIF))
        )
        self.assertIn("User: what is this?", req.messages[-1].text)

    def test_image_only_turn(self) -> None:
        content = [{"type": "image_url", "image_url": {"url": data_uri("image/png", PNG)}}]
        req = self.ask({"messages": [user(content)]})
        self.assertEqual(req.messages[-1].text, "User sent image(s) with no text.")
        self.assertEqual(len(req.messages[-1].images), 1)

    def test_image_limits(self) -> None:
        data = gateway_config(
            "x", maxImageParts=2, maxTotalImageBytes=70, images={"maxBytes": 40, "allowUrl": True}
        )
        self.gateway = make_gateway(self.mktemp(), self.provider, data, reactor=self.reactor)

        def status(*images: str) -> int:
            parts = [{"type": "image_url", "image_url": {"url": u}} for u in images]
            return post(
                self.gateway, {"messages": [user([{"type": "text", "text": "x"}, *parts])]}
            ).status

        small, big = data_uri("image/png", PNG), data_uri("image/png", PNG + b"\x00" * 30)
        self.assertEqual(status(small, small), 200)
        self.assertEqual(status(small, small, small), 400)  # more than maxImageParts
        self.assertEqual(status(big), 400)  # more than images.maxBytes
        medium = data_uri("image/png", PNG + b"\x00" * 10)
        self.assertEqual(status(medium), 200)
        self.assertEqual(status(medium, medium), 400)  # more than maxTotalImageBytes
        self.assertEqual(status("https://example.invalid/cat.png"), 200)  # allowUrl
        self.assertEqual(
            self.provider.requests[-1].messages[-1].images[0].url, "https://example.invalid/cat.png"
        )
        self.assertEqual(status("ftp://example.invalid/cat.png"), 400)

    def test_same_user_is_serialised_different_users_concurrent(self) -> None:
        self.provider = ScriptedProvider(
            Script(deltas=("a", "b"), delta_delay=1), clock=self.reactor
        )
        self.gateway = make_gateway(self.mktemp(), self.provider, reactor=self.reactor)
        clients = []
        for name in ("ann", "ann", "bob"):
            c = MemoryClient(self.gateway)
            c.request(body={"user": name, "messages": [user("hi")]})
            clients.append(c)
        # ann's second turn waits for her first; bob runs alongside.
        self.assertEqual(len(self.provider.requests), 2)
        self.reactor.pump([1, 1])
        self.assertEqual(len(self.provider.requests), 2)
        self.reactor.advance(1)  # ann's first turn is over
        self.assertEqual(len(self.provider.requests), 3)
        self.assertEqual([c.response().status for c in (clients[0], clients[2])], [200, 200])
        self.reactor.pump([1, 1, 1])
        self.assertEqual([c.response().status for c in clients], [200, 200, 200])
        self.assertEqual(len(self.provider.requests[2].messages), 3)  # ann's history
