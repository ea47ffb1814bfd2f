"""``openai-completions``: streaming chat completions (OpenAI, Ollama, vLLM, LiteLLM, ...)."""

from __future__ import annotations

import base64
import json
import os
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
    NamedTool,
    ProviderError,
    StopReason,
    TextDelta,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    Usage,
)
from .sse import SSEEvent


def image_url(image: Image) -> str:
    """A remote URL as is, else a ``data:`` URI of the image bytes."""
    if image.url:
        return image.url
    return f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"


def message_json(message: Message) -> dict[str, Any]:
    if message.tool_result is not None:
        result = message.tool_result
        # The API has no error flag for a tool result: the content says what went wrong.
        return {"role": "tool", "tool_call_id": result.tool_call_id, "content": result.content}
    if message.tool_calls:
        calls = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        return {"role": "assistant", "content": message.text or None, "tool_calls": calls}
    if not message.images or message.role != "user":
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.text}] if message.text else []
    parts += [{"type": "image_url", "image_url": {"url": image_url(i)}} for i in message.images]
    return {"role": message.role, "content": parts}


def tool_json(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def tool_choice_json(choice: ToolChoice) -> str | dict[str, Any]:
    if isinstance(choice, NamedTool):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


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
    if request.tools:
        # The API refuses tool_choice and parallel_tool_calls without tools.
        body["tools"] = [tool_json(t) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = tool_choice_json(request.tool_choice)
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


def stop_reason(reason: object) -> StopReason:
    """A ``finish_reason`` as a run's stop reason: ``length``, ``tool_calls`` or else ``stop``."""
    if reason == "length":
        return "length"
    return "tool_calls" if reason == "tool_calls" else "stop"


def new_call_id() -> str:
    """An id for a tool call a server sent without one (the client must be able to answer it)."""
    return "call_" + os.urandom(12).hex()


def _text(value: object) -> bool:
    return value is None or isinstance(value, str)


class ToolCallAssembler:
    """
    Checks the ``tool_calls`` of an answer, streamed (``delta.tool_calls``: an ``index``;
    ``id`` and ``function.name`` in a call's first chunk; ``function.arguments`` in pieces)
    or whole (``message.tool_calls``), and turns them into L{ToolCallDelta}s numbered from 0
    in the order the calls began.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        #: Each call's id and name, as first given, in the order the calls began.
        self.calls: list[tuple[str, str]] = []
        #: The server's index of a call → its place in ``calls`` (the index of its deltas).
        self._slots: dict[int, int] = {}

    def _bad(self, why: str) -> ProviderError:
        return ProviderError("upstream_error", f"{self.label} sent a malformed tool call: {why}")

    def delta(self, calls: object) -> list[ModelEvent]:
        if not isinstance(calls, list):
            raise self._bad("tool_calls is not a list")
        out: list[ModelEvent] = []
        for call in calls:
            if not isinstance(call, dict):
                raise self._bad("a tool call is not an object")
            index = call.get("index")
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise self._bad("a tool call chunk has no valid index")
            function = call.get("function") or {}
            if not isinstance(function, dict):
                raise self._bad(f"the function of tool call {index} is not an object")
            call_id, name = call.get("id") or None, function.get("name") or None
            arguments = function.get("arguments")
            if not _text(call_id) or not _text(name) or not _text(arguments):
                raise self._bad(f"tool call {index} has a field that is not a string")
            slot = self._slots.get(index)
            if slot is not None and name is not None and call_id not in (None, self.calls[slot][0]):
                # A new id and a name: another call (some proxies number every call 0).
                slot = None
            if slot is None:
                if name is None:
                    raise self._bad(f"the first chunk of tool call {index} has no function name")
                slot = self._slots[index] = len(self.calls)
                self.calls.append((call_id or new_call_id(), name))
                call_id, name = self.calls[slot]
                out.append(ToolCallDelta(slot, call_id, name, arguments or ""))
                continue
            # Some servers repeat the id and name in every chunk; a different one is garbage.
            if call_id is not None and call_id != self.calls[slot][0]:
                raise self._bad(f"tool call {index} changed its id mid-answer")
            if name is not None and name != self.calls[slot][1]:
                raise self._bad(f"tool call {index} changed its function name mid-answer")
            if arguments:
                out.append(ToolCallDelta(slot, None, None, arguments))
        return out

    def whole(self, calls: object) -> list[ModelEvent]:
        if not isinstance(calls, list):
            raise self._bad("tool_calls is not a list")
        out: list[ModelEvent] = []
        for index, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise self._bad(f"tool call {index} has no function")
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                # Ollama's native answers give an object; the text of it is what a client reads.
                arguments = json.dumps(arguments)
            chunk = {**call, "index": index, "function": {**function, "arguments": arguments}}
            out += self.delta([chunk])
        return out


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
        self.tools = ToolCallAssembler(label)

    def _finish(self) -> Finish:
        if self.stop is None:
            raise ProviderError(
                "upstream_error",
                f"{self.label} ended its answer without saying it was complete "
                "(no finish reason): it was probably interrupted",
            )
        return Finish(self._stop(self.stop), self.usage)

    def _stop(self, reason: StopReason) -> StopReason:
        # A server that says "stop" after calling tools (older Ollama) still asked for them.
        return "tool_calls" if reason == "stop" and self.tools.calls else reason

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
            calls = delta.get("tool_calls") if isinstance(delta, dict) else None
            if calls is not None:
                out += self.tools.delta(calls)
                self.answered = self.answered or bool(self.tools.calls)
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
        return [Finish(self._stop(self.stop), self.usage)]

    def complete(self, answer: Any) -> list[ModelEvent]:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise ProviderError(
                "upstream_error", f"{self.label} answered JSON that is not a chat completion"
            )
        # A whole JSON answer is complete by construction, with or without a finish reason.
        self._usage(answer.get("usage"))
        message = choice["message"]
        content = message.get("content")
        events: list[ModelEvent] = []
        if isinstance(content, str) and content:
            events.append(TextDelta(content))
        if message.get("tool_calls") is not None:
            events += self.tools.whole(message["tool_calls"])
        stop = self._stop(stop_reason(choice.get("finish_reason")))
        return [*events, Finish(stop, self.usage)]

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
