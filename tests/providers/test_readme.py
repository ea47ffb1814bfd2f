"""The README's "Model providers" config example is a valid config with what it says."""

from __future__ import annotations

import os
import re

import json5
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.config import parse_config
from openclaw_twisted.providers.anthropic import AnthropicMessagesProvider
from openclaw_twisted.providers.openai import OpenAICompletionsProvider
from openclaw_twisted.providers.registry import Providers
from tests.support import REPO


class ReadmeProvidersTests(SynchronousTestCase):
    def test_example_config(self) -> None:
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        section = readme[readme.index("## Model providers") :]
        m = re.search(r"```json5\n(.*?)```", section, re.S)
        assert m is not None, "README lost its providers example"
        env = {"VLLM_API_KEY": "v", "ANTHROPIC_API_KEY": "a", "OPENCLAW_STATE_DIR": "/nowhere"}
        config = parse_config(json5.loads(m.group(1)), env)
        self.assertEqual(config.ignored, ())
        model = Roster.from_config(config).default.model
        self.assertEqual(
            model.refs, ("anthropic/claude-sonnet-4-5", "vllm/qwen2.5-7b", "ollama/llama3.2")
        )
        providers = Providers.from_config(config, object(), None)  # type: ignore[arg-type]
        for ref in model.refs:
            provider, _ = providers.resolve(ref)
            expected = (
                AnthropicMessagesProvider
                if ref.startswith("anthropic")
                else (OpenAICompletionsProvider)
            )
            self.assertIsInstance(provider, expected)
