"""The configured agents: defaults applied, the default agent chosen, system prompts built."""

from __future__ import annotations

import os
import re

import attrs

from ..config import WORKSPACE_FILES, AgentConfig, Config, ModelChoice

_KEY_AGENT = re.compile(r"^agent:([a-z0-9][a-z0-9_-]{0,63}):", re.IGNORECASE)

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
