"""What an agent run says while it runs: the events of CONTRACT §5.3, and the run's input."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ..providers.interface import Image, Sampling, StopReason, Usage

Stream = Literal["lifecycle", "assistant"]


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
    #: ``RunResult.text`` is empty and each ``assistant`` event's ``text`` is that event's
    #: delta alone, so observers (``AgentRunner.listeners``) that want the whole answer
    #: join the deltas they saw. A persisted run always keeps it (the transcript needs it).
    keep_text: bool = True
    #: Whether the consumer takes the answer as it is written; ``False`` (a non-streaming
    #: HTTP client) lets an HTTP provider ask its model for the whole answer at once.
    stream: bool = True


@attrs.frozen
class RunError:
    """Why a run failed, classified so each edge can render it its own way."""

    #: ``ProviderError.kind`` values, plus ``agent_timeout``, ``aborted`` and ``internal_error``.
    kind: str
    message: str
    status: int | None = None
    retry_after: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message}


class TextSoFar:
    """
    The answer up to one delta, joined only when someone asks.

    Every ``assistant`` event carries the cumulative text; materialising it per event would
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
class RunEvent:
    """``{runId, seq, ts, sessionKey, stream, data}``; ``to_json()`` is JSON-ready."""

    run_id: str
    seq: int
    ts: int
    session_key: str
    stream: Stream
    data: dict[str, Any]
    #: For ``assistant`` events: the cumulative answer (``data.text`` in ``to_json()``).
    so_far: TextSoFar | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def phase(self) -> str | None:
        return self.data.get("phase") if self.stream == "lifecycle" else None

    @property
    def text(self) -> str:
        """The answer so far (``assistant`` events); empty for other events."""
        return str(self.so_far) if self.so_far is not None else ""

    def to_json(self) -> dict[str, Any]:
        data = self.data if self.so_far is None else {**self.data, "text": self.text}
        return {
            "runId": self.run_id,
            "seq": self.seq,
            "ts": self.ts,
            "sessionKey": self.session_key,
            "stream": self.stream,
            "data": data,
        }


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
