"""``anthropic-messages``: the Anthropic Messages API, streaming."""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
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
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
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


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    """An assistant's tool call as a ``tool_use`` block; its ``input`` must be a JSON object."""
    try:
        # Models sometimes write "" for a function without arguments.
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ProviderError(
            "bad_request",
            f"the arguments of tool call {call.id!r} are not a JSON object, "
            "which the Anthropic API requires",
        )
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


@attrs.define
class _Turn:
    role: str
    texts: list[str] = attrs.Factory(list)
    images: list[Image] = attrs.Factory(list)
    results: list[dict[str, Any]] = attrs.Factory(list)
    uses: list[dict[str, Any]] = attrs.Factory(list)

    def content(self) -> str | list[dict[str, Any]]:
        text = "\n\n".join(t for t in self.texts if t)
        if not self.images and not self.results and not self.uses:
            return text
        # Tool results first in a user turn (the API requires it), tool calls after the text.
        blocks = [*self.results, *(image_block(i) for i in self.images)]
        if text:
            blocks.append({"type": "text", "text": text})
        return blocks + self.uses


def messages_json(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """
    The conversation as the API accepts it: no empty turns, roles alternating (consecutive
    turns of one role joined, so consecutive tool results make one user turn), starting with
    the user.  Tool calls are ``tool_use`` blocks; tool results ``tool_result`` blocks in a
    user turn.
    """
    turns: list[_Turn] = []
    for m in messages:
        role = "user" if m.role == "tool" else m.role
        result = m.tool_result
        if not m.text and not m.images and not m.tool_calls and result is None:
            continue
        if not turns and (role != "user" or result is not None):
            # Nothing can come before the first user turn, nor answer a call not sent.
            continue
        if not turns or turns[-1].role != role:
            turns.append(_Turn(role))
        turn = turns[-1]
        if result is not None:
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": result.tool_call_id}
            if result.content:
                block["content"] = result.content
            if result.is_error:
                block["is_error"] = True
            turn.results.append(block)
        turn.texts.append(m.text)
        turn.images.extend(m.images)
        turn.uses.extend(tool_use_block(c) for c in m.tool_calls)
    return [{"role": t.role, "content": t.content()} for t in turns]


def tool_json(tool: ToolSpec) -> dict[str, Any]:
    # The API requires a schema; a tool without parameters takes an empty object.
    schema = (
        tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    )
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = schema
    return out


def tool_choice_json(choice: ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    """``tool_choice``, which also carries ``disable_parallel_tool_use``."""
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, NamedTool):
        out: dict[str, Any] = {"type": "tool", "name": choice.name}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "auto" or parallel is False:
        out = {"type": "auto"}
    else:
        return None
    if parallel is False:
        out["disable_parallel_tool_use"] = True
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
    if request.tools:
        body["tools"] = [tool_json(t) for t in request.tools]
        choice = tool_choice_json(request.tool_choice, request.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
    return body


def stop_reason(reason: object) -> StopReason:
    """
    ``max_tokens`` is ``length``, ``tool_use`` is ``tool_calls``; ``end_turn``,
    ``stop_sequence`` and the rest are ``stop``.
    """
    if reason == "max_tokens":
        return "length"
    return "tool_calls" if reason == "tool_use" else "stop"


class ToolUseDecoder:
    """
    ``tool_use`` content blocks → L{ToolCallDelta}s numbered by call (text blocks have block
    indexes too): the id and name at the block's start, then each ``input_json_delta``'s
    ``partial_json``; a block given no JSON pieces has its start's ``input`` as arguments.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        #: Block index → (call index, the start's input, whether any JSON piece came).
        self.blocks: dict[int, list[Any]] = {}

    def _bad(self, why: str) -> ProviderError:
        return ProviderError("upstream_error", f"{self.label} sent a malformed tool call: {why}")

    def start(self, index: object, block: dict[str, Any]) -> list[ModelEvent]:
        call_id, name, given = block.get("id"), block.get("name"), block.get("input", {})
        if not isinstance(call_id, str) or not call_id:
            raise self._bad("a tool_use block has no id")
        if not isinstance(name, str) or not name:
            raise self._bad(f"tool_use block {call_id!r} has no name")
        if not isinstance(given, dict):
            raise self._bad(f"the input of tool_use block {call_id!r} is not an object")
        if not isinstance(index, int) or index in self.blocks:
            raise self._bad(f"tool_use block {call_id!r} has no valid index")
        call = len(self.blocks)
        self.blocks[index] = [call, given, False]
        return [ToolCallDelta(call, call_id, name, "")]

    def delta(self, index: object, delta: dict[str, Any]) -> list[ModelEvent]:
        entry = self.blocks.get(index) if isinstance(index, int) else None
        if entry is None:
            raise self._bad("an input_json_delta is not for a tool_use block")
        piece = delta.get("partial_json")
        if not isinstance(piece, str):
            raise self._bad("an input_json_delta's partial_json is not a string")
        if not piece:
            return []
        entry[2] = True
        return [ToolCallDelta(entry[0], None, None, piece)]

    def stop(self, index: object) -> list[ModelEvent]:
        entry = self.blocks.get(index) if isinstance(index, int) else None
        if entry is None or entry[2]:
            return []
        entry[2] = True
        return [ToolCallDelta(entry[0], None, None, json.dumps(entry[1], ensure_ascii=False))]


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
        self.tools = ToolUseDecoder(label)

    def _finish(self) -> Finish:
        known = self.input_tokens is not None or self.output_tokens is not None
        stop = self.stop
        if stop == "stop" and self.tools.blocks:
            # The calls were made: whatever the server said, they are what the client must run.
            stop = "tool_calls"
        return Finish(
            stop, Usage(self.input_tokens or 0, self.output_tokens or 0) if known else Usage()
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
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self.answered = True
                return self.tools.start(data.get("index"), block)
            if isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                self.answered = True
                return [TextDelta(str(block["text"]))]
        elif kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "input_json_delta":
                return self.tools.delta(data.get("index"), delta)
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    self.answered = True
                    return [TextDelta(text)]
        elif kind == "content_block_stop":
            return self.tools.stop(data.get("index"))
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
        # ping and event types added later carry nothing we need.
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
        calls: list[ModelEvent] = []
        for index, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "tool_use":
                calls += self.tools.start(index, block)
                calls += self.tools.stop(index)
        self.stop = stop_reason(answer.get("stop_reason"))
        usage = answer.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = _input_tokens(usage)
            self.output_tokens = _count(usage.get("output_tokens"))
        return [*([TextDelta(text)] if text else []), *calls, self._finish()]


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
        try:
            body = request_body(request, default)
        except ProviderError as e:
            return fail(e)
        return self.post(url, headers, body, MessageDecoder(self._label))
