"""The config file: resolution, JSON5, ${VAR}, defaults, ignored keys, errors naming the key."""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.config import (
    DEFAULT_PORT,
    AgentConfig,
    AgentDefaults,
    AuthConfig,
    ChatCompletionsConfig,
    Config,
    ConfigError,
    GatewayConfig,
    LimitsConfig,
    ProviderConfig,
    ProviderModel,
    RateLimitConfig,
    config_path,
    load_config,
    normalize_agent_id,
    parse_config,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)

#: Every key the gateway reads (``list`` stands for an array entry).
KNOWN_PATHS = [
    *(f"gateway.{k}" for k in ("port", "bind", "customBindHost", "trustedProxies", "allowedHosts")),
    "gateway.controlUi.allowedOrigins",
    *(f"gateway.auth.{k}" for k in ("mode", "token", "password", "rateLimit")),
    *(
        f"gateway.auth.rateLimit.{k}"
        for k in ("maxAttempts", "windowMs", "lockoutMs", "exemptLoopback")
    ),
    *(
        f"gateway.http.endpoints.chatCompletions.{k}"
        for k in (
            "enabled",
            "maxBodyBytes",
            "maxImageParts",
            "maxTotalImageBytes",
            "heartbeatSeconds",
            "images",
        )
    ),
    *(
        f"gateway.http.endpoints.chatCompletions.images.{k}"
        for k in ("allowUrl", "allowedMimes", "maxBytes")
    ),
    *(
        f"gateway.limits.{k}"
        for k in (
            "maxRunsPerConnection",
            "maxRunsPerClient",
            "maxUpstreamConnections",
            "maxUpstreamWaiting",
            "upstreamWaitMs",
            "listenBacklog",
        )
    ),
    *(f"agents.defaults.{k}" for k in ("model", "workspace", "timeoutSeconds", "historyLimit")),
    "agents.defaults.model.primary",
    "agents.defaults.model.fallbacks",
    *(f"agents.list.{k}" for k in ("id", "default", "name", "model", "workspace")),
    "agents.list",
    "models.providers",
    "models.providers.p",
    *(f"models.providers.p.{k}" for k in ("api", "baseUrl", "apiKey", "headers", "models")),
    "session.persistEphemeral",
    "gateway",
    "agents",
    "models",
]


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
                "agents": {"list": [{"id": "Main", "tools": {"byProvider": {}}, "sandbox": {}}]},
            },
            {},
        )
        self.assertEqual(
            sorted(config.ignored),
            [
                "agents.list[0].sandbox",
                "agents.list[0].tools.byProvider",
                "channels",
                "gateway.controlUi.enabled",
                "plugins",
            ],
        )
        self.assertEqual(config.agents[0].id, "main")
        # The agent's ``tools`` is read (by the tools package), its unknown keys reported.
        self.assertIn("main", config.tools.agents)

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
            (
                {"allowedHosts": ["gw.example:443"]},
                'gateway.allowedHosts: "gw.example:443" is not a host name',
            ),
        ):
            with self.assertRaises(ConfigError) as e:
                parse_config({"gateway": data}, {})
            self.assertIn(message, str(e.exception))


class SelfValidatingTests(SynchronousTestCase):
    """The classes judge their own fields: built in code, evolved, or read from the file."""

    def test_the_constructor_refuses_naming_the_key(self) -> None:
        cases: list[tuple[Callable[[], object], str]] = [
            (
                lambda: RateLimitConfig(max_attempts="ten"),  # type: ignore[arg-type]
                'gateway.auth.rateLimit.maxAttempts: expected an integer ≥ 1, got "ten"',
            ),
            (
                lambda: GatewayConfig(port=70000),
                "gateway.port: expected a port number from 0 to 65535, got 70000",
            ),
            (
                lambda: GatewayConfig(bind="custom"),
                'gateway.customBindHost: required when gateway.bind is "custom"',
            ),
            (
                lambda: LimitsConfig(max_runs_per_client=True),
                "gateway.limits.maxRunsPerClient: expected an integer ≥ 1, got true",
            ),
            (
                lambda: GatewayConfig(allowed_hosts=("gw.example:443",)),
                'gateway.allowedHosts: "gw.example:443" is not a host name',
            ),
            (
                lambda: ProviderConfig("p", "openai-completions"),
                'models.providers.p.baseUrl: required for api "openai-completions"',
            ),
            (
                lambda: ProviderConfig("p", "echo", headers=(("a", 5),)),  # type: ignore[arg-type]
                'models.providers.p.headers: expected an object of strings, got {"a": 5}',
            ),
            (
                lambda: Config(agents=(AgentConfig("Main"), AgentConfig("main"))),
                'agents.list[1].id: duplicate agent id "main"',
            ),
            (
                lambda: ChatCompletionsConfig(heartbeat_seconds=float("inf")),
                "gateway.http.endpoints.chatCompletions.heartbeatSeconds: "
                "expected a number ≥ 0, got Infinity",
            ),
        ]
        for build, message in cases:
            with self.assertRaises(ConfigError, msg=message) as e:
                build()
            self.assertTrue(str(e.exception).startswith(message), str(e.exception))

    def test_evolve_refuses_too(self) -> None:
        config = parse_config({}, {})
        with self.assertRaises(ConfigError) as e:
            attrs.evolve(config.gateway, port=-1)
        self.assertTrue(str(e.exception).startswith("gateway.port: "), str(e.exception))
        with self.assertRaises(ConfigError) as e:
            attrs.evolve(config.gateway.auth, mode="password")
        self.assertTrue(str(e.exception).startswith("gateway.auth.password: "))
        with self.assertRaises(ConfigError) as e:
            attrs.evolve(config.gateway.limits, listen_backlog=0)
        self.assertTrue(str(e.exception).startswith("gateway.limits.listenBacklog: "))
        # Values are put in the form the gateway compares them in, however they arrive.
        gateway = attrs.evolve(config.gateway, allowed_origins=("https://UI.example/",))
        self.assertEqual(gateway.allowed_origins, ("https://ui.example",))
        self.assertEqual(AgentConfig(" Beta Agent ").id, "beta-agent")

    def test_one_default_per_field(self) -> None:
        """What an empty file gives is what the classes give: the defaults live once."""
        config = parse_config(
            {"gateway": {"auth": {"rateLimit": {}}}, "agents": {"defaults": {}}}, {}
        )
        self.assertEqual(
            config.gateway, GatewayConfig(auth=AuthConfig(rate_limit=RateLimitConfig()))
        )
        self.assertEqual(config.agent_defaults, AgentDefaults())
        read = parse_config(
            {"models": {"providers": {"p": {"baseUrl": "http://h/", "models": [{"id": "m"}]}}}}, {}
        )
        self.assertEqual(
            read.providers,
            (ProviderConfig("p", base_url="http://h", models=(ProviderModel("m"),)),),
        )

    def test_numbers_as_json_has_them(self) -> None:
        config = parse_config(
            {
                "gateway": {"limits": {"listenBacklog": 100.0}},
                "agents": {"defaults": {"timeoutSeconds": 30}},
            },
            {},
        )
        self.assertEqual(config.gateway.limits.listen_backlog, 100)
        self.assertIsInstance(config.gateway.limits.listen_backlog, int)
        self.assertIsInstance(config.agent_defaults.timeout_seconds, float)
        with self.assertRaises(ConfigError) as e:
            parse_config({"agents": {"defaults": {"historyLimit": 2.5}}}, {})
        self.assertEqual(
            str(e.exception), "agents.defaults.historyLimit: expected an integer ≥ 0, got 2.5"
        )


SECRETS = ("tok-SECRET-1", "pw-SECRET-2", "sk-SECRET-3", "Bearer SECRET-4", "SECRET-5")


class SecretReprTests(SynchronousTestCase):
    def test_no_secret_in_repr_or_str(self) -> None:
        config = parse_config(
            {
                "gateway": {"auth": {"mode": "token", "token": "${TOK}", "password": SECRETS[1]}},
                "models": {
                    "providers": {
                        "p": {
                            "baseUrl": "http://127.0.0.1:1/v1",
                            "apiKey": SECRETS[2],
                            "headers": {
                                "Authorization": SECRETS[3],
                                "x-api-key": SECRETS[4],
                                "X-Title": "visible",
                            },
                        }
                    }
                },
            },
            {"TOK": SECRETS[0], "ANTHROPIC_API_KEY": "sk-ant-SECRET-6"},
        )
        self.assertEqual(config.gateway.auth.token, SECRETS[0])
        self.assertEqual(config.providers[0].headers[0], ("Authorization", SECRETS[3]))
        for text in (repr(config), str(config), repr(config.gateway.auth), str(config.providers)):
            for secret in (*SECRETS, "SECRET"):
                self.assertNotIn(secret, text)
        # What is set still shows as set, and the rest as it is.
        self.assertIn("token='***'", repr(config))
        self.assertIn("('X-Title', 'visible')", repr(config))
        self.assertIn("password=None", repr(AuthConfig()))


class NeverATracebackTests(SynchronousTestCase):
    """Whatever JSON sits at a key the gateway reads, the answer is a Config or a ConfigError."""

    @settings(max_examples=200, deadline=None)
    @given(data=st.data())
    def test_any_value_anywhere(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(KNOWN_PATHS))
        value = data.draw(JSON)
        document: dict[str, object] = {}
        here = document
        *parents, last = path.split(".")
        for part in parents:
            child: dict[str, object] = {}
            here[part] = [child] if part == "list" else child
            here = child
        here[last] = value
        try:
            config = parse_config(document, {})
        except ConfigError as e:
            self.assertNotIn("\n", str(e))
            self.assertNotIn("Traceback", str(e))
        else:
            repr(config)
