"""The OpenClaw config file (JSON5) turned into typed, validated attrs values."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import attrs
import json5

DEFAULT_PORT = 18789
MiB = 1024 * 1024

AuthMode = Literal["none", "token", "password"]
BindMode = Literal["loopback", "lan", "custom"]
ProviderApi = Literal["openai-completions", "anthropic-messages", "echo"]
SUPPORTED_APIS: tuple[str, ...] = ("openai-completions", "anthropic-messages", "echo")
DEFAULT_IMAGE_MIMES = ("image/jpeg", "image/png", "image/gif", "image/webp")
WORKSPACE_FILES = ("AGENTS.md", "SOUL.md", "IDENTITY.md", "USER.md", "TOOLS.md")


class ConfigError(Exception):
    """The config cannot be used; the message names the key and the problem, on one line."""


@attrs.frozen
class RateLimitConfig:
    max_attempts: int = 10
    window_ms: int = 60_000
    lockout_ms: int = 300_000
    exempt_loopback: bool = True


@attrs.frozen
class AuthConfig:
    mode: AuthMode = "token"
    token: str | None = None
    password: str | None = None
    rate_limit: RateLimitConfig | None = None

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
    allow_url: bool = False
    allowed_mimes: tuple[str, ...] = DEFAULT_IMAGE_MIMES
    max_bytes: int = 10 * MiB


@attrs.frozen
class ChatCompletionsConfig:
    enabled: bool = False
    max_body_bytes: int = 20 * MiB
    max_image_parts: int = 8
    max_total_image_bytes: int = 20 * MiB
    heartbeat_seconds: float = 15.0
    images: ImagesConfig = ImagesConfig()


@attrs.frozen
class LimitsConfig:
    """``gateway.limits``: what one client, and all of them together, may make the gateway do."""

    #: Runs one WebSocket connection may have in flight.
    max_runs_per_connection: int = 16
    #: Runs one client address may have in flight, over all its connections and HTTP requests.
    max_runs_per_client: int = 128
    #: Model provider requests in flight at once, gateway-wide (each holds a connection).
    max_upstream_connections: int = 512
    #: Runs that may wait for one of those; past it a run is refused at once.
    max_upstream_waiting: int = 1024
    #: How long a run may wait for a provider connection before it fails.
    upstream_wait_ms: int = 30_000
    #: The listening socket's accept queue (the kernel caps it at net.core.somaxconn).
    listen_backlog: int = 1024


@attrs.frozen
class GatewayConfig:
    port: int = DEFAULT_PORT
    bind: BindMode = "loopback"
    custom_bind_host: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    auth: AuthConfig = AuthConfig()
    chat_completions: ChatCompletionsConfig = ChatCompletionsConfig()
    #: ``gateway.controlUi.allowedOrigins``: browser origins allowed to open a WebSocket
    #: besides the gateway's own (``*`` = any).
    allowed_origins: tuple[str, ...] = ()
    #: ``gateway.allowedHosts``: ``Host`` names served on a loopback connection besides
    #: ``localhost`` and loopback addresses (``*`` = any).
    allowed_hosts: tuple[str, ...] = ()
    limits: LimitsConfig = LimitsConfig()

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

    primary: str
    fallbacks: tuple[str, ...] = ()

    @property
    def refs(self) -> tuple[str, ...]:
        return (self.primary, *self.fallbacks)


@attrs.frozen
class AgentDefaults:
    model: ModelChoice | None = None
    workspace: str | None = None
    timeout_seconds: float = 600.0
    history_limit: int = 50


@attrs.frozen
class AgentConfig:
    """One ``agents.list`` entry; ``None`` fields fall back to ``agents.defaults``."""

    id: str
    default: bool = False
    name: str | None = None
    model: ModelChoice | None = None
    workspace: str | None = None


@attrs.frozen
class ProviderModel:
    id: str
    name: str | None = None
    context_window: int | None = None
    max_tokens: int | None = None


@attrs.frozen
class ProviderConfig:
    name: str
    api: ProviderApi
    base_url: str = ""
    api_key: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    models: tuple[ProviderModel, ...] = ()


@attrs.frozen
class Config:
    """Everything the gateway reads from ``openclaw.json``, with OpenClaw's defaults."""

    state_dir: str = attrs.field(factory=lambda: str(Path.home() / ".openclaw"))
    gateway: GatewayConfig = GatewayConfig()
    agent_defaults: AgentDefaults = AgentDefaults()
    agents: tuple[AgentConfig, ...] = ()
    providers: tuple[ProviderConfig, ...] = ()
    persist_ephemeral: bool = False
    source: str | None = None
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: Ignored keys one edit away from a key read at the same place: (ignored, known).
    near_misses: tuple[tuple[str, str], ...] = ()

    @property
    def chat_completions(self) -> ChatCompletionsConfig:
        return self.gateway.chat_completions

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)


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
# Validation: each reader takes the raw value and its dotted path, and names it on error.


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


def _bool(value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    return value


def _int(value: Any, path: str, default: int, lo: int = 0, hi: int | None = None) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigError(f"{path}: expected a whole number, got {value!r}")
    n = int(value)
    if n < lo or (hi is not None and n > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{path}: expected a number in {bound}, got {n}")
    return n


def _num(value: Any, path: str, default: float, lo: float = 0.0) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < lo:
        raise ConfigError(f"{path}: expected a number >= {lo:g}, got {value!r}")
    return float(value)


def _str(value: Any, path: str, *, allow_empty: bool = True) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ConfigError(f"{path}: expected a non-empty string, got {value!r}")
    return value


def _strs(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: expected an array of strings, got {value!r}")
    return tuple(value)


def _port(value: Any, path: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{path}: expected a port number 0..65535, got {value!r}")
    return value


def _model_choice(value: Any, path: str, ignored: list[str]) -> ModelChoice | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ModelChoice(_str(value, path, allow_empty=False) or "")
    with _Keys(value, path, ignored) as k:
        primary = _str(k.get("primary"), k.at("primary"), allow_empty=False)
        fallbacks = _strs(k.get("fallbacks"), k.at("fallbacks"))
    if primary is None:
        raise ConfigError(f"{path}.primary: a model ref like 'provider/model' is required")
    return ModelChoice(primary, fallbacks)


def normalize_agent_id(raw: str) -> str:
    """OpenClaw's agent id rule: lowercase, other runs to ``-``, trimmed, <= 64, else ``main``."""
    s = re.sub(r"[^a-z0-9_-]+", "-", raw.strip().lower()).strip("-")[:64].strip("-")
    return s or "main"


def parse_config(data: Any, environ: Mapping[str, str], source: str | None = None) -> Config:
    """Validate the parsed JSON5 document; unknown keys are collected, not fatal."""
    data = substitute(data, environ)
    ignored = _Ignored()
    notes: list[str] = []
    with _Keys(data, "", ignored) as root:
        gateway = _gateway(root.obj("gateway"), environ)
        defaults, agents = _agents(root.obj("agents"), ignored)
        with root.obj("models") as models:
            providers = _providers(models.obj("providers"), ignored, notes)
            configured = models.value.get("providers")
            named = set(configured) if isinstance(configured, dict) else set()
            providers += _implicit_providers(named, environ, notes)
        with root.obj("session") as session:
            persist = _bool(session.get("persistEphemeral"), session.at("persistEphemeral"), False)
    return Config(
        state_dir=state_dir(environ),
        gateway=gateway,
        agent_defaults=defaults,
        agents=agents,
        providers=providers,
        persist_ephemeral=persist,
        source=source,
        ignored=tuple(ignored),
        notes=tuple(notes),
        near_misses=tuple(ignored.near),
    )


def _gateway(g: _Keys, environ: Mapping[str, str]) -> GatewayConfig:
    with g:
        port = _port(g.get("port"), g.at("port")) if g.get("port") is not None else DEFAULT_PORT
        env_port = environ.get("OPENCLAW_GATEWAY_PORT", "").strip()
        if env_port:
            port = _port(env_port, "OPENCLAW_GATEWAY_PORT")
        bind = g.get("bind") or "loopback"
        if bind not in ("loopback", "lan", "custom"):
            raise ConfigError(
                f"{g.at('bind')}: expected 'loopback', 'lan' or 'custom', got {bind!r}"
            )
        custom = _str(g.get("customBindHost"), g.at("customBindHost"))
        if bind == "custom" and not custom:
            raise ConfigError(f"{g.at('customBindHost')}: required when gateway.bind is 'custom'")
        proxies = _strs(g.get("trustedProxies"), g.at("trustedProxies"))
        auth = _auth(g.obj("auth"), environ)
        with g.obj("http") as http, http.obj("endpoints") as endpoints:
            chat = _chat_completions(endpoints.obj("chatCompletions"))
        with g.obj("controlUi") as ui:
            origins = _origins(ui.get("allowedOrigins"), ui.at("allowedOrigins"))
        hosts = _hosts(g.get("allowedHosts"), g.at("allowedHosts"))
        limits = _limits(g.obj("limits"))
    return GatewayConfig(
        port,
        cast(BindMode, bind),
        custom,
        proxies,
        auth,
        chat,
        allowed_origins=origins,
        allowed_hosts=hosts,
        limits=limits,
    )


def _origins(value: Any, path: str) -> tuple[str, ...]:
    """Full origins (``scheme://host[:port]``), ``null`` or ``*``; lower-cased."""
    out = []
    for origin in _strs(value, path):
        o = origin.strip().lower().rstrip("/")
        if o not in ("*", "null") and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/?#\s@]+", o):
            raise ConfigError(
                f"{path}: {origin!r} is not an origin (write it as scheme://host[:port])"
            )
        out.append(o)
    return tuple(out)


def _hosts(value: Any, path: str) -> tuple[str, ...]:
    """Host names or IP addresses (no scheme, no port), or ``*``; lower-cased."""
    out = []
    for host in _strs(value, path):
        h = host.strip().lower().rstrip(".")
        if h.startswith("[") and h.endswith("]"):
            h = h[1:-1]
        if not (h == "*" or re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", h) or _is_ipv6(h)):
            raise ConfigError(f"{path}: {host!r} is not a host name (no scheme, path or port)")
        out.append(h)
    return tuple(out)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _limits(k: _Keys) -> LimitsConfig:
    d = LimitsConfig()
    with k:
        return LimitsConfig(
            max_runs_per_connection=_int(
                k.get("maxRunsPerConnection"),
                k.at("maxRunsPerConnection"),
                d.max_runs_per_connection,
                lo=1,
            ),
            max_runs_per_client=_int(
                k.get("maxRunsPerClient"), k.at("maxRunsPerClient"), d.max_runs_per_client, lo=1
            ),
            max_upstream_connections=_int(
                k.get("maxUpstreamConnections"),
                k.at("maxUpstreamConnections"),
                d.max_upstream_connections,
                lo=1,
            ),
            max_upstream_waiting=_int(
                k.get("maxUpstreamWaiting"), k.at("maxUpstreamWaiting"), d.max_upstream_waiting
            ),
            upstream_wait_ms=_int(
                k.get("upstreamWaitMs"), k.at("upstreamWaitMs"), d.upstream_wait_ms, lo=1
            ),
            listen_backlog=_int(
                k.get("listenBacklog"), k.at("listenBacklog"), d.listen_backlog, lo=1, hi=65535
            ),
        )


def _auth(a: _Keys, environ: Mapping[str, str]) -> AuthConfig:
    with a:
        token = _str(a.get("token"), a.at("token")) or environ.get("OPENCLAW_GATEWAY_TOKEN") or None
        password = (
            _str(a.get("password"), a.at("password"))
            or environ.get("OPENCLAW_GATEWAY_PASSWORD")
            or None
        )
        mode = a.get("mode")
        if mode is None:
            mode = "password" if password else "token"
        if mode not in ("none", "token", "password"):
            raise ConfigError(
                f"{a.at('mode')}: expected 'none', 'token' or 'password', got {mode!r}"
            )
        if mode == "password" and not password:
            raise ConfigError(
                f"{a.at('password')}: password mode needs a password "
                "(set it here or in OPENCLAW_GATEWAY_PASSWORD)"
            )
        limit = None
        if a.get("rateLimit") is not None:
            with a.obj("rateLimit") as r:
                limit = RateLimitConfig(
                    _int(r.get("maxAttempts"), r.at("maxAttempts"), 10, lo=1),
                    _int(r.get("windowMs"), r.at("windowMs"), 60_000, lo=1),
                    _int(r.get("lockoutMs"), r.at("lockoutMs"), 300_000, lo=0),
                    _bool(r.get("exemptLoopback"), r.at("exemptLoopback"), True),
                )
    return AuthConfig(mode, token, password, limit)


def _chat_completions(c: _Keys) -> ChatCompletionsConfig:
    d = ChatCompletionsConfig()
    with c:
        with c.obj("images") as i:
            images = ImagesConfig(
                _bool(i.get("allowUrl"), i.at("allowUrl"), False),
                tuple(m.lower() for m in _strs(i.get("allowedMimes"), i.at("allowedMimes")))
                or DEFAULT_IMAGE_MIMES,
                _int(i.get("maxBytes"), i.at("maxBytes"), d.images.max_bytes, lo=1),
            )
        return ChatCompletionsConfig(
            _bool(c.get("enabled"), c.at("enabled"), False),
            _int(c.get("maxBodyBytes"), c.at("maxBodyBytes"), d.max_body_bytes, lo=1),
            _int(c.get("maxImageParts"), c.at("maxImageParts"), d.max_image_parts),
            _int(c.get("maxTotalImageBytes"), c.at("maxTotalImageBytes"), d.max_total_image_bytes),
            _num(c.get("heartbeatSeconds"), c.at("heartbeatSeconds"), d.heartbeat_seconds),
            images,
        )


def _agents(a: _Keys, ignored: list[str]) -> tuple[AgentDefaults, tuple[AgentConfig, ...]]:
    with a:
        with a.obj("defaults") as d:
            defaults = AgentDefaults(
                _model_choice(d.get("model"), d.at("model"), ignored),
                _str(d.get("workspace"), d.at("workspace")),
                _num(d.get("timeoutSeconds"), d.at("timeoutSeconds"), 600.0),
                _int(d.get("historyLimit"), d.at("historyLimit"), 50),
            )
        raw = a.get("list")
        if raw is not None and not isinstance(raw, list):
            raise ConfigError(f"{a.at('list')}: expected an array, got {_kind(raw)}")
        agents: list[AgentConfig] = []
        for i, entry in enumerate(raw or []):
            with _Keys(entry, f"{a.at('list')}[{i}]", ignored) as e:
                raw_id = _str(e.get("id"), e.at("id"), allow_empty=False)
                if raw_id is None:
                    raise ConfigError(f"{e.at('id')}: every agent needs an id")
                agent_id = normalize_agent_id(raw_id)
                if any(x.id == agent_id for x in agents):
                    raise ConfigError(f"{e.at('id')}: duplicate agent id {agent_id!r}")
                agents.append(
                    AgentConfig(
                        agent_id,
                        _bool(e.get("default"), e.at("default"), False),
                        _str(e.get("name"), e.at("name")),
                        _model_choice(e.get("model"), e.at("model"), ignored),
                        _str(e.get("workspace"), e.at("workspace")),
                    )
                )
    return defaults, tuple(agents)


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


def _providers(p: _Keys, ignored: list[str], notes: list[str]) -> tuple[ProviderConfig, ...]:
    out: list[ProviderConfig] = []
    with p:
        for name in list(p.value):
            with p.obj(name) as e:
                api = e.get("api") or "openai-completions"
                if not isinstance(api, str):
                    raise ConfigError(f"{e.at('api')}: expected a string, got {api!r}")
                base_url = _str(e.get("baseUrl"), e.at("baseUrl")) or ""
                api_key = _str(e.get("apiKey"), e.at("apiKey"))
                headers = e.get("headers") or {}
                if not isinstance(headers, dict) or not all(
                    isinstance(v, str) for v in headers.values()
                ):
                    raise ConfigError(f"{e.at('headers')}: expected an object of strings")
                raw_models = e.get("models")
                if raw_models is not None and not isinstance(raw_models, list):
                    raise ConfigError(
                        f"{e.at('models')}: expected an array, got {_kind(raw_models)}"
                    )
                models: list[ProviderModel] = []
                for i, m in enumerate(raw_models or []):
                    with _Keys(m, f"{e.at('models')}[{i}]", ignored) as mk:
                        mid = _str(mk.get("id"), mk.at("id"), allow_empty=False)
                        if mid is None:
                            raise ConfigError(f"{mk.at('id')}: every model needs an id")
                        models.append(
                            ProviderModel(
                                mid,
                                _str(mk.get("name"), mk.at("name")),
                                _int(mk.get("contextWindow"), mk.at("contextWindow"), 0) or None,
                                _int(mk.get("maxTokens"), mk.at("maxTokens"), 0) or None,
                            )
                        )
            if api not in SUPPORTED_APIS:
                notes.append(
                    f"models.providers.{name}: api {api!r} is not served here "
                    f"(supported: {', '.join(SUPPORTED_APIS)}); its models are unavailable"
                )
                continue
            if api != "echo" and not base_url:
                raise ConfigError(f"{e.at('baseUrl')}: required for api {api!r}")
            out.append(
                ProviderConfig(
                    name,
                    cast(ProviderApi, api),
                    base_url.rstrip("/"),
                    api_key,
                    tuple(headers.items()),
                    tuple(models),
                )
            )
    return tuple(out)
