"""Which tools an agent gets: OpenClaw's ``tools`` config (profile, allow, deny, exec), per agent.

OpenClaw's semantics, layer by layer: the profile (the agent's ``tools.profile``, else the
global one) gives a base allowlist; then the global ``tools.allow``/``tools.deny``; then the
agent's ``agents.list[].tools.allow``/``deny``. A tool must pass every layer, so an agent can
narrow what the global config allows but never widen it. In each layer deny wins over allow,
an empty or missing allow means "everything", names are case-insensitive, ``*`` is a wildcard
and ``group:*`` names expand to their tools. Unknown tool names are not errors (a config may
name OpenClaw tools this gateway does not have). On top of the policy, ``exec`` exists only
where ``tools.exec.security`` (global or the agent's) is ``"full"``: it is off by default.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from .._configbase import ConfigError, normalize_agent_id
from .fs import fs_tools
from .interface import ITool
from .registry import ToolRegistry
from .runtime import EXEC_TIMEOUT_SECONDS, ExecTool

ToolProfile = Literal["minimal", "coding", "messaging", "full"]
ExecSecurity = Literal["deny", "allowlist", "full"]

#: OpenClaw's tool groups, so a config written for OpenClaw means the same here. ``ls`` and
#: ``find`` are this gateway's additions to ``group:fs``.
TOOL_GROUPS: Mapping[str, tuple[str, ...]] = {
    "group:fs": ("read", "write", "edit", "apply_patch", "ls", "find"),
    "group:runtime": ("exec", "process"),
    "group:memory": ("memory_search", "memory_get"),
    "group:web": ("web_search", "web_fetch"),
    "group:sessions": (
        "sessions_list",
        "sessions_history",
        "sessions_send",
        "sessions_spawn",
        "session_status",
    ),
    "group:ui": ("browser", "canvas"),
    "group:automation": ("cron", "gateway"),
    "group:messaging": ("message",),
    "group:nodes": ("nodes",),
    # OpenClaw's "all native tools" group leaves out the file and runtime tools.
    "group:openclaw": (
        "browser",
        "canvas",
        "nodes",
        "cron",
        "message",
        "gateway",
        "agents_list",
        "sessions_list",
        "sessions_history",
        "sessions_send",
        "sessions_spawn",
        "session_status",
        "memory_search",
        "memory_get",
        "web_search",
        "web_fetch",
        "image",
    ),
}

#: ``tools.profile``: a base allowlist applied before ``allow``/``deny`` (``full``: none).
TOOL_PROFILES: Mapping[str, tuple[str, ...] | None] = {
    "minimal": ("session_status",),
    "coding": ("group:fs", "group:runtime", "group:sessions", "group:memory", "image"),
    "messaging": (
        "group:messaging",
        "sessions_list",
        "sessions_history",
        "sessions_send",
        "session_status",
    ),
    "full": None,
}

_ALIASES = {"bash": "exec", "apply-patch": "apply_patch"}
_EXEC_SECURITY = ("deny", "allowlist", "full")


def normalize_tool_name(name: str) -> str:
    """OpenClaw's rule: trimmed, lowercased, ``bash`` → ``exec``."""
    n = name.strip().lower()
    return _ALIASES.get(n, n)


def expand_groups(names: Iterable[str]) -> tuple[str, ...]:
    """Normalised names with every ``group:*`` replaced by its tools (duplicates dropped)."""
    out: dict[str, None] = {}
    for raw in names:
        n = normalize_tool_name(raw)
        for tool in TOOL_GROUPS.get(n, (n,)):
            if tool:
                out[tool] = None
    return tuple(out)


def _matcher(patterns: Iterable[str]) -> re.Pattern[str] | None:
    expanded = expand_groups(patterns)
    if not expanded:
        return None
    alts = ("[\\s\\S]*".join(re.escape(part) for part in p.split("*")) for p in expanded)
    return re.compile("^(?:" + "|".join(alts) + ")$")


@attrs.frozen
class ToolPolicy:
    """One layer: ``allow`` (empty: all) and ``deny`` (wins), OpenClaw-style patterns."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def allows(self, name: str) -> bool:
        n = normalize_tool_name(name)
        deny = _matcher(self.deny)
        if deny is not None and deny.match(n):
            return False
        allow = _matcher(self.allow)
        return allow is None or bool(allow.match(n))


@attrs.frozen
class ExecConfig:
    """``tools.exec``: ``security`` (``deny`` by default: no ``exec``) and ``timeoutSec``."""

    security: ExecSecurity | None = None
    timeout_seconds: float | None = None


@attrs.frozen
class AgentToolsConfig:
    """``agents.list[].tools``: the agent's own layer; ``None`` fields inherit the global ones."""

    profile: ToolProfile | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    exec: ExecConfig = ExecConfig()


@attrs.frozen
class EffectivePolicy:
    """One agent's resolved policy: the layers in order, and whether ``exec`` is on."""

    layers: tuple[ToolPolicy, ...]
    exec_enabled: bool
    exec_timeout_seconds: float
    notes: tuple[str, ...] = ()

    def allows(self, name: str) -> bool:
        """Whether policy lets the agent use ``name`` (``exec`` also needs ``exec_enabled``)."""
        n = normalize_tool_name(name)
        if n == "exec" and not self.exec_enabled:
            return False
        return all(layer.allows(n) for layer in self.layers)


@attrs.frozen
class ToolsConfig:
    """The ``tools`` section and every agent's ``tools`` override, validated."""

    profile: ToolProfile | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    exec: ExecConfig = ExecConfig()
    agents: Mapping[str, AgentToolsConfig] = attrs.field(factory=dict)
    #: Whether the config has a ``tools`` section (``agents`` holds the agents with theirs).
    configured: bool = False

    @classmethod
    def from_mapping(
        cls, config: Mapping[str, Any], *, ignored: list[str] | None = None
    ) -> ToolsConfig:
        """Read ``tools`` and ``agents.list[].tools`` from a whole (plain, parsed) config.

        A wrong type or value raises ``ConfigError`` naming its key. Keys this gateway does
        not know (OpenClaw has many more, e.g. ``tools.byProvider``) are added to
        ``ignored`` when a list is given, and are errors (with a suggestion) when not.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"<root>: expected an object, got {_kind(config)}")
        strict = ignored is None
        unknown: list[str] = [] if ignored is None else ignored
        t = _Obj(config.get("tools"), "tools", unknown)
        t.check(("profile", "allow", "deny", "exec"))
        agents: dict[str, AgentToolsConfig] = {}
        raw_agents = config.get("agents")
        raw_list = raw_agents.get("list") if isinstance(raw_agents, Mapping) else None
        if isinstance(raw_list, list):
            for i, entry in enumerate(raw_list):
                if not isinstance(entry, Mapping) or entry.get("tools") is None:
                    continue
                agent_id = entry.get("id")
                if not isinstance(agent_id, str) or not agent_id.strip():
                    continue  # config.py reports agents without an id
                a = _Obj(entry["tools"], f"agents.list[{i}].tools", unknown)
                a.check(("profile", "allow", "deny", "exec"))
                agents[normalize_agent_id(agent_id)] = AgentToolsConfig(
                    profile=a.profile(), allow=a.names("allow"), deny=a.names("deny"), exec=a.exec()
                )
        parsed = cls(
            profile=t.profile(),
            allow=t.names("allow"),
            deny=t.names("deny"),
            exec=t.exec(),
            agents=agents,
            configured=config.get("tools") is not None,
        )
        if strict and unknown:
            raise ConfigError(unknown[0])
        return parsed

    def for_agent(self, agent_id: str) -> EffectivePolicy:
        """The layers and exec switch that apply to ``agent_id`` (its overrides, if any)."""
        own = self.agents.get(normalize_agent_id(agent_id), AgentToolsConfig())
        layers: list[ToolPolicy] = []
        profile = own.profile or self.profile
        base = TOOL_PROFILES.get(profile) if profile else None
        if base is not None:
            layers.append(ToolPolicy(allow=base))
        layers.append(ToolPolicy(self.allow, self.deny))
        if own.allow or own.deny:
            layers.append(ToolPolicy(own.allow, own.deny))
        security = own.exec.security or self.exec.security or "deny"
        timeout = own.exec.timeout_seconds or self.exec.timeout_seconds or EXEC_TIMEOUT_SECONDS
        notes = []
        if security == "allowlist":
            notes.append(
                "tools.exec.security 'allowlist' (exec approvals) is not supported here; "
                "exec stays off (set it to 'full' to enable exec)"
            )
        return EffectivePolicy(tuple(layers), security == "full", timeout, tuple(notes))


def tools_for_agent(
    config: ToolsConfig, agent_id: str, *, extra: Iterable[ITool] = ()
) -> ToolRegistry:
    """The registry of built-in (and ``extra``) tools that ``agent_id``'s policy lets it use."""
    policy = config.for_agent(agent_id)
    candidates: list[ITool] = list(fs_tools())
    if policy.exec_enabled:
        candidates.append(ExecTool(timeout_seconds=policy.exec_timeout_seconds))
    candidates.extend(extra)
    return ToolRegistry(t for t in candidates if policy.allows(t.name))


def effective_tools(config: Mapping[str, Any], agent_id: str) -> ToolRegistry:
    """``tools_for_agent`` straight from a plain config mapping (strict about its keys)."""
    return tools_for_agent(ToolsConfig.from_mapping(config), agent_id)


# ---------------------------------------------------------------------------------------
# Validation: each reader names the dotted key it was reading when it refuses a value.


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


class _Obj:
    def __init__(self, value: Any, path: str, unknown: list[str]) -> None:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected an object, got {_kind(value)}")
        self.value = value
        self.path = path
        self.unknown = unknown

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def check(self, known: tuple[str, ...]) -> None:
        for key in self.value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {self.at(close[0])}?" if close else ""
                self.unknown.append(f"{self.at(str(key))}: unknown key{hint}")

    def names(self, key: str) -> tuple[str, ...]:
        value = self.value.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(
                f"{self.at(key)}: expected an array of tool names or groups, got {_kind(value)}"
            )
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise ConfigError(f"{self.at(key)}[{i}]: expected a tool name, got {_kind(v)}")
        return tuple(v for v in value if v.strip())

    def profile(self) -> ToolProfile | None:
        value = self.value.get("profile")
        if value is None:
            return None
        if value not in TOOL_PROFILES:
            raise ConfigError(
                f"{self.at('profile')}: expected one of {', '.join(TOOL_PROFILES)}, got {value!r}"
            )
        profile: ToolProfile = value
        return profile

    def exec(self) -> ExecConfig:
        e = _Obj(self.value.get("exec"), self.at("exec"), self.unknown)
        e.check(("security", "timeoutSec"))
        security = e.value.get("security")
        if security is not None and security not in _EXEC_SECURITY:
            raise ConfigError(
                f"{e.at('security')}: expected one of {', '.join(_EXEC_SECURITY)}, got {security!r}"
            )
        timeout = e.value.get("timeoutSec")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ConfigError(
                f"{e.at('timeoutSec')}: expected a number of seconds above 0, got {timeout!r}"
            )
        return ExecConfig(security, float(timeout) if timeout is not None else None)
