"""``POST /v1/responses`` (OpenResponses): another thin edge over the agent runner."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, cast

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
)
from ..agents.runner import Run
from ..providers.interface import Usage
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


class ResponseShape:
    """Builds the Responses objects of one request: the response, its message, its text."""

    def __init__(self, req: ResponsesRequest, created_at: int) -> None:
        self.req = req
        self.created_at = created_at
        self.message_id = f"msg_{uuid.uuid4().hex}"

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
            "parallel_tool_calls": False,
            "tool_choice": req.tool_choice,
            "tools": [],
            "store": req.store,
            "user": req.user,
            "metadata": {},
        }

    def finished(self, stop_reason: str, text: str, usage: Usage) -> dict[str, Any]:
        """The response of a run that answered (``incomplete`` when cut at the token limit)."""
        cut = stop_reason == "length"
        status = "incomplete" if cut else "completed"
        return self.response(
            status, [self.message(status, text)], responses_usage(usage), incomplete=cut
        )


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
        body = shape.finished(result.stop_reason, result.text, result.usage)
        return json_body(request, 200, body)


class ResponseStream(RunStream):
    """One run's events as the Responses API's streaming events, each with its number."""

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
        head = {"type": "response.output_text.delta", "sequence_number": 0}
        before = event_frame(head)[: -len(b"0}\n\n")]
        item = dumps(shape.message_id)
        self._delta_frame = (
            before,
            b',"item_id":' + item + b',"output_index":0,"content_index":0,"delta":',
            b',"logprobs":[]}\n\n',
        )

    def _event(self, type_: str, **fields: Any) -> bytes:
        data = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event_frame(data)

    def _opening(self) -> bytes:
        shape = self.shape
        pending = shape.response("in_progress", [])
        where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}
        return (
            self._event("response.created", response=pending)
            + self._event("response.in_progress", response=pending)
            + self._event(
                "response.output_item.added",
                output_index=0,
                item=shape.message("in_progress", None),
            )
            + self._event("response.content_part.added", **where, part=shape.part(""))
        )

    def _write_event(self, event: RunEvent | None) -> None:
        if type(event) is TextDelta:
            self._text.append(event.delta)
            before, middle, after = self._delta_frame
            seq = b"%d" % self.seq
            self.seq += 1
            self._write(before + seq + middle + dumps(event.delta) + after)
        elif isinstance(event, RunEnded):
            self._end(self._finished(event))
        elif isinstance(event, RunFailed):
            self._end(self._failed(event.error))
        elif event is None:
            self._end(DONE)

    def _finished(self, event: RunEnded) -> bytes:
        shape, text = self.shape, "".join(self._text)
        final = shape.finished(event.stop_reason, text, event.usage)
        where = {"item_id": shape.message_id, "output_index": 0, "content_index": 0}
        last = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return (
            self._event("response.output_text.done", **where, text=text, logprobs=[])
            + self._event("response.content_part.done", **where, part=shape.part(text))
            + self._event("response.output_item.done", output_index=0, item=final["output"][0])
            + self._event(last, response=final)
            + DONE
        )

    def _failed(self, error: RunError) -> bytes:
        shape, text = self.shape, "".join(self._text)
        output = [shape.message("incomplete", text)] if text else []
        failed = shape.response("failed", output, error=response_error(error))
        return self._event("response.failed", response=failed) + DONE

    def _internal_error(self) -> bytes:
        return self._failed(RunError("internal_error", "Internal error."))
