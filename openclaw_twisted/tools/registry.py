"""The tools one agent run may call, by name: lookup, OpenAI tool specs, and invocation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._args import parse_arguments
from .interface import ITool, ToolContext, ToolError, ToolResult

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_log = Logger()


class UnknownToolError(LookupError):
    """A call named a tool this registry does not have."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        names = ", ".join(available) or "none"
        self.name = name
        self.message = f"unknown tool {name!r}; the tools available are: {names}"
        super().__init__(self.message)


class ToolRegistry:
    """Tools by name, in registration order (the order the model is shown them)."""

    def __init__(self, tools: Iterable[ITool] = ()) -> None:
        self._tools: dict[str, ITool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: ITool) -> None:
        """Add a tool; its name must be a valid OpenAI function name and not taken."""
        if not ITool.providedBy(tool):
            raise TypeError(f"{tool!r} does not provide ITool")
        if not isinstance(tool.name, str) or not _NAME.match(tool.name):
            raise ValueError(f"tool name {tool.name!r} must be 1-64 of A-Z, a-z, 0-9, _ and -")
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def get(self, name: str) -> ITool:
        """The tool called ``name``; ``UnknownToolError`` (naming the ones there are) if none."""
        tool = self._tools.get(name)
        if tool is None:
            raise UnknownToolError(name, self._tools)
        return tool

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[ITool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        """The tools as OpenAI chat-completions ``tools`` entries (``type: function``)."""
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in self
        ]

    def invoke(
        self, name: str, arguments: str | Mapping[str, Any] | None, context: ToolContext
    ) -> Deferred[ToolResult]:
        """Run one call as a model made it; always fires with a ``ToolResult`` for the model.

        ``arguments`` may be OpenAI's JSON text. An unknown tool, bad arguments (``ToolError``)
        or a tool's own bug become an error result, so one bad call never ends the run. The
        call is cancelled when the Deferred is, and when ``context.cancellation`` fires; a
        cancelled call fails with ``CancelledError`` (the run is over: nobody reads a result).
        """
        try:
            tool = self.get(name)
            args = parse_arguments(arguments, name)
        except (UnknownToolError, ToolError) as e:
            return succeed(ToolResult.error(e.message))
        return _invoke(tool, args, context)


def _invoke(tool: ITool, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
    def call() -> Any:
        result = tool.invoke(args, context)
        # A Deferred as it is; an ``async def invoke`` gives a coroutine to drive.
        return result if isinstance(result, Deferred) else ensureDeferred(result)

    d: Deferred[ToolResult] = maybeDeferred(call)
    unsubscribe = context.cancellation.on_cancel(d.cancel)

    def settle(outcome: object) -> ToolResult | Failure:
        unsubscribe()
        if isinstance(outcome, ToolResult):
            return outcome
        if not isinstance(outcome, Failure):
            _log.error(
                "tool {tool} returned {kind}, not a ToolResult",
                tool=tool.name,
                kind=type(outcome).__name__,
            )
            return ToolResult.error(
                f"{tool.name}: the tool failed unexpectedly; see the gateway log"
            )
        if isinstance(outcome.value, ToolError):
            return ToolResult.error(outcome.value.message)
        if outcome.check(CancelledError):
            return outcome
        _log.failure("tool {tool} failed", outcome, tool=tool.name)
        return ToolResult.error(f"{tool.name}: the tool failed unexpectedly; see the gateway log")

    return d.addBoth(settle)
