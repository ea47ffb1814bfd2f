"""What an agent run says while it runs: the events of CONTRACT §5.3, and the run's input."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

from ..providers.interface import (
    Image,
    Message,
    Sampling,
    StopReason,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)

Stream = Literal["lifecycle", "assistant", "tool"]


@attrs.frozen
class RunRequest:
    """One agent turn, whoever asked for it (HTTP, WebSocket or the CLI)."""

    agent_id: str
    session_key: str
    message: str
    images: tuple[Image, ...] = ()
    extra_system_prompt: str = ""
    sampling: Sampling = Sampling()
    #: Whether the session is kept on disk (stateless HTTP requests are not, by default).
    persist: bool = True
    run_id: str | None = None
    #: Whether the run keeps the whole answer while it streams. A run that is neither
    #: persisted nor keeping its text holds no more of the answer than the events not yet
    #: taken (a stateless streaming HTTP answer of any size costs no memory): its
    #: ``RunResult.text`` is empty and each L{TextDelta}'s ``text`` is that event's
    #: delta alone, so observers (``AgentRunner.listeners``) that want the whole answer
    #: join the deltas they saw. A persisted run always keeps it (the transcript needs it).
    keep_text: bool = True
    #: Whether the consumer takes the answer as it is written; ``False`` (a non-streaming
    #: HTTP client) lets an HTTP provider ask its model for the whole answer at once.
    stream: bool = True
    #: The ``/v1/responses`` id this turn answers as, kept in its assistant transcript record
    #: (``responseId``) so a later ``previous_response_id`` can be found in the session.
    response_id: str | None = None
    #: The client's own function tools: a call to one ends the run with ``tool_calls``.
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    #: The turn as real conversation turns (user text, the assistant's tool calls, tool
    #: results), after the session's history; ``None``: one user turn of ``message`` and
    #: ``images``.  ``message`` then only names the turn (logs).
    conversation: tuple[Message, ...] | None = None

    def turn(self) -> tuple[Message, ...]:
        """The messages this turn adds to the conversation."""
        if self.conversation is not None:
            return self.conversation
        return (Message("user", self.message, self.images),)


@attrs.frozen
class RunError:
    """Why a run failed, classified so each edge can render it its own way."""

    #: ``ProviderError.kind`` values, plus ``agent_timeout``, ``aborted``, ``internal_error``
    #: and ``tool_rounds`` (the model kept calling tools after ``maxToolRounds``).
    kind: str
    message: str
    status: int | None = None
    retry_after: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message}


class TextSoFar:
    """
    The answer up to one delta, joined only when someone asks.

    Every L{TextDelta} carries the cumulative text; materialising it per event would
    cost time and memory quadratic in the answer's length, so events share one list of
    deltas and each remembers how many were in before it.
    """

    __slots__ = ("_count", "_parts", "_text")

    def __init__(self, parts: list[str], count: int) -> None:
        self._parts = parts
        self._count = count
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = "".join(self._parts[: self._count])
        return self._text


@attrs.frozen
class _RunEvent:
    """What every run event carries: ``{runId, seq, ts, sessionKey}`` of CONTRACT §5.3."""

    run_id: str
    seq: int
    ts: int
    session_key: str

    #: The §5.3 ``stream`` and (``lifecycle`` events) ``data.phase``: fixed per event type.
    stream: ClassVar[Stream] = "lifecycle"
    phase: ClassVar[str | None] = None

    @property
    def text(self) -> str:
        """The answer so far (L{TextDelta}); empty for other events."""
        return ""

    @property
    def data(self) -> dict[str, Any]:
        """The §5.3 ``data`` object (a JSON view for tests and logs; edges map by type)."""
        data: dict[str, Any] = to_json(self)["data"]  # type: ignore[arg-type]
        return data

    def to_json(self) -> dict[str, Any]:
        return to_json(self)  # type: ignore[arg-type]


@attrs.frozen
class RunStarted(_RunEvent):
    """The run reached a model and its answer begins (``lifecycle`` ``start``)."""

    started_at: int
    #: The model ref that answered (``provider/model``).
    model: str
    phase: ClassVar[str | None] = "start"


@attrs.frozen
class TextDelta(_RunEvent):
    """A piece of the answer (``assistant``); ``text`` is the answer up to and with it."""

    delta: str
    so_far: TextSoFar = attrs.field(eq=False, repr=False)
    stream: ClassVar[Stream] = "assistant"

    @property
    def text(self) -> str:
        return str(self.so_far)


@attrs.frozen
class RunEnded(_RunEvent):
    """
    The run answered (``lifecycle`` ``end``): why the model stopped, what it cost, and
    (stop reason ``tool_calls``) the client tool calls it ended with.
    """

    stop_reason: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    phase: ClassVar[str | None] = "end"


@attrs.frozen
class ToolCallDelta(_RunEvent):
    """
    A piece of a client tool call as the model writes it (``tool`` ``delta``): ``index``
    numbers the run's client calls from 0; the first piece of a call has its ``id`` and
    ``name``; the ``arguments_delta`` pieces joined are its arguments JSON text.
    """

    index: int
    id: str | None
    name: str | None
    arguments_delta: str
    stream: ClassVar[Stream] = "tool"
    phase: ClassVar[str | None] = "delta"


@attrs.frozen
class ToolStarted(_RunEvent):
    """The gateway began one of the agent's own tool calls (``tool`` ``start``)."""

    call: ToolCall
    stream: ClassVar[Stream] = "tool"
    phase: ClassVar[str | None] = "start"


@attrs.frozen
class ToolResult(_RunEvent):
    """One of the agent's own tool calls ended (``tool`` ``result``): what it gave the model."""

    call: ToolCall
    result: str
    is_error: bool = False
    stream: ClassVar[Stream] = "tool"
    phase: ClassVar[str | None] = "result"


@attrs.frozen
class RunFailed(_RunEvent):
    """The run failed, was cancelled or timed out (``lifecycle`` ``error``)."""

    error: RunError
    phase: ClassVar[str | None] = "error"


#: The events of a run, in order: L{RunStarted}, L{TextDelta}s, then one of L{RunEnded} and
#: L{RunFailed} (a run that never reached a model has only the L{RunFailed}).
#: Between them, a run with tools has L{ToolCallDelta}s (client tools), and L{ToolStarted} /
#: L{ToolResult} pairs (the agent's own tools, between two model answers).
RunEvent = RunStarted | TextDelta | ToolCallDelta | ToolStarted | ToolResult | RunEnded | RunFailed
#: The last event of every run.
FINAL_EVENTS = (RunEnded, RunFailed)


def to_json(event: RunEvent) -> dict[str, Any]:
    """The one mapping of a run event to CONTRACT §5.3's ``{runId, seq, ts, sessionKey,
    stream, data}`` (the WebSocket ``agent`` event's payload)."""
    data: dict[str, Any]
    if isinstance(event, TextDelta):
        data = {"delta": event.delta, "text": event.text}
    elif isinstance(event, RunStarted):
        data = {"phase": "start", "startedAt": event.started_at, "model": event.model}
    elif isinstance(event, RunEnded):
        data = {"phase": "end", "stopReason": event.stop_reason, "usage": event.usage.to_json()}
        if event.tool_calls:
            data["toolCalls"] = [call_json(c) for c in event.tool_calls]
    elif isinstance(event, ToolCallDelta):
        data = {"phase": "delta", "index": event.index}
        if event.id is not None:
            data["toolCallId"] = event.id
        if event.name is not None:
            data["name"] = event.name
        data["argsDelta"] = event.arguments_delta
    elif isinstance(event, ToolStarted):
        call = event.call
        data = {"phase": "start", "name": call.name, "toolCallId": call.id, "args": call.arguments}
    elif isinstance(event, ToolResult):
        call = event.call
        data = {
            "phase": "result",
            "name": call.name,
            "toolCallId": call.id,
            "isError": event.is_error,
            "result": event.result,
        }
    else:
        data = {"phase": "error", "error": event.error.to_json()}
    return {
        "runId": event.run_id,
        "seq": event.seq,
        "ts": event.ts,
        "sessionKey": event.session_key,
        "stream": event.stream,
        "data": data,
    }


#: The longest tool note the CLI prints (a call's arguments can be a whole file).
NOTE_CHARS = 160


def tool_note(name: object, arguments: object) -> str:
    """The CLI's one line for a tool call the agent made: ``[tool] read {"path": "a"}``."""
    args = " ".join(str(arguments).split())
    line = f"[tool] {name} {args}".rstrip()
    return line if len(line) <= NOTE_CHARS else line[: NOTE_CHARS - 3] + "..."


def call_json(call: ToolCall) -> dict[str, str]:
    """A tool call in CONTRACT §5.3's names: ``{id, name, arguments}`` (arguments JSON text)."""
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


@attrs.frozen
class RunResult:
    """
    How a run ended: the whole answer (empty for a run that neither persisted nor kept its
    text: see ``RunRequest.keep_text``), why it stopped, what it cost.
    """

    run_id: str
    session_key: str
    agent_id: str
    text: str
    stop_reason: StopReason | Literal["aborted", "error"]
    usage: Usage
    error: RunError | None = None
    #: Stop reason ``tool_calls``: the client tool calls the run ended with, for the client.
    tool_calls: tuple[ToolCall, ...] = ()
