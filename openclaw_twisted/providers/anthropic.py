"""``anthropic-messages``: the Anthropic Messages API, streaming."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..config import ProviderConfig
from ._http import HTTPProvider, cut, describe, loads
from .interface import (
    Finish,
    Image,
    IModelStream,
    IProvider,
    Message,
    ModelEvent,
    ModelRequest,
    ProviderError,
    StopReason,
    TextDelta,
    Usage,
)
from .sse import SSEEvent

API_VERSION = "2023-06-01"
#: ``max_tokens`` is required by the API; used when neither the request nor the config sets it.
DEFAULT_MAX_TOKENS = 4096


def image_block(image: Image) -> dict[str, Any]:
    if image.url:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    data = base64.b64encode(image.data).decode("ascii")
    return {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": data}}


def messages_json(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """
    The conversation as the API accepts it: no empty turns, roles alternating (consecutive
    turns of one role joined), starting with the user.
    """
    merged: list[tuple[str, list[str], list[Image]]] = []
    for m in messages:
        if not m.text and not m.images:
            continue
        if merged and merged[-1][0] == m.role:
            merged[-1][1].append(m.text)
            merged[-1][2].extend(m.images)
        elif merged or m.role == "user":
            merged.append((m.role, [m.text], list(m.images)))
    out: list[dict[str, Any]] = []
    for role, texts, images in merged:
        text = "\n\n".join(t for t in texts if t)
        if not images:
            out.append({"role": role, "content": text})
            continue
        blocks = [image_block(i) for i in images]
        if text:
            blocks.append({"type": "text", "text": text})
        out.append({"role": role, "content": blocks})
    return out


def request_body(request: ModelRequest, default_max_tokens: int) -> dict[str, Any]:
    """The ``/v1/messages`` body for ``request``, streaming or whole."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": s.max_tokens or default_max_tokens,
        "messages": messages_json(request.messages),
        "stream": request.stream,
    }
    if request.system:
        body["system"] = request.system
    if s.temperature is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1.
        body["temperature"] = min(s.temperature, 1.0)
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.stop:
        body["stop_sequences"] = list(s.stop)
    return body


def stop_reason(reason: object) -> StopReason:
    """``max_tokens`` is ``length``; ``end_turn``, ``stop_sequence`` and the rest are ``stop``."""
    return "length" if reason == "max_tokens" else "stop"


class MessageDecoder:
    """
    message_start / content_block_* / message_delta / message_stop → deltas and one
    ``Finish`` (input tokens from ``message_start``, output tokens from ``message_delta``).

    ``message_stop`` says the message is complete; so does a ``message_delta`` with a
    ``stop_reason`` (a body that ends after it lost only the end marker).  A body that ends
    before either, or a reset, is a cut.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = False
        self.started = False
        self.stopped = False
        self.answered = False
        self.stop: StopReason = "stop"
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def _finish(self) -> Finish:
        known = self.input_tokens is not None or self.output_tokens is not None
        return Finish(
            self.stop, Usage(self.input_tokens or 0, self.output_tokens or 0) if known else Usage()
        )

    def event(self, event: SSEEvent) -> list[ModelEvent]:
        data = loads(self.label, event.data)
        if not isinstance(data, dict):
            raise ProviderError(
                "upstream_error", f"{self.label} sent an unexpected event: {describe(event.data)}"
            )
        kind = data.get("type") or event.event
        if kind == "message_start":
            self.started = True
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self.input_tokens = _input_tokens(usage)
                self.output_tokens = _count(usage.get("output_tokens"))
        elif kind == "content_block_start":
            block = data.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                self.answered = True
                return [TextDelta(str(block["text"]))]
        elif kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    self.answered = True
                    return [TextDelta(text)]
        elif kind == "message_delta":
            delta = data.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if reason:
                self.stopped = True
                self.stop = stop_reason(reason)
            usage = data.get("usage")
            if isinstance(usage, dict):
                if "output_tokens" in usage:
                    self.output_tokens = _count(usage.get("output_tokens"))
                if "input_tokens" in usage:
                    self.input_tokens = _input_tokens(usage) or self.input_tokens or 0
        elif kind == "message_stop":
            self.done = True
            return [self._finish()]
        elif kind == "error":
            err = data.get("error")
            message = err.get("message") if isinstance(err, dict) else err
            raise ProviderError(
                "upstream_error", f"{self.label} reported an error: {describe(str(message))}"
            )
        # ping, content_block_stop and event types added later carry nothing we need.
        return []

    def end(self) -> list[ModelEvent]:
        if not self.stopped:
            raise cut(self.label, self.answered)
        self.done = True
        return [self._finish()]

    def complete(self, answer: Any) -> list[ModelEvent]:
        content = answer.get("content") if isinstance(answer, dict) else None
        if not isinstance(content, list):
            raise ProviderError(
                "upstream_error", f"{self.label} answered JSON that is not a message"
            )
        text = "".join(
            str(b.get("text") or "")
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
        self.stop = stop_reason(answer.get("stop_reason"))
        usage = answer.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = _input_tokens(usage)
            self.output_tokens = _count(usage.get("output_tokens"))
        return [*([TextDelta(text)] if text else []), self._finish()]


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _input_tokens(usage: dict[str, Any]) -> int:
    # Cached prompt tokens are counted apart from input_tokens; the prompt is all of them.
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(_count(usage.get(k)) for k in keys)


@implementer(IProvider)
class AnthropicMessagesProvider(HTTPProvider):
    """Streams ``POST <baseUrl>/v1/messages`` and parses Anthropic's events as they arrive."""

    def __init__(self, config: ProviderConfig, http: Any, clock: IReactorTime) -> None:
        super().__init__(config, http, clock)

    def open(self, request: ModelRequest) -> Deferred[IModelStream]:
        headers = {"anthropic-version": API_VERSION}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        default = self.max_tokens(request.model) or DEFAULT_MAX_TOKENS
        base = self.config.base_url
        # OpenClaw's baseUrl is the API root; one that already ends in /v1 works too.
        url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        return self.post(
            url,
            headers,
            request_body(request, default),
            MessageDecoder(self._label),
        )
