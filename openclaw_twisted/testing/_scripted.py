"""A model provider that answers from a script, on an injected clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface import implementer

from ..providers.interface import (
    Finish,
    IModelStream,
    IProvider,
    ModelEvent,
    ModelRequest,
    ProviderError,
    StopReason,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)


@attrs.frozen
class Script:
    """What a L{ScriptedProvider} answers to one request."""

    deltas: Sequence[str] = ("Hello", " from", " the", " script.")
    usage: Usage = Usage(7, 4)
    stop_reason: StopReason = "stop"
    #: Refuse the request outright (the model never accepts it).
    refuse: ProviderError | None = None
    #: Break the stream with this error after ``fail_after`` deltas.
    fail: ProviderError | None = None
    fail_after: int = 0
    #: Seconds (on the injected clock) before accepting and before each delta.
    accept_delay: float = 0.0
    delta_delay: float = 0.0
    #: Accept, then never send anything (for timeouts and cancellation).
    hang: bool = False
    #: After the deltas, the model calls these (one L{ToolCallDelta} each, in order); the
    #: stop reason is then ``tool_calls``.
    tool_calls: Sequence[ToolCall] = ()


@implementer(IModelStream)
class ScriptedStream:
    """The stream a L{ScriptedProvider} returns; records whether it was cancelled."""

    def __init__(self, script: Script, clock: IReactorTime | None) -> None:
        self.script = script
        self.clock = clock
        self.cancelled = False
        self.sent = 0
        self._finished = False
        self._pending: Deferred[ModelEvent | None] | None = None

    def _event(self) -> ModelEvent | None:
        s = self.script
        if s.fail is not None and self.sent >= s.fail_after:
            raise s.fail
        if self.sent < len(s.deltas):
            self.sent += 1
            return TextDelta(s.deltas[self.sent - 1])
        called = self.sent - len(s.deltas)
        if called < len(s.tool_calls):
            self.sent += 1
            c = s.tool_calls[called]
            return ToolCallDelta(called, c.id, c.name, c.arguments)
        if not self._finished:
            self._finished = True
            return Finish("tool_calls" if s.tool_calls else s.stop_reason, s.usage)
        return None

    def next(self) -> Deferred[ModelEvent | None]:
        if self.cancelled:
            return succeed(None)
        if self.script.hang:
            self._pending = Deferred()
            return self._pending
        if self.script.delta_delay and self.clock is not None and not self._finished:
            d = deferLater(self.clock, self.script.delta_delay, self._event)
            self._pending = d
            return d
        try:
            return succeed(self._event())
        except ProviderError as e:
            return fail(e)

    def cancel(self) -> None:
        self.cancelled = True
        if self._pending is not None and not self._pending.called:
            self._pending.cancel()


@implementer(IProvider)
class ScriptedProvider:
    """
    A model provider that answers from a script: deltas, usage, errors and delays.

    ``requests`` records every L{ModelRequest} it received, ``streams`` every stream it
    opened, so a test can check what the model was asked and whether it was cancelled.
    """

    def __init__(
        self,
        script: Script | Callable[[ModelRequest], Script] = Script(),
        *,
        name: str = "scripted",
        clock: IReactorTime | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self._script = script
        self.requests: list[ModelRequest] = []
        self.streams: list[ScriptedStream] = []

    def open(self, request: ModelRequest) -> Deferred[IModelStream]:
        self.requests.append(request)
        script = self._script(request) if callable(self._script) else self._script
        if script.refuse is not None:
            return fail(script.refuse)
        stream = ScriptedStream(script, self.clock)
        self.streams.append(stream)
        if script.accept_delay and self.clock is not None:
            return deferLater(self.clock, script.accept_delay, lambda: stream)
        return succeed(stream)
