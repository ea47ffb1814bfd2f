"""``POST /v1/responses`` (OpenResponses): another thin edge over the agent runner."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from .._json import dumps
from ..agents.events import (
    RunEnded,
    RunError,
    RunEvent,
    RunFailed,
    RunResult,
    RunStarted,
    TextDelta,
    ToolCallDelta,
)
from ..agents.runner import Run
from ..providers.interface import ToolCall, ToolSpec, Usage
from .chat import InvalidRequest
from .completions import ChatCompletions, invalid_request, openclaw_headers
from .errors import json_body, run_error_reply
from .openresponses import (
    PreviousResponse,
    ResponseIds,
    ResponsesRequest,
    new_response_id,
    parse_responses,
    previous_not_found,
    previous_response_id,
)
from .sse import DONE, RunStream

if TYPE_CHECKING:
    from ..config import ResponsesConfig
    from ..edge import Edge


def event_frame(data: dict[str, Any]) -> bytes:
    """One SSE event: ``event: <type>`` and its JSON ``data:`` line."""
    kind: str = data["type"]
    return b"event: " + kind.encode("ascii") + b"\ndata: " + dumps(data) + b"\n\n"


def responses_usage(usage: Usage) -> dict[str, Any] | None:
    """A run's usage in the Responses API's names; ``None`` when the model reported none."""
    u = usage.to_json()
    if u is None:
        return None
    given, made = int(u.get("input", 0)), int(u.get("output", 0))
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": made,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(u.get("total", given + made)),
    }


def response_error(error: RunError) -> dict[str, Any]:
    """A failed run as the Responses object's ``error`` (its ``code`` one the SDK knows)."""
    reply = run_error_reply(error)
    code = "rate_limit_exceeded" if reply.status == 429 else "server_error"
    return {"code": code, "message": reply.message}


def tool_json(spec: ToolSpec) -> dict[str, Any]:
    """A function tool as the Responses object echoes it (flat, not under ``function``)."""
    return {
        "type": "function",
        "name": spec.name,
        "description": spec.description,
        "parameters": spec.parameters,
        "strict": spec.strict,
    }


class ResponseShape:
    """Builds the Responses objects of one request: the response, its message, its calls."""

    def __init__(self, req: ResponsesRequest, created_at: int) -> None:
        self.req = req
        self.created_at = created_at
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self._call_ids: dict[int, str] = {}

    def call_item_id(self, index: int) -> str:
        """The ``fc_`` item id of the run's ``index``-th client call (the same every time)."""
        if index not in self._call_ids:
            self._call_ids[index] = f"fc_{uuid.uuid4().hex}"
        return self._call_ids[index]

    def function_call(
        self, index: int, call_id: str, name: str, arguments: str, status: str
    ) -> dict[str, Any]:
        return {
            "type": "function_call",
            "id": self.call_item_id(index),
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": status,
        }

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": []}

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [] if text is None else [self.part(text)],
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        *,
        error: dict[str, Any] | None = None,
        incomplete: bool = False,
    ) -> dict[str, Any]:
        req, sampling = self.req, self.req.run.sampling
        return {
            "id": req.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": req.model,
            "output": output,
            "usage": usage,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "previous_response_id": req.previous_response_id,
            "parallel_tool_calls": req.parallel_tool_calls,
            "tool_choice": req.tool_choice,
            "tools": [tool_json(t) for t in req.run.tools],
            "store": req.store,
            "user": req.user,
            "metadata": {},
        }

    def finished(
        self,
        stop_reason: str,
        usage: Usage,
        output: list[dict[str, Any]] | None = None,
        *,
        text: str = "",
        calls: tuple[ToolCall, ...] = (),
    ) -> dict[str, Any]:
        """
        The response of a run that answered (``incomplete`` when cut at the token limit):
        its ``output`` items, else a message of ``text`` (unless the run only called
        tools) then a ``function_call`` item per client call.
        """
        cut = stop_reason == "length"
        status = "incomplete" if cut else "completed"
        if output is None:
            output = [self.message(status, text)] if text or not calls else []
            output += [
                self.function_call(i, c.id, c.name, c.arguments, "completed")
                for i, c in enumerate(calls)
            ]
        return self.response(status, output, responses_usage(usage), incomplete=cut)


class Responses:
    """The ``/v1/responses`` endpoint of one gateway; auth and run steps are chat's."""

    def __init__(self, edge: Edge, chat: ChatCompletions) -> None:
        self.edge = edge
        self.chat = chat
        #: Which session each recent response id was answered in (``previous_response_id``).
        self.ids = ResponseIds()

    @property
    def config(self) -> ResponsesConfig:
        return self.edge.responses

    def precheck(self, request: IRequest) -> Deferred[bytes | None]:
        return self.chat.precheck(request, b"POST", self.config.enabled)

    async def create(self, request: IRequest) -> bytes | None:
        body = await self.chat.read_body(request, self.config.enabled, self.config.max_body_bytes)
        if isinstance(body, bytes):
            return body
        headers = openclaw_headers(request)
        try:
            previous = await self._previous(body, headers)
            req = self._parse(body, headers, previous)
        except InvalidRequest as e:
            return invalid_request(request, e)
        run = self.chat.start_run(request, req.run)
        if isinstance(run, bytes):
            return run
        try:
            first = await run.next_event()
            if not isinstance(first, RunStarted):
                return await self.chat.failed(request, run)
            if req.store:
                where = PreviousResponse(req.run.agent_id, req.run.session_key)
                self.ids.remember(req.response_id, where)
            shape = ResponseShape(req, int(self.edge.clock.seconds()))
            if not req.stream:
                result = await self.chat.drain(run)
                return self._reply(request, result, shape)
            stream = ResponseStream(
                cast(Request, request), run, self.edge.clock, shape, self.config.heartbeat_seconds
            )
            await self.chat.stream(stream)
            return None
        except CancelledError:
            run.cancel()
            raise

    def _parse(
        self, body: dict[str, Any], headers: dict[str, str], previous: PreviousResponse | None
    ) -> ResponsesRequest:
        return parse_responses(
            body,
            headers,
            self.edge.roster,
            self.edge.chat_completions,
            response_id=new_response_id(),
            previous=previous,
            persist_ephemeral=self.edge.persist_ephemeral,
        )

    async def _previous(
        self, body: dict[str, Any], headers: dict[str, str]
    ) -> PreviousResponse | None:
        """
        The session ``previous_response_id`` continues: remembered in memory, else (after a
        restart) found in the transcript of the session the request names by ``user`` or
        ``x-openclaw-session-key``, where each stored answer records its response id.
        """
        wanted = previous_response_id(body)
        if wanted is None:
            return None
        found = self.ids.get(wanted)
        if found is not None:
            return found
        fresh = self._parse({**body, "previous_response_id": None}, headers, None)
        named = bool(headers.get("x-openclaw-session-key", "").strip()) or bool(
            isinstance(body.get("user"), str) and body["user"].strip()
        )
        if named:
            agent_id, key = fresh.run.agent_id, fresh.run.session_key
            for record in await self.edge.store.transcript(agent_id, key):
                if record.get("responseId") == wanted:
                    where = PreviousResponse(agent_id, key)
                    self.ids.remember(wanted, where)
                    return where
        raise previous_not_found(wanted)

    def _reply(self, request: IRequest, result: RunResult, shape: ResponseShape) -> bytes:
        if result.error is not None:
            # As chat completions: a non-streaming failure is an HTTP error the SDK raises.
            return run_error_reply(result.error).render(request)
        body = shape.finished(
            result.stop_reason, result.usage, text=result.text, calls=result.tool_calls
        )
        return json_body(request, 200, body)


@attrs.define
class _OpenCall:
    """A function_call item being streamed: where it is in ``output``, its arguments so far."""

    output_index: int
    call_id: str
    name: str


class ResponseStream(RunStream):
    """
    One run's events as the Responses API's streaming events, each with its number.  The
    message item opens at the first text (or at the end, when the run wrote neither text
    nor calls) and closes before a function_call item opens; the calls close at the end.
    """

    name = "responses stream"

    def __init__(
        self,
        request: Request,
        run: Run,
        clock: IReactorTime,
        shape: ResponseShape,
        heartbeat: float,
    ) -> None:
        super().__init__(request, run, clock, heartbeat)
        self.shape = shape
        self.seq = 0
        # The done events repeat the whole text, so the stream keeps it (as the run would).
        self._text: list[str] = []
        #: The ``output`` items opened so far, in order (the message's is replaced at close).
        self._output: list[dict[str, Any]] = []
        self._message_at: int | None = None
        self._message_open = False
        self._calls: dict[int, _OpenCall] = {}
        self._delta_frame = (b"", b"", b"")

    def _event(self, type_: str, **fields: Any) -> bytes:
        data = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event_frame(data)

    def _opening(self) -> bytes:
        pending = self.shape.response("in_progress", [])
        return self._event("response.created", response=pending) + self._event(
            "response.in_progress", response=pending
        )

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.shape.message_id, "output_index": self._message_at}

    def _open_message(self) -> bytes:
        shape, at = self.shape, len(self._output)
        self._message_at, self._message_open = at, True
        self._output.append(shape.message("in_progress", None))
        head = {"type": "response.output_text.delta", "sequence_number": 0}
        before = event_frame(head)[: -len(b"0}\n\n")]
        item = dumps(shape.message_id)
        self._delta_frame = (
            before,
            b',"item_id":' + item + b',"output_index":%d,"content_index":0,"delta":' % at,
            b',"logprobs":[]}\n\n',
        )
        return self._event(
            "response.output_item.added", output_index=at, item=self._output[at]
        ) + self._event(
            "response.content_part.added", **self._where(), content_index=0, part=shape.part("")
        )

    def _close_message(self, status: str) -> bytes:
        if not self._message_open:
            return b""
        assert self._message_at is not None
        self._message_open = False
        shape, text, where = self.shape, "".join(self._text), self._where()
        item = self._output[self._message_at] = shape.message(status, text)
        return (
            self._event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            )
            + self._event(
                "response.content_part.done", **where, content_index=0, part=shape.part(text)
            )
            + self._event("response.output_item.done", output_index=self._message_at, item=item)
        )

    def _open_call(self, index: int, call_id: str, name: str) -> bytes:
        at = len(self._output)
        self._calls[index] = _OpenCall(at, call_id, name)
        self._output.append(self.shape.function_call(index, call_id, name, "", "in_progress"))
        return self._event("response.output_item.added", output_index=at, item=self._output[at])

    def _arguments_delta(self, index: int, delta: str) -> bytes:
        item_id, at = self.shape.call_item_id(index), self._calls[index].output_index
        return self._event(
            "response.function_call_arguments.delta", item_id=item_id, output_index=at, delta=delta
        )

    def _write_event(self, event: RunEvent | None) -> None:
        if type(event) is TextDelta:
            self._text.append(event.delta)
            opening = b"" if self._message_open else self._open_message()
            before, middle, after = self._delta_frame
            seq = b"%d" % self.seq
            self.seq += 1
            self._write(opening + before + seq + middle + dumps(event.delta) + after)
        elif type(event) is ToolCallDelta:
            frames = b""
            if event.index not in self._calls:
                frames += self._close_message("completed")
                frames += self._open_call(event.index, event.id or "", event.name or "")
            if event.arguments_delta:
                frames += self._arguments_delta(event.index, event.arguments_delta)
            self._write(frames)
        elif isinstance(event, RunEnded):
            self._end(self._finished(event))
        elif isinstance(event, RunFailed):
            self._end(self._failed(event.error))
        elif event is None:
            self._end(DONE)

    def _finished(self, event: RunEnded) -> bytes:
        status = "incomplete" if event.stop_reason == "length" else "completed"
        frames = b""
        if self._message_at is None and not event.tool_calls:
            frames += self._open_message()
        frames += self._close_message(status)
        for i, call in enumerate(event.tool_calls):
            if i not in self._calls:  # a call the model did not stream in pieces
                frames += self._open_call(i, call.id, call.name)
                if call.arguments:
                    frames += self._arguments_delta(i, call.arguments)
            at, item_id = self._calls[i].output_index, self.shape.call_item_id(i)
            item = self._output[at] = self.shape.function_call(
                i, call.id, call.name, call.arguments, "completed"
            )
            frames += self._event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=at,
                arguments=call.arguments,
            ) + self._event("response.output_item.done", output_index=at, item=item)
        final = self.shape.finished(event.stop_reason, event.usage, self._output)
        last = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return frames + self._event(last, response=final) + DONE

    def _failed(self, error: RunError) -> bytes:
        shape, text = self.shape, "".join(self._text)
        output = [shape.message("incomplete", text)] if text else []
        failed = shape.response("failed", output, error=response_error(error))
        return self._event("response.failed", response=failed) + DONE

    def _internal_error(self) -> bytes:
        return self._failed(RunError("internal_error", "Internal error."))
