"""The OpenClaw config file (JSON5) turned into typed attrs values that validate themselves."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, cast

import attrs
import json5
from attrs import AttrsInstance
from attrs.validators import deep_iterable, instance_of, optional

# In a module of their own: the tools package's parser (below) raises and uses them too.
from ._configbase import ConfigError as ConfigError
from ._configbase import normalize_agent_id as normalize_agent_id
from .tools.policy import ToolsConfig

DEFAULT_PORT = 18789
MiB = 1024 * 1024

AuthMode = Literal["none", "token", "password"]
BindMode = Literal["loopback", "lan", "custom"]
MetricsAuth = Literal["token", "none"]
ProviderApi = Literal["openai-completions", "anthropic-messages", "echo"]
SUPPORTED_APIS: tuple[str, ...] = ("openai-completions", "anthropic-messages", "echo")
DEFAULT_IMAGE_MIMES = ("image/jpeg", "image/png", "image/gif", "image/webp")
WORKSPACE_FILES = ("AGENTS.md", "SOUL.md", "IDENTITY.md", "USER.md", "TOOLS.md")


# ---------------------------------------------------------------------------------------
# Validators: each config class checks its own fields, so ``Config(...)``, ``attrs.evolve``
# and ``parse_config`` refuse the same values with the same message.  Every class says where
# it lives in the file (``KEY_PATH``) and every field's key is its name in camelCase unless
# ``metadata["key"]`` says otherwise (a dotted path below the class, or None: not in the file).


def _key(field: attrs.Attribute[Any]) -> str | None:
    """The field's key in the config file, relative to its class's ``KEY_PATH``."""
    if "key" in field.metadata:
        return cast("str | None", field.metadata["key"])
    head, *rest = field.name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


class _Invalid(ConfigError):
    """A value a config class refuses; ``key`` is relative to where the class lives."""

    def __init__(self, owner: object, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        where = cast(str, getattr(owner, "KEY_PATH", "")).format(self=owner)
        super().__init__(f"{where}.{key}: {problem}" if where else f"{key}: {problem}")


@attrs.frozen
class _Rule:
    """An attrs validator: ``problem(value)`` says what is wrong with a value, or None."""

    problem: Callable[[Any], str | None]

    def __call__(self, owner: object, field: attrs.Attribute[Any], value: object) -> None:
        problem = self.problem(value)
        if problem is not None:
            raise _Invalid(owner, _key(field) or field.name, problem)


def _shown(value: object) -> str:
    """A value as the config file spells it (JSON5), cut short."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("-" if value < 0 else "") + "Infinity"
        if value.is_integer():  # JSON has one kind of number: -1, not -1.0
            return str(int(value))
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(lo: int = 0, hi: int | None = None, what: str = "an integer") -> _Rule:
    bound = f"from {lo} to {hi}" if hi is not None else f"≥ {lo}"

    def problem(value: object) -> str | None:
        if _is_int(value) and lo <= cast(int, value) and (hi is None or cast(int, value) <= hi):
            return None
        return f"expected {what} {bound}, got {_shown(value)}"

    return _Rule(problem)


def _number(lo: float = 0.0) -> _Rule:
    def problem(value: object) -> str | None:
        number = _is_int(value) or isinstance(value, float)
        if number and math.isfinite(cast(float, value)) and cast(float, value) >= lo:
            return None
        return f"expected a number ≥ {lo:g}, got {_shown(value)}"

    return _Rule(problem)


def _flag_problem(value: object) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {_shown(value)}"


_FLAG = _Rule(_flag_problem)
_PORT = _integer(0, 65535, "a port number")


def _text(what: str = "a string", *, blank: bool = True) -> _Rule:
    def problem(value: object) -> str | None:
        if isinstance(value, str) and (blank or value.strip()):
            return None
        return f"expected {what}, got {_shown(value)}"

    return _Rule(problem)


def _one_of(*choices: str) -> _Rule:
    spelled = [json.dumps(c) for c in choices]
    alternatives = ", ".join(spelled[:-1]) + " or " + spelled[-1]

    def problem(value: object) -> str | None:
        return None if value in choices else f"expected {alternatives}, got {_shown(value)}"

    return _Rule(problem)


def _strings(each: Callable[[str], str | None] | None = None) -> _Rule:
    """An array of strings; ``each`` may refuse one of them."""

    def problem(value: object) -> str | None:
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            return f"expected an array of strings, got {_shown(value)}"
        return next((p for v in value if each and (p := each(v))), None)

    return _Rule(problem)


def _headers_problem(value: object) -> str | None:
    pairs = isinstance(value, tuple) and all(
        isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value
    )
    if pairs and all(isinstance(v, str) for _, v in cast(tuple[tuple[str, object], ...], value)):
        return None
    shown = dict(cast(tuple[tuple[str, object], ...], value)) if pairs else value
    return f"expected an object of strings, got {_shown(shown)}"


def _origin_problem(origin: str) -> str | None:
    if origin in ("*", "null") or re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s@]+", origin):
        return None
    return f"{_shown(origin)} is not an origin (write it as scheme://host[:port])"


def _host_problem(host: str) -> str | None:
    if host == "*" or re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", host) or _is_ipv6(host):
        return None
    return f"{_shown(host)} is not a host name (no scheme, path or port)"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# Converters put values in the form the gateway compares them in.  A value from a file may be
# anything: what is not of the expected shape passes through for the validator to name.


def _is(value: object, kind: type) -> bool:
    return isinstance(value, kind)


def _each(values: tuple[str, ...], fix: Callable[[str], str]) -> tuple[str, ...]:
    if not _is(values, tuple):
        return values
    return tuple(fix(v) if _is(v, str) else v for v in values)


def _origins(values: tuple[str, ...]) -> tuple[str, ...]:
    """Trimmed, lower-cased, no trailing ``/``."""
    return _each(values, lambda o: o.strip().lower().rstrip("/"))


def _host(host: str) -> str:
    h = host.strip().lower().rstrip(".")
    return h[1:-1] if h.startswith("[") and h.endswith("]") else h


def _hosts(values: tuple[str, ...]) -> tuple[str, ...]:
    """Trimmed, lower-cased, no trailing dot, IPv6 without brackets."""
    return _each(values, _host)


def _mimes(values: tuple[str, ...]) -> tuple[str, ...]:
    """Lower-cased; an empty list means the default ones."""
    fixed = _each(values, str.lower)
    return DEFAULT_IMAGE_MIMES if fixed == () else fixed


def _base_url(value: str) -> str:
    return value.rstrip("/") if _is(value, str) else value


def _agent_id(value: str) -> str:
    return normalize_agent_id(value) if _is(value, str) and value.strip() else value


def _zero_is_unset(value: int | None) -> int | None:
    return None if _is_int(value) and value == 0 else value


# Secrets never show in ``repr``/``str``: whether one is set does.


def _secret_repr(value: object) -> str:
    return "None" if value is None else "'***'"


_CREDENTIAL_HEADER = re.compile(r"auth|key|token|secret|passw|cookie|signature", re.IGNORECASE)


def _headers_repr(headers: tuple[tuple[str, str], ...]) -> str:
    return repr(tuple((k, "***" if _CREDENTIAL_HEADER.search(k) else v) for k, v in headers))


# ---------------------------------------------------------------------------------------
# The values


@attrs.frozen
class RateLimitConfig:
    """``gateway.auth.rateLimit``: failed auth attempts allowed per client before a lockout."""

    KEY_PATH: ClassVar[str] = "gateway.auth.rateLimit"

    max_attempts: int = attrs.field(default=10, validator=_integer(1))
    window_ms: int = attrs.field(default=60_000, validator=_integer(1))
    lockout_ms: int = attrs.field(default=300_000, validator=_integer(0))
    exempt_loopback: bool = attrs.field(default=True, validator=_FLAG)


@attrs.frozen
class AuthConfig:
    """``gateway.auth``: what a client must present."""

    KEY_PATH: ClassVar[str] = "gateway.auth"

    mode: AuthMode = attrs.field(default="token", validator=_one_of("none", "token", "password"))
    token: str | None = attrs.field(default=None, validator=optional(_text()), repr=_secret_repr)
    password: str | None = attrs.field(default=None, validator=optional(_text()), repr=_secret_repr)
    rate_limit: RateLimitConfig | None = attrs.field(
        default=None, validator=optional(instance_of(RateLimitConfig))
    )

    @password.validator
    def _password_needed(self, field: attrs.Attribute[str | None], value: str | None) -> None:
        if self.mode == "password" and not value:
            raise _Invalid(
                self,
                "password",
                "password mode needs a password (set it here or in OPENCLAW_GATEWAY_PASSWORD)",
            )

    @property
    def secret(self) -> str | None:
        """The credential a client must present in the current mode."""
        if self.mode == "password":
            return self.password
        if self.mode == "token":
            return self.token
        return None


@attrs.frozen
class ImagesConfig:
    """``gateway.http.endpoints.chatCompletions.images``: image parts in chat messages."""

    KEY_PATH: ClassVar[str] = "gateway.http.endpoints.chatCompletions.images"

    allow_url: bool = attrs.field(default=False, validator=_FLAG)
    allowed_mimes: tuple[str, ...] = attrs.field(
        default=DEFAULT_IMAGE_MIMES, converter=_mimes, validator=_strings()
    )
    max_bytes: int = attrs.field(default=10 * MiB, validator=_integer(1))


@attrs.frozen
class ChatCompletionsConfig:
    """``gateway.http.endpoints.chatCompletions``: the OpenAI-compatible endpoint."""

    KEY_PATH: ClassVar[str] = "gateway.http.endpoints.chatCompletions"

    enabled: bool = attrs.field(default=False, validator=_FLAG)
    max_body_bytes: int = attrs.field(default=20 * MiB, validator=_integer(1))
    max_image_parts: int = attrs.field(default=8, validator=_integer(0))
    max_total_image_bytes: int = attrs.field(default=20 * MiB, validator=_integer(0))
    heartbeat_seconds: float = attrs.field(default=15.0, validator=_number(0))
    images: ImagesConfig = attrs.field(default=ImagesConfig(), validator=instance_of(ImagesConfig))


@attrs.frozen
class ResponsesConfig:
    """``gateway.http.endpoints.responses``: ``POST /v1/responses`` (images as chat completions)."""

    KEY_PATH: ClassVar[str] = "gateway.http.endpoints.responses"

    enabled: bool = attrs.field(default=False, validator=_FLAG)
    max_body_bytes: int = attrs.field(default=20 * MiB, validator=_integer(1))
    heartbeat_seconds: float = attrs.field(default=15.0, validator=_number(0))


@attrs.frozen
class LimitsConfig:
    """``gateway.limits``: what one client, and all of them together, may make the gateway do."""

    KEY_PATH: ClassVar[str] = "gateway.limits"

    #: Runs one WebSocket connection may have in flight.
    max_runs_per_connection: int = attrs.field(default=16, validator=_integer(1))
    #: Runs one client address may have in flight, over all its connections and HTTP requests.
    max_runs_per_client: int = attrs.field(default=128, validator=_integer(1))
    #: Model provider requests in flight at once, gateway-wide (each holds a connection).
    max_upstream_connections: int = attrs.field(default=512, validator=_integer(1))
    #: Runs that may wait for one of those; past it a run is refused at once.
    max_upstream_waiting: int = attrs.field(default=1024, validator=_integer(0))
    #: How long a run may wait for a provider connection before it fails.
    upstream_wait_ms: int = attrs.field(default=30_000, validator=_integer(1))
    #: The listening socket's accept queue (the kernel caps it at net.core.somaxconn).
    listen_backlog: int = attrs.field(default=1024, validator=_integer(1, 65535))


@attrs.frozen
class MetricsConfig:
    """``gateway.metrics``: ``GET /metrics`` in the Prometheus text format."""

    KEY_PATH: ClassVar[str] = "gateway.metrics"

    enabled: bool = attrs.field(default=False, validator=_FLAG)
    #: ``token``: the gateway's credential as a bearer, as on ``/v1/*``; ``none``: open
    #: (a scraper on loopback, or behind a proxy that guards the path).
    auth: MetricsAuth = attrs.field(default="token", validator=_one_of("token", "none"))


@attrs.frozen
class GatewayConfig:
    """``gateway``: where it listens, who may connect, what it serves."""

    KEY_PATH: ClassVar[str] = "gateway"

    port: int = attrs.field(default=DEFAULT_PORT, validator=_PORT)
    bind: BindMode = attrs.field(default="loopback", validator=_one_of("loopback", "lan", "custom"))
    custom_bind_host: str | None = attrs.field(default=None, validator=optional(_text()))
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), validator=_strings())
    auth: AuthConfig = attrs.field(default=AuthConfig(), validator=instance_of(AuthConfig))
    chat_completions: ChatCompletionsConfig = attrs.field(
        default=ChatCompletionsConfig(),
        validator=instance_of(ChatCompletionsConfig),
        metadata={"key": "http.endpoints.chatCompletions"},
    )
    #: ``gateway.controlUi.allowedOrigins``: browser origins allowed to open a WebSocket
    #: besides the gateway's own (``*`` = any).
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(),
        converter=_origins,
        validator=_strings(_origin_problem),
        metadata={"key": "controlUi.allowedOrigins"},
    )
    #: ``gateway.allowedHosts``: ``Host`` names served on a loopback connection besides
    #: ``localhost`` and loopback addresses (``*`` = any).
    allowed_hosts: tuple[str, ...] = attrs.field(
        default=(), converter=_hosts, validator=_strings(_host_problem)
    )
    limits: LimitsConfig = attrs.field(default=LimitsConfig(), validator=instance_of(LimitsConfig))
    metrics: MetricsConfig = attrs.field(
        default=MetricsConfig(), validator=instance_of(MetricsConfig)
    )
    responses: ResponsesConfig = attrs.field(
        default=ResponsesConfig(),
        validator=instance_of(ResponsesConfig),
        metadata={"key": "http.endpoints.responses"},
    )

    @custom_bind_host.validator
    def _custom_host_needed(self, field: attrs.Attribute[str | None], value: str | None) -> None:
        if self.bind == "custom" and not value:
            raise _Invalid(self, "customBindHost", 'required when gateway.bind is "custom"')

    @property
    def bind_host(self) -> str:
        if self.bind == "lan":
            return "0.0.0.0"
        if self.bind == "custom" and self.custom_bind_host:
            return self.custom_bind_host
        return "127.0.0.1"


@attrs.frozen
class ModelChoice:
    """A primary model ref (``provider/model``) and the fallbacks tried in order."""

    KEY_PATH: ClassVar[str] = "agents.*.model"

    primary: str = attrs.field(
        validator=_text('a model ref like "provider/model"', blank=False),
        metadata={"missing": 'a model ref like "provider/model" is required'},
    )
    fallbacks: tuple[str, ...] = attrs.field(default=(), validator=_strings())

    @property
    def refs(self) -> tuple[str, ...]:
        return (self.primary, *self.fallbacks)


@attrs.frozen
class AgentDefaults:
    """``agents.defaults``: what every agent uses unless its entry says otherwise."""

    KEY_PATH: ClassVar[str] = "agents.defaults"

    model: ModelChoice | None = attrs.field(
        default=None, validator=optional(instance_of(ModelChoice))
    )
    workspace: str | None = attrs.field(default=None, validator=optional(_text()))
    timeout_seconds: float = attrs.field(default=600.0, validator=_number(0))
    history_limit: int = attrs.field(default=50, validator=_integer(0))
    #: How many times one run may have the agent's own tools run before it must answer.
    max_tool_rounds: int = attrs.field(default=8, validator=_integer(1, 100))


@attrs.frozen
class AgentConfig:
    """One ``agents.list`` entry; ``None`` fields fall back to ``agents.defaults``."""

    KEY_PATH: ClassVar[str] = "agents.list[]"

    #: Normalised by OpenClaw's rule (:func:`normalize_agent_id`).
    id: str = attrs.field(
        converter=_agent_id,
        validator=_text("a non-empty string", blank=False),
        metadata={"missing": "every agent needs an id"},
    )
    default: bool = attrs.field(default=False, validator=_FLAG)
    name: str | None = attrs.field(default=None, validator=optional(_text()))
    model: ModelChoice | None = attrs.field(
        default=None, validator=optional(instance_of(ModelChoice))
    )
    workspace: str | None = attrs.field(default=None, validator=optional(_text()))


@attrs.frozen
class ProviderModel:
    """One ``models.providers.<name>.models`` entry."""

    KEY_PATH: ClassVar[str] = "models.providers.*.models[]"

    id: str = attrs.field(
        validator=_text("a non-empty string", blank=False),
        metadata={"missing": "every model needs an id"},
    )
    name: str | None = attrs.field(default=None, validator=optional(_text()))
    #: 0 in the file means not set.
    context_window: int | None = attrs.field(
        default=None, converter=_zero_is_unset, validator=optional(_integer(0))
    )
    max_tokens: int | None = attrs.field(
        default=None, converter=_zero_is_unset, validator=optional(_integer(0))
    )


@attrs.frozen
class ProviderConfig:
    """One ``models.providers`` entry, named by its key."""

    KEY_PATH: ClassVar[str] = "models.providers.{self.name}"

    name: str = attrs.field(
        validator=_text("a non-empty string", blank=False), metadata={"key": None}
    )
    api: ProviderApi = attrs.field(default="openai-completions", validator=_one_of(*SUPPORTED_APIS))
    #: Without its trailing ``/``; required except for ``echo``.
    base_url: str = attrs.field(default="", converter=_base_url, validator=_text())
    api_key: str | None = attrs.field(default=None, validator=optional(_text()), repr=_secret_repr)
    #: Sent with every request; values of credential-looking names are masked in ``repr``.
    headers: tuple[tuple[str, str], ...] = attrs.field(
        default=(), validator=_Rule(_headers_problem), repr=_headers_repr
    )
    models: tuple[ProviderModel, ...] = attrs.field(
        default=(), validator=deep_iterable(instance_of(ProviderModel), instance_of(tuple))
    )

    @base_url.validator
    def _base_url_needed(self, field: attrs.Attribute[str], value: str) -> None:
        if self.api != "echo" and not value:
            raise _Invalid(self, "baseUrl", f"required for api {json.dumps(self.api)}")


def _redis_url_problem(value: object) -> str | None:
    if value is None:
        return None
    ok = isinstance(value, str) and re.fullmatch(r"redis://[^/?#\s]+(/\d*)?", value.strip())
    return None if ok else f"expected a URL like redis://host:6379/0, got {_shown(value)}"


@attrs.frozen
class RedisConfig:
    """``session.redis``: the Redis every gateway of one service shares (``session.store``)."""

    KEY_PATH: ClassVar[str] = "session.redis"

    #: ``redis://[:password@]host[:port][/db]``; else ``OPENCLAW_REDIS_URL``.
    url: str | None = attrs.field(
        default=None, validator=_Rule(_redis_url_problem), repr=lambda u: "***" if u else "None"
    )
    #: How long a session stays locked after the gateway running its turn dies.
    lease_seconds: float = attrs.field(default=30.0, validator=_number(0.1))


def _unique_ids(
    owner: Config, field: attrs.Attribute[Any], agents: tuple[AgentConfig, ...]
) -> None:
    seen: set[str] = set()
    for i, agent in enumerate(agents):
        if agent.id in seen:
            raise _Invalid(
                owner, f"agents.list[{i}].id", f"duplicate agent id {json.dumps(agent.id)}"
            )
        seen.add(agent.id)


@attrs.frozen
class Config:
    """Everything the gateway reads from ``openclaw.json``, with OpenClaw's defaults."""

    KEY_PATH: ClassVar[str] = ""

    state_dir: str = attrs.field(
        factory=lambda: str(Path.home() / ".openclaw"), validator=_text(), metadata={"key": None}
    )
    gateway: GatewayConfig = attrs.field(
        default=GatewayConfig(), validator=instance_of(GatewayConfig)
    )
    agent_defaults: AgentDefaults = attrs.field(
        default=AgentDefaults(),
        validator=instance_of(AgentDefaults),
        metadata={"key": "agents.defaults"},
    )
    agents: tuple[AgentConfig, ...] = attrs.field(
        default=(),
        validator=[deep_iterable(instance_of(AgentConfig), instance_of(tuple)), _unique_ids],
        metadata={"key": "agents.list"},
    )
    providers: tuple[ProviderConfig, ...] = attrs.field(
        default=(),
        validator=deep_iterable(instance_of(ProviderConfig), instance_of(tuple)),
        metadata={"key": "models.providers"},
    )
    persist_ephemeral: bool = attrs.field(
        default=False, validator=_FLAG, metadata={"key": "session.persistEphemeral"}
    )
    #: ``tools`` and every ``agents.list[].tools``, read by the tools package's own parser.
    tools: ToolsConfig = attrs.field(
        factory=ToolsConfig, validator=instance_of(ToolsConfig), metadata={"key": None}
    )
    #: Where sessions live: ``file`` (the state dir) or ``redis`` (shared by many gateways).
    session_store: Literal["file", "redis"] = attrs.field(
        default="file", validator=_one_of("file", "redis"), metadata={"key": "session.store"}
    )
    redis: RedisConfig = attrs.field(
        default=RedisConfig(), validator=instance_of(RedisConfig), metadata={"key": "session.redis"}
    )
    source: str | None = attrs.field(default=None, metadata={"key": None})
    ignored: tuple[str, ...] = attrs.field(default=(), metadata={"key": None})
    notes: tuple[str, ...] = attrs.field(default=(), metadata={"key": None})
    #: Ignored keys one edit away from a key read at the same place: (ignored, known).
    near_misses: tuple[tuple[str, str], ...] = attrs.field(default=(), metadata={"key": None})

    @session_store.validator
    def _redis_url_needed(self, field: attrs.Attribute[str], value: str) -> None:
        if value == "redis" and not self.redis.url:
            raise _Invalid(
                self,
                "session.redis.url",
                'session.store "redis" needs a Redis URL: set session.redis.url '
                "(redis://host:6379/0) or OPENCLAW_REDIS_URL",
            )

    @property
    def chat_completions(self) -> ChatCompletionsConfig:
        return self.gateway.chat_completions

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)


for _cls in (
    RateLimitConfig,
    AuthConfig,
    ImagesConfig,
    ChatCompletionsConfig,
    LimitsConfig,
    GatewayConfig,
    ModelChoice,
    AgentDefaults,
    AgentConfig,
    ProviderModel,
    ProviderConfig,
    RedisConfig,
    Config,
):
    attrs.resolve_types(_cls)


# ---------------------------------------------------------------------------------------
# Finding and reading the file


def state_dir(environ: Mapping[str, str]) -> str:
    """``OPENCLAW_STATE_DIR``, else ``~/.openclaw``."""
    explicit = environ.get("OPENCLAW_STATE_DIR", "").strip()
    if explicit:
        return os.path.expanduser(explicit)
    home = environ.get("HOME") or str(Path.home())
    return os.path.join(home, ".openclaw")


def config_path(explicit: str | None, environ: Mapping[str, str]) -> str:
    """``--config`` > ``OPENCLAW_CONFIG_PATH`` > ``<stateDir>/openclaw.json``."""
    if explicit:
        return os.path.expanduser(explicit)
    from_env = environ.get("OPENCLAW_CONFIG_PATH", "").strip()
    if from_env:
        return os.path.expanduser(from_env)
    return os.path.join(state_dir(environ), "openclaw.json")


_VAR = re.compile(r"\$?\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` in every string value; ``$${VAR}`` stays literal ``${VAR}``."""
    if isinstance(value, str):

        def one(m: re.Match[str]) -> str:
            if m.group(0).startswith("$$"):
                return m.group(0)[1:]
            name = m.group(1)
            if name not in environ:
                raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")
            return environ[name]

        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {
            k: substitute(v, environ, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [substitute(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Find, read and validate the config; a missing file means all defaults."""
    env = os.environ if environ is None else environ
    where = config_path(path, env)
    try:
        with open(where, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if path:
            raise ConfigError(f"config file {where} does not exist") from None
        return parse_config({}, env, source=None)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {where} cannot be read: {e}") from None
    try:
        data = json5.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ConfigError(f"config file {where} is not valid JSON5: {e}") from None
    return parse_config(data, env, source=where)


# ---------------------------------------------------------------------------------------
# Reading: the file's objects walked key by key; the classes above judge the values.


class _Keys:
    """Reads known keys of one object and remembers the unknown ones as ignored."""

    def __init__(self, value: Any, path: str, ignored: list[str]) -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected an object, got {_kind(value)}")
        self.value: dict[str, Any] = value
        self.path = path
        self.ignored = ignored
        self.seen: set[str] = set()

    def __enter__(self) -> _Keys:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            unknown = [k for k in self.value if k not in self.seen]
            self.ignored.extend(self.at(k) for k in unknown)
            if isinstance(self.ignored, _Ignored):
                for k in unknown:
                    known = _one_edit_from(k, self.seen)
                    if known is not None and _generic(self.at(k)) not in NOT_TYPOS:
                        self.ignored.near.append((self.at(k), self.at(known)))

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.value.get(key)

    def obj(self, key: str) -> _Keys:
        return _Keys(self.get(key), self.at(key), self.ignored)


class _Ignored(list[str]):
    """The ignored key paths, and those that look like a typo of a known key."""

    def __init__(self) -> None:
        super().__init__()
        self.near: list[tuple[str, str]] = []


#: Real OpenClaw keys this gateway does not serve that are one edit away from one it does.
NOT_TYPOS = frozenset({"agents.defaults.models", "agents.list[].models"})


def _generic(path: str) -> str:
    return re.sub(r"\[\d+\]", "[]", path)


def _one_edit_from(key: str, known: set[str]) -> str | None:
    """The known key ``key`` is one edit (or a change of case) away from, if any."""
    for k in sorted(known):
        # One edit in a two- or three-letter key is another word, not a typo.
        if len(k) >= 4 and _within_one_edit(key.lower(), k.lower()):
            return k
    return None


def _within_one_edit(a: str, b: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbours turns ``a`` into ``b``."""
    if abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1 :] == b[i + 1 :] or (
            a[i : i + 2] == b[i : i + 2][::-1] and a[i + 2 :] == b[i + 2 :]
        )
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1 :] == shorter[i:]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), "an array" if isinstance(value, list) else "an object"
    )


C = TypeVar("C", bound=AttrsInstance)
_Shape = Literal["one", "maybe", "many", "value"]


def _shape(hint: object) -> tuple[_Shape, type[AttrsInstance] | None]:
    """Whether a field holds a config class, an optional one, a tuple of them, or a value."""

    def config_class(t: object) -> type[AttrsInstance] | None:
        return t if isinstance(t, type) and attrs.has(t) else None

    if (one := config_class(hint)) is not None:
        return "one", one
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and (maybe := config_class(rest[0])) is not None:
            return "maybe", maybe
    homogeneous = origin is tuple and len(args) == 2 and args[1] is Ellipsis
    if homogeneous and (many := config_class(args[0])) is not None:
        return "many", many
    return "value", None


def _from_json(value: Any, hint: object) -> object:
    """A JSON value in the field's Python form: arrays as tuples, objects as (key, value)
    pairs, whole numbers as ``int`` where one is wanted, integers as ``float`` likewise."""
    options = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,)
    tuples = [o for o in options if typing.get_origin(o) is tuple]
    if isinstance(value, list) and tuples:
        return tuple(value)
    if isinstance(value, dict) and any(
        typing.get_origin(typing.get_args(t)[0]) is tuple for t in tuples
    ):
        return tuple(value.items())
    if isinstance(value, float) and int in options and value.is_integer():
        return int(value)
    if _is_int(value) and float in options and int not in options:
        return float(value)
    return value


def _gather(cls: type[C], k: _Keys, given: Mapping[str, object]) -> dict[str, object]:
    """The constructor arguments for ``cls`` from the object ``k``: each field from its key
    (config classes read in turn), absent keys left to the class's default, ``given`` as is."""
    kwargs = dict(given)
    with ExitStack() as stack:
        parents: dict[str, _Keys] = {}
        for field in attrs.fields(cls):
            key = _key(field)
            if key is None or field.name in given:
                continue
            *path, last = key.split(".")
            here = k
            for i, part in enumerate(path):
                prefix = ".".join(path[: i + 1])
                if prefix not in parents:
                    parents[prefix] = stack.enter_context(here.obj(part))
                here = parents[prefix]
            raw = here.get(last)
            shape, inner = _shape(field.type)
            if inner is not None and (shape == "one" or (shape == "maybe" and raw is not None)):
                if inner is ModelChoice and isinstance(raw, str):
                    kwargs[field.name] = _model_ref(raw, here.at(last))
                else:
                    kwargs[field.name] = _read(inner, here.obj(last))
            elif inner is not None and shape == "many" and raw is not None:
                if not isinstance(raw, list):
                    raise ConfigError(f"{here.at(last)}: expected an array, got {_kind(raw)}")
                kwargs[field.name] = tuple(
                    _read(inner, _Keys(entry, f"{here.at(last)}[{i}]", here.ignored))
                    for i, entry in enumerate(raw)
                )
            elif raw is not None:
                kwargs[field.name] = _from_json(raw, field.type)
            elif field.default is attrs.NOTHING:
                raise ConfigError(f"{here.at(last)}: {field.metadata.get('missing', 'required')}")
    return kwargs


def _build(cls: type[C], path: str, kwargs: Mapping[str, object]) -> C:
    """``cls(**kwargs)``, its refusal re-worded to name the key where it actually is."""
    try:
        return cast(Callable[..., C], cls)(**kwargs)
    except _Invalid as e:
        raise ConfigError(f"{path}.{e.key}: {e.problem}" if path else str(e)) from None


def _read(cls: type[C], k: _Keys) -> C:
    with k:
        kwargs = _gather(cls, k, {})
    return _build(cls, k.path, kwargs)


def _model_ref(ref: str, path: str) -> ModelChoice:
    """The short form of a model choice: just the primary ref."""
    try:
        return ModelChoice(ref)
    except _Invalid as e:
        raise ConfigError(f"{path}: {e.problem}") from None


def parse_config(data: Any, environ: Mapping[str, str], source: str | None = None) -> Config:
    """Validate the parsed JSON5 document; unknown keys are collected, not fatal."""
    data = substitute(data, environ)
    ignored = _Ignored()
    notes: list[str] = []
    with _Keys(data, "", ignored) as root:
        gateway = _gateway(root.obj("gateway"), environ)
        with root.obj("models") as models:
            providers = _providers(models.obj("providers"), notes)
            configured = models.value.get("providers")
            named = set(configured) if isinstance(configured, dict) else set()
            providers += _implicit_providers(named, environ, notes)
        read = _gather(Config, root, {"gateway": gateway, "providers": providers})
    tools = _tools(data, ignored)
    redis_url = environ.get("OPENCLAW_REDIS_URL", "").strip()
    redis = read.get("redis", RedisConfig())
    if redis_url and isinstance(redis, RedisConfig) and not redis.url:
        problem = _redis_url_problem(redis_url)
        if problem is not None:
            raise ConfigError(f"OPENCLAW_REDIS_URL: {problem}")
        read["redis"] = attrs.evolve(redis, url=redis_url)
    return _build(
        Config,
        "",
        {
            **read,
            "tools": tools,
            "state_dir": state_dir(environ),
            "source": source,
            "ignored": tuple(ignored),
            "notes": tuple(notes),
            "near_misses": tuple(ignored.near),
        },
    )


_TOOLS_KEY = re.compile(r"(tools|agents\.list\[\d+\]\.tools)(\.|\[|$)")


def _tools(data: Any, ignored: _Ignored) -> ToolsConfig:
    """``tools`` and ``agents.list[].tools`` by the tools package's parser (its own unknown
    keys reported with the others)."""
    unknown: list[str] = []
    tools = ToolsConfig.from_mapping(data if isinstance(data, dict) else {}, ignored=unknown)
    ignored[:] = [k for k in ignored if not _TOOLS_KEY.match(k)]
    ignored.extend(k.split(":", 1)[0] for k in unknown)
    return tools


def _gateway(g: _Keys, environ: Mapping[str, str]) -> GatewayConfig:
    with g:
        given: dict[str, object] = {"auth": _auth(g.obj("auth"), environ)}
        port = g.get("port")
        if isinstance(port, str) and port.strip().isdigit():  # as "${PORT}" substitutes it
            given["port"] = int(port)
        gateway = _build(GatewayConfig, g.path, _gather(GatewayConfig, g, given))
    env_port = environ.get("OPENCLAW_GATEWAY_PORT", "").strip()
    if env_port:
        problem = _PORT.problem(int(env_port) if env_port.isdigit() else env_port)
        if problem is not None:
            raise ConfigError(f"OPENCLAW_GATEWAY_PORT: {problem}")
        gateway = attrs.evolve(gateway, port=int(env_port))
    return gateway


def _auth(a: _Keys, environ: Mapping[str, str]) -> AuthConfig:
    """The file's auth, its token and password from the environment when it has none, and
    password mode when a password is set and no mode is."""
    with a:
        read = _gather(AuthConfig, a, {})
    for field, variable in (
        ("token", "OPENCLAW_GATEWAY_TOKEN"),
        ("password", "OPENCLAW_GATEWAY_PASSWORD"),
    ):
        if read.get(field) in (None, ""):
            read[field] = environ.get(variable) or None
    if "mode" not in read and read["password"]:
        read["mode"] = "password"
    return _build(AuthConfig, a.path, read)


#: Providers OpenClaw knows without a config entry: used when their key is in the environment.
IMPLICIT_PROVIDERS: tuple[tuple[str, ProviderApi, str, str], ...] = (
    ("openai", "openai-completions", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    ("anthropic", "anthropic-messages", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
)


def _implicit_providers(
    configured: set[str], environ: Mapping[str, str], notes: list[str]
) -> tuple[ProviderConfig, ...]:
    """``openai``/``anthropic`` refs without an entry, when the usual key variable is set."""
    out: list[ProviderConfig] = []
    for name, api, base_url, variable in IMPLICIT_PROVIDERS:
        key = environ.get(variable, "").strip()
        if key and name not in configured:
            out.append(ProviderConfig(name, api, base_url, key))
            notes.append(
                f"models.providers.{name} is not configured: {name}/<model> refs use "
                f"{base_url} with the key in ${variable}"
            )
    return tuple(out)


def _providers(p: _Keys, notes: list[str]) -> tuple[ProviderConfig, ...]:
    """Each entry by name; one whose ``api`` this gateway does not serve is noted and left out."""
    out: list[ProviderConfig] = []
    with p:
        for name in list(p.value):
            entry = p.obj(name)
            with entry:
                read = _gather(ProviderConfig, entry, {"name": name})
            api = read.get("api")
            if isinstance(api, str) and api not in SUPPORTED_APIS:
                notes.append(
                    f"models.providers.{name}: api {json.dumps(api)} is not served here "
                    f"(supported: {', '.join(SUPPORTED_APIS)}); its models are unavailable"
                )
                continue
            out.append(_build(ProviderConfig, entry.path, read))
    return tuple(out)
