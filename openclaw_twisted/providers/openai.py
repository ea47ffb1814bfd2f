"""``openai-completions``: streaming chat completions (OpenAI, Ollama, vLLM, LiteLLM, ...)."""

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


def image_url(image: Image) -> str:
    """A remote URL as is, else a ``data:`` URI of the image bytes."""
    if image.url:
        return image.url
    return f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"


def message_json(message: Message) -> dict[str, Any]:
    if not message.images or message.role != "user":
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.text}] if message.text else []
    parts += [{"type": "image_url", "image_url": {"url": image_url(i)}} for i in message.images]
    return {"role": message.role, "content": parts}


def request_body(request: ModelRequest) -> dict[str, Any]:
    """The ``/chat/completions`` body for ``request``: streaming with usage, or whole."""
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [message_json(m) for m in request.messages]
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    else:
        # OpenAI refuses stream_options on a request that does not stream.
        body["stream"] = False
    s = request.sampling
    fields = {
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
    }
    body.update({k: v for k, v in fields.items() if v is not None})
    if s.stop:
        body["stop"] = list(s.stop)
    return body


def stop_reason(reason: object) -> StopReason:
    """A ``finish_reason`` as a run's stop reason: ``length`` or else ``stop``."""
    return "length" if reason == "length" else "stop"


class ChunkDecoder:
    """
    ``chat.completion.chunk`` events → deltas, then one ``Finish``.

    The answer is complete only once a ``finish_reason`` came (in any chunk; usage may follow
    it). ``[DONE]`` is what a server's framework writes when its generator ends, interrupted
    or not (llama-cpp-python ends an interrupted answer with a bare ``[DONE]``), so ``[DONE]``
    without a finish reason is an error; a body that ends without either is a cut (the
    provider went away: SIGTERM, a crash), and so is a reset.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = False
        self.answered = False
        self.stop: StopReason | None = None
        self.usage = Usage()

    def _finish(self) -> Finish:
        if self.stop is None:
            raise ProviderError(
                "upstream_error",
                f"{self.label} ended its answer without saying it was complete "
                "(no finish reason): it was probably interrupted",
            )
        return Finish(self.stop, self.usage)

    def event(self, event: SSEEvent) -> list[ModelEvent]:
        if event.data.strip() == "[DONE]":
            self.done = True
            return [self._finish()]
        chunk = loads(self.label, event.data)
        if not isinstance(chunk, dict):
            raise ProviderError(
                "upstream_error", f"{self.label} sent an unexpected chunk: {describe(event.data)}"
            )
        if chunk.get("error") is not None:
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise ProviderError(
                "upstream_error", f"{self.label} reported an error: {describe(str(message))}"
            )
        out: list[ModelEvent] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                self.answered = True
                out.append(TextDelta(content))
            reason = choice.get("finish_reason")
            if reason:
                self.stop = stop_reason(reason)
        self._usage(chunk.get("usage"))
        return out

    def end(self) -> list[ModelEvent]:
        if self.stop is None:
            raise cut(self.label, self.answered)
        # Some servers end the body without [DONE] after the finish: the answer is whole.
        self.done = True
        return [Finish(self.stop, self.usage)]

    def complete(self, answer: Any) -> list[ModelEvent]:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise ProviderError(
                "upstream_error", f"{self.label} answered JSON that is not a chat completion"
            )
        # A whole JSON answer is complete by construction, with or without a finish reason.
        self._usage(answer.get("usage"))
        content = choice["message"].get("content")
        text = [TextDelta(content)] if isinstance(content, str) and content else []
        return [*text, Finish(stop_reason(choice.get("finish_reason")), self.usage)]

    def _usage(self, usage: object) -> None:
        # Absent or null (llama-cpp-python ignores include_usage) stays unknown, never zeros.
        if isinstance(usage, dict):
            self.usage = Usage(
                _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
            )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@implementer(IProvider)
class OpenAICompletionsProvider(HTTPProvider):
    """Streams ``POST <baseUrl>/chat/completions`` and parses the chunks as they arrive."""

    def __init__(self, config: ProviderConfig, http: Any, clock: IReactorTime) -> None:
        super().__init__(config, http, clock)

    def open(self, request: ModelRequest) -> Deferred[IModelStream]:
        headers = {}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return self.post(
            f"{self.config.base_url}/chat/completions",
            headers,
            request_body(request),
            ChunkDecoder(self._label),
        )
