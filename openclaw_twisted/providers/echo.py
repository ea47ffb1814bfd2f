"""The built-in offline model: streams the user's last message back, word by word."""

from __future__ import annotations

import re

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from .interface import (
    Finish,
    IModelStream,
    IProvider,
    Message,
    ModelEvent,
    ModelRequest,
    TextDelta,
    Usage,
)

_PIECES = re.compile(r"\S+\s*|\s+")


def _tokens(text: str) -> int:
    # The usual rule of thumb (about four characters a token) keeps usage plausible.
    return (len(text) + 3) // 4


def _content(message: Message) -> str:
    # Tools are never called here, but a conversation that had them still costs its prompt.
    calls = "".join(c.name + c.arguments for c in message.tool_calls)
    result = message.tool_result.content if message.tool_result is not None else ""
    return message.text + calls + result


@implementer(IModelStream)
class _EchoStream:
    def __init__(self, pieces: list[str], finish: Finish) -> None:
        self._events: list[ModelEvent] = [TextDelta(p) for p in pieces]
        self._events.append(finish)
        self._events.reverse()

    def next(self) -> Deferred[ModelEvent | None]:
        return succeed(self._events.pop() if self._events else None)

    def cancel(self) -> None:
        self._events.clear()


@implementer(IProvider)
@attrs.define
class EchoProvider:
    """
    Deterministic and offline: what runs when no model provider is configured.  It calls no
    tools: a request that offers some is answered with the echo all the same.
    """

    name: str = "echo"

    def open(self, request: ModelRequest) -> Deferred[IModelStream]:
        user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        text = user.text if user is not None else ""
        pieces = _PIECES.findall(text)
        stop: str = "stop"
        limit = request.sampling.max_tokens
        if limit is not None and len(pieces) > limit:
            pieces, stop = pieces[:limit], "length"
        prompt = request.system + "".join(_content(m) for m in request.messages)
        usage = Usage(_tokens(prompt), _tokens("".join(pieces)))
        finish = Finish("length" if stop == "length" else "stop", usage)
        return succeed(_EchoStream(pieces, finish))
