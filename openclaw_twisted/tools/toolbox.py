"""Each agent's own tools as its policy allows them, and the reactor parts they run with."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.interfaces import IReactorProcess, IReactorThreads, IReactorTime

from ..providers.interface import ToolSpec
from .interface import Cancellation, ThreadRunner, ToolContext, run_inline, thread_pool_runner
from .policy import ToolsConfig, tools_for_agent
from .registry import ToolRegistry

_NONE = ToolRegistry()


@attrs.define
class Toolbox:
    """
    What the agent runner asks for tools: the registry and model specs of one agent (built
    once per agent), and a context for one run's calls.  An agent has tools of its own only
    where the config has a ``tools`` section, globally or in its ``agents.list[]`` entry.
    """

    config: ToolsConfig
    clock: IReactorTime
    run_in_thread: ThreadRunner = run_inline
    process_reactor: IReactorProcess | None = None
    _built: dict[str, tuple[ToolRegistry, tuple[ToolSpec, ...]]] = attrs.field(
        factory=dict, init=False
    )

    @classmethod
    def for_reactor(cls, config: ToolsConfig, reactor: Any) -> Toolbox:
        """File work on the reactor's thread pool and ``exec`` by its ``spawnProcess``, where
        it has them (a test's fake reactor may have neither)."""
        threads = thread_pool_runner(reactor) if IReactorThreads.providedBy(reactor) else None
        process = reactor if IReactorProcess.providedBy(reactor) else None
        return cls(config, reactor, threads or run_inline, process)

    def registry(self, agent_id: str) -> ToolRegistry:
        return self._build(agent_id)[0]

    def specs(self, agent_id: str) -> tuple[ToolSpec, ...]:
        """The agent's tools as the model is shown them (none: the agent has no tools)."""
        return self._build(agent_id)[1]

    def _build(self, agent_id: str) -> tuple[ToolRegistry, tuple[ToolSpec, ...]]:
        built = self._built.get(agent_id)
        if built is None:
            registry = tools_for_agent(self.config, agent_id) if self._on(agent_id) else _NONE
            specs = tuple(ToolSpec(t.name, t.description, t.parameters) for t in registry)
            built = self._built[agent_id] = (registry, specs)
        return built

    def _on(self, agent_id: str) -> bool:
        return self.config.configured or agent_id in self.config.agents

    def context(
        self, agent_id: str, workspace: str, session_key: str, cancellation: Cancellation
    ) -> ToolContext:
        """Where one run's calls run: the agent's workspace, cancelled with the run."""
        return ToolContext(
            workspace=workspace,
            clock=self.clock,
            run_in_thread=self.run_in_thread,
            process_reactor=self.process_reactor,
            cancellation=cancellation,
            agent_id=agent_id,
            session_key=session_key,
        )
