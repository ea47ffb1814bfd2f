"""``openai/<model>`` and ``anthropic/<model>`` without an entry, keyed from the environment."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.config import parse_config
from openclaw_twisted.providers.anthropic import AnthropicMessagesProvider
from openclaw_twisted.providers.interface import ProviderError
from openclaw_twisted.providers.openai import OpenAICompletionsProvider
from openclaw_twisted.providers.registry import Providers

ENV = {"OPENCLAW_STATE_DIR": "/nowhere"}


class ImplicitProviderTests(SynchronousTestCase):
    def providers(self, data: object, **env: str) -> Providers:
        config = parse_config(data, {**ENV, **env})
        self.config = config
        return Providers.from_config(config, object(), Clock())

    def test_keys_in_environment(self) -> None:
        providers = self.providers(
            {"agents": {"defaults": {"model": "openai/gpt-4o-mini"}}},
            OPENAI_API_KEY="sk-o",
            ANTHROPIC_API_KEY="sk-a",
        )
        provider, model = providers.resolve("openai/gpt-4o-mini")
        self.assertIsInstance(provider, OpenAICompletionsProvider)
        self.assertEqual(model, "gpt-4o-mini")
        openai = self.config.provider("openai")
        assert openai is not None
        self.assertEqual((openai.base_url, openai.api_key), ("https://api.openai.com/v1", "sk-o"))
        provider, _ = providers.resolve("anthropic/claude-sonnet-4-5")
        self.assertIsInstance(provider, AnthropicMessagesProvider)
        self.assertTrue(any("$OPENAI_API_KEY" in n for n in self.config.notes))
        self.assertFalse(any("sk-o" in n for n in self.config.notes))
        # Implicit providers list no models, so they never become the default model.
        self.assertEqual(
            Roster.from_config(
                parse_config({}, {**ENV, "OPENAI_API_KEY": "k"})
            ).default.model.primary,
            "echo/echo",
        )

    def test_configured_entry_wins(self) -> None:
        self.providers(
            {"models": {"providers": {"openai": {"baseUrl": "http://127.0.0.1:9/v1"}}}},
            OPENAI_API_KEY="sk-o",
        )
        openai = self.config.provider("openai")
        assert openai is not None
        self.assertEqual((openai.base_url, openai.api_key), ("http://127.0.0.1:9/v1", None))
        self.assertEqual(len(self.config.providers), 1)

    def test_without_key_unknown(self) -> None:
        providers = self.providers({}, OPENAI_API_KEY="  ")
        with self.assertRaises(ProviderError) as e:
            providers.resolve("openai/gpt-4o-mini")
        self.assertEqual(e.exception.kind, "misconfigured")
