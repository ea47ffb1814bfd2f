"""``Roster.route``: the one rule every edge uses to pick an agent and a session."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.roster import (
    INVALID_MODEL,
    InvalidModel,
    Roster,
    Route,
    UnknownAgent,
)
from openclaw_twisted.config import parse_config


def two_agents() -> Roster:
    data = {"agents": {"list": [{"id": "main"}, {"id": "beta", "default": True}]}}
    return Roster.from_config(parse_config(data, {"OPENCLAW_STATE_DIR": "/nonexistent"}))


class RouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.roster = two_agents()

    def test_a_key_naming_an_agent_decides_everywhere(self) -> None:
        for surface in ("openai", "openresponses", "ws", "cli"):
            route = self.roster.route(
                surface, session_key="  agent:MAIN:work ", agent="beta", model="openclaw/beta"
            )
            self.assertEqual(route, Route("main", "agent:MAIN:work", True), surface)

    def test_agent_then_model_then_default(self) -> None:
        self.assertEqual(self.roster.route("ws", agent=" Main ").agent_id, "main")
        self.assertEqual(self.roster.route("ws", agent="  ").agent_id, "beta")  # blank: default
        self.assertEqual(self.roster.route("openai", model="agent:main").agent_id, "main")
        self.assertEqual(self.roster.route("openai", model="OpenClaw/Default").agent_id, "beta")
        # An agent named outright makes any model string acceptable.
        self.assertEqual(self.roster.route("openai", agent="main", model="gpt-4o").agent_id, "main")
        self.assertEqual(self.roster.route("cli"), Route("beta", "agent:beta:main"))

    def test_keyless_sessions_per_surface(self) -> None:
        self.assertEqual(self.roster.route("ws", user="alice").session_key, "agent:beta:main")
        self.assertEqual(
            self.roster.route("openai", user="Alice"), Route("beta", "agent:beta:openai-user:alice")
        )
        self.assertEqual(
            self.roster.route("openresponses", user="Bob").session_key,
            "agent:beta:openresponses-user:bob",
        )
        ephemeral = self.roster.route("openai", user="  ", new_id=lambda: "id1")
        self.assertEqual(ephemeral, Route("beta", "agent:beta:openai:id1", False))
        kept = self.roster.route("openai", persist_ephemeral=True, new_id=lambda: "id2")
        self.assertEqual(kept, Route("beta", "agent:beta:openai:id2", True))

    def test_unknown_agent_names_the_field_and_the_known_ones(self) -> None:
        e = self.assertRaises(UnknownAgent, self.roster.route, "openai", model="openclaw/nope")
        self.assertEqual(
            (e.message, e.field, e.code), ("Unknown agent 'nope'.", "model", "unknown_agent")
        )
        self.assertEqual(e.known, ("main", "beta"))
        e = self.assertRaises(UnknownAgent, self.roster.route, "ws", agent="Nope")
        self.assertEqual((e.message, e.field), ("Unknown agent 'nope'.", None))

    def test_invalid_model(self) -> None:
        e = self.assertRaises(InvalidModel, self.roster.route, "openai", model="gpt-4o")
        self.assertEqual((e.message, e.field, e.code), (INVALID_MODEL, "model", "invalid_model"))
