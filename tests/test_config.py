"""The config file: resolution, JSON5, ${VAR}, defaults, ignored keys, errors naming the key."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.config import (
    DEFAULT_PORT,
    ConfigError,
    config_path,
    load_config,
    normalize_agent_id,
    parse_config,
)


class ResolutionTests(SynchronousTestCase):
    def test_order(self) -> None:
        env = {"OPENCLAW_CONFIG_PATH": "/a/b.json", "OPENCLAW_STATE_DIR": "/s", "HOME": "/h"}
        self.assertEqual(config_path("/x.json", env), "/x.json")
        self.assertEqual(config_path(None, env), "/a/b.json")
        self.assertEqual(config_path(None, {"OPENCLAW_STATE_DIR": "/s"}), "/s/openclaw.json")
        self.assertEqual(config_path(None, {"HOME": "/h"}), "/h/.openclaw/openclaw.json")

    def test_missing_file_is_all_defaults(self) -> None:
        d = self.mktemp()
        os.mkdir(d)
        config = load_config(None, {"OPENCLAW_STATE_DIR": d})
        self.assertEqual(config.gateway.port, DEFAULT_PORT)
        self.assertEqual(config.gateway.bind_host, "127.0.0.1")
        self.assertFalse(config.chat_completions.enabled)
        self.assertEqual(config.state_dir, d)

    def test_explicit_missing_file_is_an_error(self) -> None:
        with self.assertRaises(ConfigError) as e:
            load_config(self.mktemp(), {})
        self.assertIn("does not exist", str(e.exception))

    def test_json5_comments_and_trailing_commas(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "// comment\n{gateway: {port: 1234, /* c */ http: {endpoints: "
                "{chatCompletions: {enabled: true,},},},},}\n"
            )
        config = load_config(path, {})
        self.assertEqual(config.gateway.port, 1234)
        self.assertTrue(config.chat_completions.enabled)
        self.assertEqual(config.source, path)

    def test_invalid_json5_names_the_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("{gateway: ")
        with self.assertRaises(ConfigError) as e:
            load_config(path, {})
        self.assertIn(path, str(e.exception))
        self.assertNotIn("\n", str(e.exception))


class ValueTests(SynchronousTestCase):
    def test_env_substitution_and_escape(self) -> None:
        config = parse_config(
            {"gateway": {"auth": {"token": "${TOK}", "password": "$${TOK}"}}},
            {"TOK": "s3cret"},
        )
        self.assertEqual(config.gateway.auth.token, "s3cret")
        self.assertEqual(config.gateway.auth.password, "${TOK}")

    def test_missing_variable_names_key_and_variable(self) -> None:
        with self.assertRaises(ConfigError) as e:
            parse_config({"models": {"providers": {"x": {"apiKey": "${NOPE}"}}}}, {})
        self.assertEqual(
            str(e.exception), "models.providers.x.apiKey: environment variable NOPE is not set"
        )

    def test_port_abc(self) -> None:
        with self.assertRaises(ConfigError) as e:
            parse_config({"gateway": {"port": "abc"}}, {})
        self.assertTrue(str(e.exception).startswith("gateway.port:"))

    def test_env_port_overrides(self) -> None:
        config = parse_config({"gateway": {"port": 1}}, {"OPENCLAW_GATEWAY_PORT": "2345"})
        self.assertEqual(config.gateway.port, 2345)

    def test_wrong_types_name_the_key(self) -> None:
        cases = [
            ({"gateway": {"bind": "moon"}}, "gateway.bind:"),
            ({"gateway": {"auth": {"mode": "magic"}}}, "gateway.auth.mode:"),
            (
                {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": "yes"}}}}},
                "gateway.http.endpoints.chatCompletions.enabled:",
            ),
            ({"agents": {"defaults": {"timeoutSeconds": -1}}}, "agents.defaults.timeoutSeconds:"),
            ({"agents": {"list": [{"name": "x"}]}}, "agents.list[0].id:"),
            ({"agents": {"list": {}}}, "agents.list:"),
            (
                {"models": {"providers": {"p": {"api": "openai-completions"}}}},
                "models.providers.p.baseUrl:",
            ),
            ({"gateway": []}, "gateway:"),
        ]
        for data, prefix in cases:
            with self.assertRaises(ConfigError, msg=repr(data)) as e:
                parse_config(data, {})
            self.assertTrue(str(e.exception).startswith(prefix), str(e.exception))

    def test_unserved_keys_are_ignored_and_listed(self) -> None:
        config = parse_config(
            {
                "channels": {"telegram": {"botToken": "x"}},
                "plugins": {},
                "gateway": {"controlUi": {"enabled": True}, "port": 1},
                "agents": {"list": [{"id": "Main", "tools": {}}]},
            },
            {},
        )
        self.assertEqual(
            sorted(config.ignored),
            ["agents.list[0].tools", "channels", "gateway.controlUi.enabled", "plugins"],
        )
        self.assertEqual(config.agents[0].id, "main")

    def test_keys_one_edit_from_a_known_key_are_near_misses(self) -> None:
        config = parse_config(
            {
                "gateway": {
                    "prot": 1,  # swapped letters
                    "Bind": "lan",  # case
                    "mode": "local",  # OpenClaw's, not a typo of anything served
                    "http": {"endpoints": {"chatCompletion": {"enabled": True}}},
                },
                "agent": {},  # a letter missing
                "agents": {
                    "defaults": {"models": {}},  # OpenClaw's model catalog, not "model"
                    "list": [{"id": "a", "modle": "x/y", "models": {}}],
                },
            },
            {},
        )
        self.assertEqual(
            sorted(config.near_misses),
            [
                ("agent", "agents"),
                ("agents.list[0].modle", "agents.list[0].model"),
                ("gateway.Bind", "gateway.bind"),
                ("gateway.http.endpoints.chatCompletion", "gateway.http.endpoints.chatCompletions"),
                ("gateway.prot", "gateway.port"),
            ],
        )
        self.assertIn("gateway.mode", config.ignored)
        self.assertFalse(config.chat_completions.enabled)

    def test_unsupported_provider_api_is_noted_not_fatal(self) -> None:
        config = parse_config(
            {"models": {"providers": {"g": {"api": "google-generative-ai", "baseUrl": "x"}}}}, {}
        )
        self.assertEqual(config.providers, ())
        self.assertIn("models.providers.g", config.notes[0])

    def test_auth_mode_inference_and_env_secrets(self) -> None:
        self.assertEqual(parse_config({}, {}).gateway.auth.mode, "token")
        config = parse_config({}, {"OPENCLAW_GATEWAY_PASSWORD": "pw"})
        self.assertEqual(config.gateway.auth.mode, "password")
        self.assertEqual(config.gateway.auth.secret, "pw")
        config = parse_config(
            {"gateway": {"auth": {"token": "t"}}}, {"OPENCLAW_GATEWAY_TOKEN": "e"}
        )
        self.assertEqual(config.gateway.auth.token, "t")

    def test_rate_limit_present_only_when_configured(self) -> None:
        self.assertIsNone(parse_config({}, {}).gateway.auth.rate_limit)
        limit = parse_config({"gateway": {"auth": {"rateLimit": {}}}}, {}).gateway.auth.rate_limit
        assert limit is not None
        self.assertEqual(
            (limit.max_attempts, limit.window_ms, limit.lockout_ms), (10, 60000, 300000)
        )

    def test_model_choice(self) -> None:
        config = parse_config(
            {"agents": {"defaults": {"model": {"primary": "a/b", "fallbacks": ["c/d"]}}}}, {}
        )
        assert config.agent_defaults.model is not None
        self.assertEqual(config.agent_defaults.model.refs, ("a/b", "c/d"))

    def test_normalize_agent_id(self) -> None:
        self.assertEqual(normalize_agent_id("  Beta Agent! "), "beta-agent")
        self.assertEqual(normalize_agent_id("../../etc"), "etc")
        self.assertEqual(normalize_agent_id("!!!"), "main")
        self.assertEqual(len(normalize_agent_id("x" * 100)), 64)


class BrowserKeysTests(SynchronousTestCase):
    def test_allowed_origins_and_hosts(self) -> None:
        gateway = parse_config(
            {
                "gateway": {
                    "controlUi": {"allowedOrigins": ["https://UI.example/", "*"]},
                    "allowedHosts": ["GW.example.", "[::1]"],
                }
            },
            {},
        ).gateway
        self.assertEqual(gateway.allowed_origins, ("https://ui.example", "*"))
        self.assertEqual(gateway.allowed_hosts, ("gw.example", "::1"))
        self.assertEqual(parse_config({}, {}).gateway.allowed_origins, ())

    def test_bad_values_name_the_key(self) -> None:
        for data, message in (
            ({"controlUi": {"allowedOrigins": ["ui.example"]}}, "gateway.controlUi.allowedOrigins"),
            ({"controlUi": {"allowedOrigins": "https://x"}}, "gateway.controlUi.allowedOrigins"),
            ({"allowedHosts": ["gw.example:443"]}, "gateway.allowedHosts: 'gw.example:443'"),
        ):
            with self.assertRaises(ConfigError) as e:
                parse_config({"gateway": data}, {})
            self.assertIn(message, str(e.exception))
