"""What the agent runner asks of a model provider, and what comes back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

Role = Literal["user", "assistant", "tool"]
#: ``tool_calls``: the model stopped to have the tools it called run (OpenAI ``tool_calls``,
#: Anthropic ``tool_use``).
StopReason = Literal["stop", "length", "tool_calls"]


@attrs.frozen
class Usage:
    """
    Token counts as the provider reported them; ``Usage()`` (both ``None``) when it gave none,
    which is never shown as zeros.  A count missing from a report that was given counts 0.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def known(self) -> bool:
        """Whether the provider reported any usage."""
        return self.input_tokens is not None or self.output_tokens is not None

    @property
    def total_tokens(self) -> int | None:
        if not self.known:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def to_json(self) -> dict[str, int] | None:
        """``{input, output, total}``, or ``None`` when the provider reported no usage."""
        if not self.known:
            return None
        return {
            "input": self.input_tokens or 0,
            "output": self.output_tokens or 0,
            "total": (self.input_tokens or 0) + (self.output_tokens or 0),
        }


@attrs.frozen
class Image:
    """An image for the model: decoded bytes of a data URI, or a remote URL when allowed."""

    mime: str
    data: bytes = b""
    url: str | None = None


@attrs.frozen
class ToolSpec:
    """A function the model may call: its name, what it does, its JSON-schema parameters."""

    name: str
    description: str | None = None
    #: The JSON schema of the arguments object; ``None`` when the tool takes none.
    parameters: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    #: OpenAI's ``strict`` (schema-exact arguments); ``None`` leaves it unset.
    strict: bool | None = None


@attrs.frozen
class NamedTool:
    """A ``tool_choice`` that makes the model call this one function."""

    name: str


#: ``auto``: the model decides; ``none``: no call; ``required``: at least one call.
ToolChoice = Literal["auto", "none", "required"] | NamedTool


@attrs.frozen
class ToolCall:
    """A call the assistant made: its id, the function's name, the arguments as JSON text."""

    id: str
    name: str
    #: Exactly as the model wrote them (JSON text, possibly invalid: models err).
    arguments: str = "{}"


@attrs.frozen
class ToolCallResult:
    """What a tool call gave back, for the model's next turn."""

    tool_call_id: str
    content: str
    is_error: bool = False


def _consistent(message: Message, attribute: object, value: ToolCallResult | None) -> None:
    if message.tool_calls and message.role != "assistant":
        raise ValueError(f"a {message.role} message cannot carry tool calls")
    if (message.role == "tool") != (message.tool_result is not None):
        raise ValueError("a tool message carries a tool_result, and only a tool message does")
    if message.role == "tool" and (message.text or message.images):
        raise ValueError("a tool message's content is its tool_result's")


@attrs.frozen
class Message:
    """
    One turn of the conversation as a provider sees it: user or assistant text (the
    assistant's possibly with the tool calls it made), or, with role ``tool``, the result
    of one tool call (see L{Message.result}).
    """

    role: Role
    text: str
    images: tuple[Image, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_result: ToolCallResult | None = attrs.field(default=None, validator=_consistent)

    @classmethod
    def result(cls, tool_call_id: str, content: str, is_error: bool = False) -> Message:
        """The ``tool`` message that answers the call ``tool_call_id``."""
        return cls("tool", "", tool_result=ToolCallResult(tool_call_id, content, is_error))


@attrs.frozen
class Sampling:
    """The OpenAI sampling fields, already validated at the edge; ``None`` means unset."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@attrs.frozen
class ModelRequest:
    """A complete request to one model: system prompt, conversation, sampling."""

    model: str
    system: str
    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()
    #: Whether the answer is wanted as it is written.  ``False`` (nobody reads the deltas, e.g.
    #: a non-streaming HTTP client) lets an HTTP provider ask for one whole JSON answer.
    stream: bool = True
    #: The functions the model may call (none: a plain text answer, as before tools).
    tools: tuple[ToolSpec, ...] = ()
    #: ``None``: the provider's default (``auto`` when there are tools).
    tool_choice: ToolChoice | None = None
    #: ``False``: at most one call per answer; ``None``: the provider's default (parallel).
    parallel_tool_calls: bool | None = None


@attrs.frozen
class TextDelta:
    """A piece of the assistant's answer, as it arrived."""

    text: str


@attrs.frozen
class Finish:
    """The model finished: why, and what it cost (``Usage()`` when the provider did not say)."""

    stop_reason: StopReason = "stop"
    usage: Usage = Usage()


@attrs.frozen
class ToolCallDelta:
    """
    A piece of a tool call, as the model produced it.  ``index`` numbers the calls of one
    answer from 0 (parallel calls may interleave); the first delta of a call carries its
    ``id`` and ``name`` (later ones ``None``); the ``arguments_delta`` of all its deltas,
    joined, are the call's arguments JSON text exactly.
    """

    index: int
    id: str | None
    name: str | None
    arguments_delta: str = ""


ModelEvent = TextDelta | ToolCallDelta | Finish

ProviderErrorKind = Literal[
    "unavailable",  # refused, reset, DNS, TLS: the provider could not be reached
    "auth",  # 401/403: the key in the config is wrong
    "rate_limited",  # 429
    "upstream_error",  # 5xx, or a broken/garbled stream
    "bad_request",  # 4xx other than the above: our request was refused
    "timeout",  # no answer in time
    "misconfigured",  # unknown provider or model, unsupported api
    "overloaded",  # the gateway's own cap on provider requests (gateway.limits)
]


class ProviderError(Exception):
    """A model provider failed; ``kind`` says how, so the edge can pick a status."""

    def __init__(
        self,
        kind: ProviderErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ProviderErrorKind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def try_next_model(self) -> bool:
        """Whether a configured fallback model should be tried after this failure."""
        return self.kind in ("unavailable", "rate_limited", "upstream_error", "timeout")

    def __repr__(self) -> str:
        return f"ProviderError({self.kind!r}, {self.message!r}, status={self.status!r})"


class IModelStream(Interface):
    """The events of one model response, pulled one at a time."""

    def next() -> Deferred[ModelEvent | None]:
        """
        The next event; ``None`` after the ``Finish``.

        Fails with L{ProviderError} if the stream breaks.  While nobody asks, the provider's
        response body is paused once a few events are buffered.
        """

    def cancel() -> None:
        """Abandon the response and close its connection; idempotent."""


class IProvider(Interface):
    """A model provider: one configured ``models.providers`` entry (or the built-in echo)."""

    name: str = Attribute("The provider's name, the part before ``/`` in a model ref.")

    def open(request: ModelRequest) -> Deferred[IModelStream]:
        """
        Send ``request``; fire once the provider has accepted it (2xx, headers in).

        Fails with L{ProviderError}.  Cancelling the Deferred aborts the HTTP request.
        """
