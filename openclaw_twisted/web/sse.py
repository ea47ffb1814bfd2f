"""Runs streamed as SSE: the shared push producer, and the chat completion chunks it writes."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from .._json import dumps
from ..agents.events import RunEnded, RunError, RunEvent, RunFailed, TextDelta, ToolCallDelta
from ..agents.runner import Run
from ..providers.interface import ToolCall
from .errors import run_error_reply

log = Logger()

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
)


def frame(data: Any) -> bytes:
    """One SSE ``data:`` frame (compact JSON never contains a newline)."""
    return b"data: " + dumps(data) + b"\n\n"


def usage_json(usage: dict[str, Any] | None) -> dict[str, int] | None:
    """A run's ``{input, output, total}`` usage in OpenAI's names; ``None`` if none was given."""
    if usage is None:
        return None
    prompt, completion = int(usage.get("input", 0)), int(usage.get("output", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(usage.get("total", prompt + completion)),
    }


def tool_call_json(call: ToolCall) -> dict[str, Any]:
    """One entry of an OpenAI ``message.tool_calls``."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def tool_delta_json(event: ToolCallDelta) -> dict[str, Any]:
    """One entry of an OpenAI chunk's ``delta.tool_calls``: id, type and name in a call's first."""
    if event.id is None:
        return {"index": event.index, "function": {"arguments": event.arguments_delta}}
    return {
        "index": event.index,
        "id": event.id,
        "type": "function",
        "function": {"name": event.name or "", "arguments": event.arguments_delta},
    }


@implementer(IPushProducer)
class RunStream:
    """
    Writes one run's events to ``request`` as an SSE response; subclasses say what frames.

    It is the request's push producer: while the transport is paused it does not ask the run
    for the next event, so the run stops pulling from the model and the provider's body is
    paused in turn.  ``done`` fires once the response is finished or the client has gone.
    A write that fails cancels the run (it must not wait for a reader that will never pull
    again, holding its session's lane) and ends the response, or drops the connection.
    While nothing is written for ``heartbeat`` seconds a ``: ping`` comment is sent.
    """

    #: What the log says when a stream breaks.
    name = "stream"

    def __init__(self, request: Request, run: Run, clock: IReactorTime, heartbeat: float) -> None:
        self.request = request
        self.run = run
        self.clock = clock
        self.heartbeat = heartbeat
        self.done: Deferred[None] = Deferred()
        self.paused = False
        self._ended = False
        self._waiting: Deferred[RunEvent | None] | None = None
        self._looping = False
        self._ping: IDelayedCall | None = None
        self._written_at = 0.0

    # What a subclass writes.

    def _opening(self) -> bytes:
        """The frames sent with the headers, before the first event."""
        raise NotImplementedError

    def _write_event(self, event: RunEvent | None) -> None:
        """Write one event with ``_write``, or the last frames with ``_end``."""
        raise NotImplementedError

    def _internal_error(self) -> bytes:
        """The last frames of a stream whose events could not be written."""
        raise NotImplementedError

    def start(self) -> None:
        """Send the headers and the opening frames, then follow the run."""
        request = self.request
        request.notifyFinish().addErrback(self._client_gone)
        request.setResponseCode(200)
        for name, value in SSE_HEADERS:
            request.setHeader(name, value)
        request.registerProducer(self, True)
        try:
            self._write(self._opening())
        except Exception:
            self._undeliverable(Failure())
            return
        self._pull()

    # IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pull()

    def stopProducing(self) -> None:
        self._client_gone(None)

    # The loop: one event at a time, and only while the client keeps up.

    def _pull(self) -> None:
        # A loop rather than recursion: events that are already waiting arrive synchronously.
        if self._looping:
            return
        self._looping = True
        try:
            while not self.paused and not self._ended and self._waiting is None:
                d = self._waiting = self.run.next_event()
                d.addCallbacks(self._arrived, self._broken)
        finally:
            self._looping = False

    def _arrived(self, event: RunEvent | None) -> None:
        self._waiting = None
        if self._ended:
            return
        try:
            self._write_event(event)
        except Exception:
            self._undeliverable(Failure())
            return
        self._pull()

    def _broken(self, failure: Failure) -> None:
        self._waiting = None
        if not self._ended:
            self._undeliverable(failure)

    def _undeliverable(self, failure: Failure) -> None:
        """An event could not be written: cancel the run, then end as best the socket allows."""
        log.failure("{name} failed", failure, name=self.name)
        self.run.cancel("internal_error")
        if not self._ended:
            try:
                self._end(self._internal_error())
                return
            except Exception:
                log.failure("could not end the {name}", name=self.name)
        # Nothing more can be written: a cut connection is what the client can still see.
        self._ended = True
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        transport = getattr(self.request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()
        if not self.done.called:
            self.done.callback(None)

    # Writing

    def _write(self, data: bytes) -> None:
        self.request.write(data)
        # Writes only note the time; the one timer moves when it fires (no callLater per chunk).
        self._written_at = self.clock.seconds()
        if self._ping is None:
            self._arm(self.heartbeat)

    def _arm(self, delay: float) -> None:
        if self.heartbeat > 0 and not self._ended:
            self._ping = self.clock.callLater(delay, self._beat)

    def _beat(self) -> None:
        self._ping = None
        if self._ended:
            return
        quiet = self.clock.seconds() - self._written_at
        if quiet < self.heartbeat:
            self._arm(self.heartbeat - quiet)
        elif self.paused:
            # Bytes are already waiting for the client: the connection is not idle.
            self._arm(self.heartbeat)
        else:
            try:
                self._write(PING)
            except Exception:
                self._undeliverable(Failure())

    def _end(self, last: bytes) -> None:
        self._ended = True
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        # The run may end because the client left, before our own notification arrives.
        if not getattr(self.request, "_disconnected", False):
            self.request.write(last)
            self.request.unregisterProducer()
            self.request.finish()
        if not self.done.called:
            self.done.callback(None)

    def _client_gone(self, reason: Failure | None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._ping is not None and self._ping.active():
            self._ping.cancel()
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.cancel()
        self.run.cancel()
        if self.request.channel is not None:
            # stopProducing comes before the request hears of the lost connection.
            self.request.unregisterProducer()
        if not self.done.called:
            self.done.callback(None)


class CompletionStream(RunStream):
    """One run's events as chat completion chunks (CONTRACT §4.5)."""

    name = "chat completion stream"

    def __init__(
        self,
        request: Request,
        run: Run,
        clock: IReactorTime,
        *,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        heartbeat: float,
    ) -> None:
        super().__init__(request, run, clock, heartbeat)
        self.completion_id = completion_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        # Every content chunk is the same frame around its text: encode the rest once.
        template = self._chunk({"content": None})
        before, _, after = template.rpartition(b'"content":null')
        self._content_frame = (before + b'"content":', after)

    def _opening(self) -> bytes:
        return self._chunk({"role": "assistant"})

    def _internal_error(self) -> bytes:
        reply = run_error_reply(RunError("internal_error", "Internal error."))
        return frame(reply.envelope()) + DONE

    def _write_event(self, event: RunEvent | None) -> None:
        if type(event) is TextDelta:
            before, after = self._content_frame
            self._write(before + dumps(event.delta) + after)
        elif event is None:
            self._end(DONE)
        elif type(event) is ToolCallDelta:
            self._write(self._chunk({"tool_calls": [tool_delta_json(event)]}))
        elif isinstance(event, RunEnded):
            finish = "stop"
            if event.tool_calls:
                finish = "tool_calls"
            elif event.stop_reason == "length":
                finish = "length"
            out = self._chunk({}, finish)
            if self.include_usage:
                usage = usage_json(event.usage.to_json())
                out += frame({**self._head(), "choices": [], "usage": usage})
            self._end(out + DONE)
        elif isinstance(event, RunFailed):
            self._end(frame(run_error_reply(event.error).envelope()) + DONE)

    def _head(self) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return frame({**self._head(), "choices": [choice]})
