"""The tools policy: OpenClaw's allow/deny/profile/group semantics, per agent; exec off."""

from __future__ import annotations

import os
from typing import Any

import json5
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.config import ConfigError
from openclaw_twisted.tools import (
    ExecTool,
    ToolPolicy,
    ToolsConfig,
    effective_tools,
    expand_groups,
    tools_for_agent,
)

FS = ["read", "write", "edit", "ls", "find"]


def names(config: dict[str, Any], agent: str = "main") -> list[str]:
    return list(effective_tools(config, agent).names)


class PatternTests(SynchronousTestCase):
    def test_groups_expand_and_names_normalise(self) -> None:
        self.assertEqual(
            expand_groups(["group:runtime", " BASH ", "Read"]), ("exec", "process", "read")
        )
        self.assertEqual(expand_groups(["group:fs"])[:3], ("read", "write", "edit"))

    def test_deny_wins_over_allow(self) -> None:
        policy = ToolPolicy(allow=["group:fs"], deny=["write"])  # type: ignore[arg-type]
        self.assertTrue(policy.allows("read"))
        self.assertFalse(policy.allows("write"))
        self.assertFalse(policy.allows("exec"))

    def test_wildcards_and_case(self) -> None:
        self.assertFalse(ToolPolicy(deny=("*",)).allows("read"))
        self.assertTrue(ToolPolicy(allow=("RE*",)).allows("read"))
        self.assertFalse(ToolPolicy(allow=("re*",)).allows("write"))
        self.assertTrue(ToolPolicy(allow=("*i*",)).allows("edit"))
        # A regex character in a name is literal, not a pattern.
        self.assertFalse(ToolPolicy(allow=("r.ad",)).allows("read"))

    def test_empty_allow_means_everything(self) -> None:
        self.assertTrue(ToolPolicy(allow=(), deny=("exec",)).allows("find"))


class EffectiveToolsTests(SynchronousTestCase):
    def test_default_is_the_file_tools_without_exec(self) -> None:
        self.assertEqual(names({}), FS)

    def test_exec_needs_security_full(self) -> None:
        self.assertNotIn("exec", names({"tools": {"allow": ["exec", "group:fs"]}}))
        self.assertEqual(names({"tools": {"exec": {"security": "full"}}}), [*FS, "exec"])
        self.assertNotIn("exec", names({"tools": {"exec": {"security": "deny"}}}))

    def test_exec_enabled_but_denied_stays_off(self) -> None:
        config = {"tools": {"exec": {"security": "full"}, "deny": ["group:runtime"]}}
        self.assertEqual(names(config), FS)
        config = {"tools": {"exec": {"security": "full"}, "deny": ["bash"]}}  # OpenClaw's alias
        self.assertEqual(names(config), FS)

    def test_global_allow_and_deny(self) -> None:
        self.assertEqual(names({"tools": {"allow": ["read", "ls"]}}), ["read", "ls"])
        self.assertEqual(names({"tools": {"deny": ["write", "edit"]}}), ["read", "ls", "find"])
        self.assertEqual(names({"tools": {"deny": ["*"]}}), [])

    def test_profiles(self) -> None:
        self.assertEqual(names({"tools": {"profile": "minimal"}}), [])
        self.assertEqual(names({"tools": {"profile": "messaging"}}), [])
        self.assertEqual(names({"tools": {"profile": "coding"}}), FS)
        full = {"tools": {"profile": "coding", "exec": {"security": "full"}}}
        self.assertEqual(names(full), [*FS, "exec"])
        # The profile is a base allowlist: allow cannot widen it, deny narrows it.
        self.assertEqual(names({"tools": {"profile": "minimal", "allow": ["read"]}}), [])
        self.assertEqual(names({"tools": {"profile": "coding", "deny": ["group:fs"]}}), [])

    def test_per_agent_narrowing_and_its_own_exec(self) -> None:
        config = {
            "tools": {"deny": ["write"]},
            "agents": {
                "list": [
                    {"id": "main"},
                    {"id": "Reader", "tools": {"allow": ["read", "write", "ls"]}},
                    {"id": "ops", "tools": {"exec": {"security": "full", "timeoutSec": 5}}},
                    {"id": "chat", "tools": {"profile": "minimal"}},
                ]
            },
        }
        self.assertEqual(names(config, "main"), ["read", "edit", "ls", "find"])
        # An agent's allow cannot bring back what the global deny took away.
        self.assertEqual(names(config, "reader"), ["read", "ls"])
        self.assertEqual(names(config, "ops"), ["read", "edit", "ls", "find", "exec"])
        self.assertEqual(names(config, "chat"), [])
        self.assertEqual(names(config, "unlisted"), ["read", "edit", "ls", "find"])
        registry = effective_tools(config, "ops")
        exec_tool = registry.get("exec")
        assert isinstance(exec_tool, ExecTool)
        self.assertEqual(exec_tool.timeout_seconds, 5.0)

    def test_global_exec_on_agent_turns_it_off(self) -> None:
        config = {
            "tools": {"exec": {"security": "full"}},
            "agents": {"list": [{"id": "safe", "tools": {"exec": {"security": "deny"}}}]},
        }
        self.assertIn("exec", names(config, "main"))
        self.assertNotIn("exec", names(config, "safe"))

    def test_allowlist_security_keeps_exec_off_with_a_note(self) -> None:
        config = ToolsConfig.from_mapping({"tools": {"exec": {"security": "allowlist"}}})
        policy = config.for_agent("main")
        self.assertFalse(policy.exec_enabled)
        self.assertIn("not supported", policy.notes[0])
        self.assertNotIn("exec", tools_for_agent(config, "main"))

    def test_policy_answers_for_tools_not_built_in(self) -> None:
        policy = ToolsConfig.from_mapping({"tools": {"deny": ["browser"]}}).for_agent("main")
        self.assertFalse(policy.allows("browser"))
        self.assertTrue(policy.allows("web_fetch"))
        self.assertFalse(policy.allows("exec"))


class ConfigValidationTests(SynchronousTestCase):
    def error(self, config: Any) -> str:
        with self.assertRaises(ConfigError) as e:
            ToolsConfig.from_mapping(config)
        return str(e.exception)

    def test_wrong_types_name_the_key(self) -> None:
        self.assertEqual(
            self.error({"tools": {"allow": "read"}}),
            "tools.allow: expected an array of tool names or groups, got a string",
        )
        self.assertEqual(self.error({"tools": []}), "tools: expected an object, got an array")
        self.assertEqual(
            self.error({"tools": {"profile": "everything"}}),
            "tools.profile: expected one of minimal, coding, messaging, full, got 'everything'",
        )
        self.assertEqual(
            self.error({"tools": {"exec": {"security": "yolo"}}}),
            "tools.exec.security: expected one of deny, allowlist, full, got 'yolo'",
        )
        self.assertEqual(
            self.error({"tools": {"exec": {"timeoutSec": 0}}}),
            "tools.exec.timeoutSec: expected a number of seconds above 0, got 0",
        )
        self.assertEqual(
            self.error({"agents": {"list": [{"id": "a"}, {"id": "b", "tools": {"deny": [1]}}]}}),
            "agents.list[1].tools.deny[0]: expected a tool name, got a number",
        )

    def test_unknown_keys_strict_with_a_suggestion(self) -> None:
        self.assertEqual(
            self.error({"tools": {"alow": ["read"]}}),
            "tools.alow: unknown key; did you mean tools.allow?",
        )
        self.assertEqual(
            self.error({"tools": {"exec": {"timeout": 3}}}),
            "tools.exec.timeout: unknown key; did you mean tools.exec.timeoutSec?",
        )

    def test_unknown_keys_collected_when_asked(self) -> None:
        ignored: list[str] = []
        config = ToolsConfig.from_mapping(
            {"tools": {"byProvider": {}, "deny": ["exec"]}}, ignored=ignored
        )
        self.assertEqual(ignored, ["tools.byProvider: unknown key"])
        self.assertEqual(config.deny, ("exec",))


class ReadmeExampleTests(SynchronousTestCase):
    def test_the_readme_tools_example_means_what_it_says(self) -> None:
        readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
        with open(readme) as f:
            section = f.read().split("### The agent's own tools", 1)[1]
        example = json5.loads(section.split("```json5", 1)[1].split("```", 1)[0])
        self.assertEqual(names(example, "main"), ["read", "edit", "ls", "find"])
        self.assertEqual(names(example, "ops"), ["read", "edit", "ls", "find", "exec"])
        exec_tool = effective_tools(example, "ops").get("exec")
        assert isinstance(exec_tool, ExecTool)
        self.assertEqual(exec_tool.timeout_seconds, 30.0)
