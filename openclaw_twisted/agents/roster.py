"""The configured agents: defaults applied, the default agent chosen, system prompts built."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from typing import Literal

import attrs

from ..config import WORKSPACE_FILES, AgentConfig, Config, ModelChoice, normalize_agent_id

_KEY_AGENT = re.compile(r"^agent:([a-z0-9][a-z0-9_-]{0,63}):", re.IGNORECASE)
_MODEL_AGENT = re.compile(r"(?:openclaw[:/]|agent:)([a-z0-9][a-z0-9_-]{0,63})")
#: The model strings that mean the default agent.
DEFAULT_MODELS = ("openclaw", "openclaw/default")
INVALID_MODEL = "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`."

#: Where a request came from, which decides the session it lands in when it names none:
#: the OpenAI-style HTTP surfaces give each ``user`` its own session
#: (``agent:<id>:<surface>-user:<user>``) and a request without one a fresh session of its
#: own; the WebSocket protocol, the CLI and ``POST /tools/invoke`` continue the agent's main
#: session.
Surface = Literal["openai", "openresponses", "ws", "cli", "tools"]
HTTP_SURFACES: frozenset[Surface] = frozenset({"openai", "openresponses"})

#: The model every agent uses when the config names none.
ECHO_MODEL = ModelChoice("echo/echo")
#: Workspace files are capped so one runaway file cannot swamp every prompt.
WORKSPACE_FILE_CAP = 20_000


@attrs.frozen
class Agent:
    """An agent with every default resolved."""

    id: str
    name: str
    model: ModelChoice
    workspace: str
    timeout_seconds: float
    history_limit: int
    #: How many times a run may have the agent's own tools run before it must answer.
    max_tool_rounds: int = 8


class RouteError(Exception):
    """A request that names no agent served here: the message, and the field it came from."""

    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The request field the bad choice came from (``model``), ``None`` when not one.
        self.field = field


class InvalidModel(RouteError):
    """A ``model`` string that names no agent (the HTTP surfaces)."""

    code = "invalid_model"

    def __init__(self) -> None:
        super().__init__(INVALID_MODEL, "model")


class UnknownAgent(RouteError):
    """The request names an agent that is not configured."""

    code = "unknown_agent"

    def __init__(self, agent_id: str, known: tuple[str, ...] = (), field: str | None = None):
        super().__init__(f"Unknown agent '{agent_id}'.", field)
        self.agent_id = agent_id
        #: The configured agent ids (the CLI lists them).
        self.known = known


@attrs.frozen
class Route:
    """Where a request goes: the agent, its session, and whether that session is kept."""

    agent_id: str
    session_key: str
    persist: bool = True


def _new_id() -> str:
    return str(uuid.uuid4())


@attrs.frozen
class Roster:
    """Looks agents up by (normalised) id; knows the default one."""

    agents: tuple[Agent, ...]
    default_id: str

    @classmethod
    def from_config(cls, config: Config) -> Roster:
        d = config.agent_defaults
        default_model = d.model or config_default_model(config)
        base_ws = d.workspace or os.path.join(config.state_dir, "workspace")
        entries = config.agents or (AgentConfig("main"),)

        def resolve(a: AgentConfig) -> Agent:
            workspace = a.workspace or (
                base_ws if a.id == "main" or not config.agents else f"{base_ws}-{a.id}"
            )
            return Agent(
                id=a.id,
                name=a.name or a.id,
                model=a.model or default_model,
                workspace=os.path.expanduser(workspace),
                timeout_seconds=d.timeout_seconds,
                history_limit=d.history_limit,
                max_tool_rounds=d.max_tool_rounds,
            )

        agents = tuple(resolve(a) for a in entries)
        default = next((a.id for a in entries if a.default), entries[0].id)
        return cls(agents, default)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.agents)

    def get(self, agent_id: str) -> Agent | None:
        return next((a for a in self.agents if a.id == agent_id), None)

    @property
    def default(self) -> Agent:
        agent = self.get(self.default_id)
        assert agent is not None
        return agent

    def require(self, agent_id: str, field: str | None = None) -> Agent:
        """The agent ``agent_id`` names; L{UnknownAgent} when none is configured."""
        agent = self.get(agent_id)
        if agent is None:
            raise UnknownAgent(agent_id, self.ids, field)
        return agent

    def route(
        self,
        surface: Surface,
        *,
        session_key: str | None = None,
        agent: str | None = None,
        model: str | None = None,
        user: str | None = None,
        persist_ephemeral: bool = False,
        new_id: Callable[[], str] = _new_id,
    ) -> Route:
        """
        The one routing rule of every edge (CONTRACT §4.2): a session key ``agent:<id>:...``
        decides the agent; else ``agent`` (a header, a param, an option; normalised); else
        ``model`` (``openclaw``, ``openclaw/<id>``, ``agent:<id>``); else the default agent.
        A given key is used verbatim and kept; without one, see L{Surface}.

        Raises L{InvalidModel} or L{UnknownAgent}.
        """
        key = (session_key or "").strip()
        agent_id, field = self._choose(key, agent, model)
        self.require(agent_id, field)
        if key:
            return Route(agent_id, key)
        if surface not in HTTP_SURFACES:
            return Route(agent_id, main_session_key(agent_id))
        if user and user.strip():
            return Route(agent_id, f"agent:{agent_id}:{surface}-user:{user.lower()}")
        return Route(agent_id, f"agent:{agent_id}:{surface}:{new_id()}", persist_ephemeral)

    def _choose(self, key: str, agent: str | None, model: str | None) -> tuple[str, str | None]:
        keyed = agent_from_session_key(key)
        if keyed:
            return keyed, None
        if agent is not None and agent.strip():
            return normalize_agent_id(agent), None
        if model is None:
            return self.default_id, None
        m = model.strip().lower()
        if m in DEFAULT_MODELS:
            return self.default_id, "model"
        found = _MODEL_AGENT.fullmatch(m)
        if found is None:
            raise InvalidModel()
        return found.group(1), "model"


def agent_from_session_key(key: str) -> str | None:
    """The agent a key of the form ``agent:<id>:...`` names (lowercased), else ``None``."""
    m = _KEY_AGENT.match(key)
    return m.group(1).lower() if m else None


def main_session_key(agent_id: str) -> str:
    """The agent's main session (OpenClaw's ``agent:<id>:main``), the CLI's default."""
    return f"agent:{agent_id}:main"


def config_default_model(config: Config) -> ModelChoice:
    """No model named anywhere: the first configured provider's first model, else echo."""
    for p in config.providers:
        if p.models:
            return ModelChoice(f"{p.name}/{p.models[0].id}")
    return ECHO_MODEL


def system_prompt(agent: Agent, extra: str = "") -> str:
    """Identity line + the workspace files that exist (each capped) + the run's extra prompt."""
    parts = [f"You are {agent.name}, an OpenClaw agent (id: {agent.id})."]
    for name in WORKSPACE_FILES:
        path = os.path.join(agent.workspace, name)
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(WORKSPACE_FILE_CAP + 1)
        except OSError:
            continue
        text = text[:WORKSPACE_FILE_CAP].strip()
        if text:
            parts.append(f"## {name}\n{text}")
    if extra.strip():
        parts.append(extra.strip())
    return "\n\n".join(parts)
