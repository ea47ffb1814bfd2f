"""What an agent tool is: its interface, the context it runs in, and what it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorProcess, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from zope.interface import Attribute, Interface

T = TypeVar("T")


class ThreadRunner(Protocol):
    """Runs a blocking callable off the reactor thread; the Deferred fires on the reactor."""

    def __call__(self, f: Callable[[], T], /) -> Deferred[T]: ...


class ToolError(Exception):
    """The call cannot be carried out as asked; the message tells the model what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class ToolResult:
    """What a tool call produced: text for the model, whether it failed, and structured extras."""

    content: str
    is_error: bool = False
    details: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def error(cls, message: str, **details: Any) -> ToolResult:
        return cls(message, is_error=True, details=details)


@attrs.define
class Cancellation:
    """The run's cancel signal: tools (or the registry) subscribe to hear that the run is over.

    Cancelling the Deferred a tool's ``invoke`` returned is the primary way to stop one call;
    this hook lets a run stop every call it started at once (``ToolRegistry.invoke`` links
    the two).
    """

    _callbacks: list[Callable[[], None]] = attrs.field(factory=list, init=False)
    cancelled: bool = attrs.field(default=False, init=False)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when cancelled (now, if already); returns an unsubscribe function."""
        if self.cancelled:
            callback()
            return lambda: None
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def run_inline(f: Callable[[], T]) -> Deferred[T]:
    """A ``ThreadRunner`` that runs on the caller's thread (tests, ``SynchronousTestCase``)."""
    return maybeDeferred(f)


def thread_pool_runner(reactor: IReactorThreads) -> ThreadRunner:
    """A ``ThreadRunner`` on the reactor's thread pool; results come back on the reactor."""

    def run(f: Callable[[], T]) -> Deferred[T]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    return run


@attrs.frozen
class ToolContext:
    """Where and with what a tool call runs: the agent's workspace and the injected reactor parts.

    ``workspace`` is the directory every path argument is relative to (and must stay inside).
    ``clock`` times calls out; ``run_in_thread`` carries blocking file I/O off the reactor;
    ``process_reactor`` spawns subprocesses (``None``: tools that need one refuse to run).
    """

    workspace: str
    clock: IReactorTime
    run_in_thread: ThreadRunner = run_inline
    process_reactor: IReactorProcess | None = None
    cancellation: Cancellation = attrs.field(factory=Cancellation)
    agent_id: str = "main"
    session_key: str | None = None

    @classmethod
    def for_reactor(cls, reactor: Any, workspace: str, **kwargs: Any) -> ToolContext:
        """A context on a real reactor: its clock, its thread pool, its ``spawnProcess``."""
        return cls(
            workspace=workspace,
            clock=reactor,
            run_in_thread=thread_pool_runner(reactor),
            process_reactor=reactor,
            **kwargs,
        )


class ITool(Interface):
    """A function the model can call, described the way OpenAI function tools are."""

    name = Attribute("The name the model calls it by: 1-64 of [A-Za-z0-9_-].")
    description = Attribute("What it does, for the model (one or two sentences).")
    parameters = Attribute("A JSON schema (a dict) for the arguments object.")

    def invoke(args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        """Run the call. Fails with ``ToolError`` for a bad call; cancel the Deferred to stop it.

        Implementations may also be ``async def`` (``ToolRegistry.invoke`` accepts either).
        """
