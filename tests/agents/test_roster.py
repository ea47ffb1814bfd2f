"""Agents from config, and the system prompt built from identity and workspace files."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.roster import (
    WORKSPACE_FILE_CAP,
    Roster,
    agent_from_session_key,
    main_session_key,
    system_prompt,
)
from openclaw_twisted.config import parse_config


def roster(data: dict[str, object], state: str) -> Roster:
    return Roster.from_config(parse_config(data, {"OPENCLAW_STATE_DIR": state}))


class RosterTests(SynchronousTestCase):
    def test_implicit_main(self) -> None:
        state = self.mktemp()
        r = roster({}, state)
        self.assertEqual(r.ids, ("main",))
        self.assertEqual(r.default.model.primary, "echo/echo")
        self.assertEqual(r.default.workspace, os.path.join(state, "workspace"))
        self.assertEqual((r.default.timeout_seconds, r.default.history_limit), (600.0, 50))

    def test_list_and_default(self) -> None:
        r = roster(
            {
                "agents": {
                    "defaults": {"model": "p/m", "historyLimit": 7},
                    "list": [{"id": "main"}, {"id": "Beta Bot", "default": True, "name": "B"}],
                },
                "models": {"providers": {"p": {"baseUrl": "http://127.0.0.1:1", "models": []}}},
            },
            self.mktemp(),
        )
        self.assertEqual(r.ids, ("main", "beta-bot"))
        self.assertEqual(r.default_id, "beta-bot")
        agent = r.get("beta-bot")
        assert agent is not None
        self.assertEqual((agent.name, agent.model.primary, agent.history_limit), ("B", "p/m", 7))
        self.assertIsNone(r.get("nobody"))

    def test_session_keys(self) -> None:
        self.assertEqual(agent_from_session_key("agent:Beta:openai-user:x"), "beta")
        self.assertEqual(agent_from_session_key("agent:main:main"), "main")
        self.assertIsNone(agent_from_session_key("agent:../x:y"))
        self.assertIsNone(agent_from_session_key("my-session"))
        self.assertEqual(main_session_key("main"), "agent:main:main")


class SystemPromptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = self.mktemp()
        self.agent = roster(
            {"agents": {"list": [{"id": "ops", "name": "Ops"}]}}, self.state
        ).default
        os.makedirs(self.agent.workspace)

    def write(self, name: str, text: str) -> None:
        with open(os.path.join(self.agent.workspace, name), "w", encoding="utf-8") as f:
            f.write(text)

    def test_identity_only(self) -> None:
        self.assertEqual(system_prompt(self.agent), "You are Ops, an OpenClaw agent (id: ops).")

    def test_files_in_order_then_extra(self) -> None:
        self.write("TOOLS.md", "tools\n")
        self.write("AGENTS.md", "agents")
        self.write("SOUL.md", "   \n")  # empty after trimming: left out
        self.write("NOTES.md", "not a workspace file")
        prompt = system_prompt(self.agent, " be brief ")
        self.assertEqual(
            prompt.split("\n\n"),
            [
                "You are Ops, an OpenClaw agent (id: ops).",
                "## AGENTS.md\nagents",
                "## TOOLS.md\ntools",
                "be brief",
            ],
        )

    def test_each_file_capped(self) -> None:
        self.write("USER.md", "u" * (WORKSPACE_FILE_CAP * 3))
        self.write("IDENTITY.md", "i" * 10)
        prompt = system_prompt(self.agent)
        self.assertIn("u" * WORKSPACE_FILE_CAP, prompt)
        self.assertNotIn("u" * (WORKSPACE_FILE_CAP + 1), prompt)
        self.assertIn("## IDENTITY.md\n" + "i" * 10, prompt)

    def test_edits_seen_on_the_next_turn(self) -> None:
        self.write("SOUL.md", "calm")
        self.assertIn("calm", system_prompt(self.agent))
        self.write("SOUL.md", "cheerful")
        self.assertIn("cheerful", system_prompt(self.agent))

    def test_unreadable_bytes_do_not_fail(self) -> None:
        with open(os.path.join(self.agent.workspace, "AGENTS.md"), "wb") as f:
            f.write(b"ok \xff\xfe end")
        self.assertIn("## AGENTS.md\nok", system_prompt(self.agent))
        os.makedirs(os.path.join(self.agent.workspace, "USER.md"))  # a directory: skipped
        self.assertNotIn("USER.md", system_prompt(self.agent))
