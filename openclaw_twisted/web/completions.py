"""``POST /v1/chat/completions`` and ``GET /v1/models``: a thin edge over the agent runner."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from ..agents.events import RunError, RunRequest, RunResult, RunStarted
from ..agents.runner import Run
from ..agents.store import STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE, StoreUnavailable
from ..auth import LOCKED_OUT, AuthResult, bearer
from ..limits import TooManyRuns
from .chat import InvalidRequest, decode_body, parse_chat
from .errors import ErrorReply, error_body, json_body, not_found, run_error_reply
from .gate import json_content_type, method_not_allowed, payload_too_large
from .sse import CompletionStream, RunStream, tool_call_json, usage_json

if TYPE_CHECKING:
    from ..config import ChatCompletionsConfig
    from ..edge import Edge

log = Logger()

NO_RESPONSE = "No response from OpenClaw."
#: The request headers the chat request reads (lower-case).
OPENCLAW_HEADERS = ("x-openclaw-agent-id", "x-openclaw-agent", "x-openclaw-session-key")


def openclaw_headers(request: IRequest) -> dict[str, str]:
    """The ``x-openclaw-*`` routing headers of ``request`` (lower-case names; absent = "")."""
    return {
        name: (request.getHeader(name.encode()) or b"").decode("utf-8", "replace")
        for name in OPENCLAW_HEADERS
    }


def invalid_request(request: IRequest, e: InvalidRequest) -> bytes:
    """The 400 of a request a client must fix."""
    return error_body(request, 400, e.message, "invalid_request_error", param=e.param, code=e.code)


class ChatCompletions:
    """The OpenAI-compatible endpoints of one gateway (CONTRACT §4, §6)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    @property
    def config(self) -> ChatCompletionsConfig:
        return self.edge.chat_completions

    # The checks before the body (§4.1 steps 1-3), shared by every endpoint here.

    def precheck(
        self, request: IRequest, allow: bytes, enabled: bool | None = None
    ) -> Deferred[bytes | None]:
        """
        An answer if the endpoint is off (``enabled``, by default chat completions'), the
        method wrong or the client not allowed (fired on return unless the failed-attempt
        store is shared: a round-trip to Redis).
        """
        if not (self.config.enabled if enabled is None else enabled):
            return succeed(not_found(request))
        if request.method not in allow.split(b", "):
            return succeed(method_not_allowed(request, allow))
        return self.authorize(request)

    @property
    def models_enabled(self) -> bool:
        """``/v1/models`` is served with either OpenAI-style endpoint."""
        return self.config.enabled or self.edge.responses.enabled

    def authorize(self, request: IRequest) -> Deferred[bytes | None]:
        """``None`` when the bearer credential is good; else the 401, 429 or 503 answer."""
        header = request.getHeader(b"authorization")
        credential = bearer(header.decode("latin-1") if header else None)
        d = self.edge.auth.check(credential, self.edge.client_ip(request))
        return d.addCallbacks(
            self._verdict, self._no_verdict, callbackArgs=(request,), errbackArgs=(request,)
        )

    def _no_verdict(self, failure: Failure, request: IRequest) -> bytes:
        failure.trap(StoreUnavailable)
        log.warn("cannot check a credential: {why}", why=failure.value)
        return ErrorReply(
            503, STORE_UNAVAILABLE_MESSAGE, "api_error", STORE_UNAVAILABLE, retry_after="1"
        ).render(request)

    def _verdict(self, verdict: AuthResult, request: IRequest) -> bytes | None:
        if verdict.ok:
            return None
        if verdict.reason == "locked":
            request.setHeader(b"retry-after", str(verdict.retry_after or 1).encode())
            return error_body(request, 429, LOCKED_OUT, "rate_limited")
        request.setHeader(b"www-authenticate", b"Bearer")
        return error_body(request, 401, "Unauthorized", "unauthorized")

    # POST /v1/chat/completions

    async def complete(self, request: IRequest) -> bytes | None:
        body = await self.read_body(request, self.config.enabled, self.config.max_body_bytes)
        if isinstance(body, bytes):
            return body
        try:
            chat = parse_chat(
                body,
                openclaw_headers(request),
                self.edge.roster,
                self.config,
                persist_ephemeral=self.edge.persist_ephemeral,
            )
        except InvalidRequest as e:
            return invalid_request(request, e)
        run = self.start_run(request, chat.run)
        if isinstance(run, bytes):
            return run
        try:
            first = await run.next_event()
            if not isinstance(first, RunStarted):
                return await self.failed(request, run)
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            created = int(self.edge.clock.seconds())
            if not chat.stream:
                result = await self.drain(run)
                return self._reply(request, result, completion_id, created, chat.model)
            stream = CompletionStream(
                cast(Request, request),
                run,
                self.edge.clock,
                completion_id=completion_id,
                created=created,
                model=chat.model,
                include_usage=chat.include_usage,
                heartbeat=self.config.heartbeat_seconds,
            )
            await self.stream(stream)
            return None
        except CancelledError:
            # The client went away (Klein cancels the handler): so does the run.
            run.cancel()
            raise

    # The steps every run-starting endpoint shares (chat completions, responses).

    async def read_body(
        self, request: IRequest, enabled: bool, max_bytes: int
    ) -> dict[str, Any] | bytes:
        """The request's JSON object, or the answer that refuses it (§4.1 steps 1-4)."""
        if not getattr(request, "prechecked", False):
            refusal = await self.precheck(request, b"POST", enabled)
            if refusal is not None:
                return refusal
        content: Any = request.content
        size = content.seek(0, 2)
        # The gate of the gateway's own Site decided these before the body (web/gate.py);
        # a Site without it (embedding) gets the same answers after.
        if not getattr(request, "prechecked", False) and size:
            refusal = json_content_type(request)
            if refusal is not None:
                return refusal
        if size > max_bytes:
            return payload_too_large(request)
        content.seek(0)
        try:
            return decode_body(content.read())
        except InvalidRequest as e:
            return invalid_request(request, e)

    async def stream(self, stream: RunStream) -> None:
        """Write a run's stream to its end (or the client's), counted as an open stream."""
        metrics = self.edge.metrics
        closed = metrics.stream_opened("sse") if metrics is not None else None
        try:
            stream.start()
            await stream.done
        finally:
            if closed is not None:
                closed()

    def start_run(self, request: IRequest, run_request: RunRequest) -> Run | bytes:
        """Admit the client (its cap on runs in flight) and start the run, tied to the request."""
        client = self.edge.client_ip(request)
        try:
            self.edge.limits.admit(client)
        except TooManyRuns as e:
            return ErrorReply(
                429, e.message, "rate_limit_error", "too_many_runs", retry_after="1"
            ).render(request)
        run = self.edge.runner.start(run_request)
        self.edge.limits.hold(client, run)
        cast(Request, request).notifyFinish().addErrback(lambda _: run.cancel())
        return run

    async def drain(self, run: Run) -> RunResult:
        """Take every event (the run waits for room otherwise), then the run's result."""
        while await run.next_event() is not None:
            pass
        return await run.wait()

    async def failed(self, request: IRequest, run: Run) -> bytes:
        """The HTTP error of a run that ended before it started answering."""
        result = await self.drain(run)
        error = result.error or RunError("internal_error", "The run ended without starting.")
        return run_error_reply(error).render(request)

    def _reply(
        self, request: IRequest, result: RunResult, completion_id: str, created: int, model: str
    ) -> bytes:
        if result.error is not None:
            return run_error_reply(result.error).render(request)
        message: dict[str, Any]
        if result.tool_calls:
            # The model stopped to have the client's tools run: text only if it wrote some.
            message = {
                "role": "assistant",
                "content": result.text if result.text.strip() else None,
                "tool_calls": [tool_call_json(c) for c in result.tool_calls],
            }
            finish = "tool_calls"
        else:
            text = result.text if result.text.strip() else NO_RESPONSE
            message = {"role": "assistant", "content": text}
            finish = "length" if result.stop_reason == "length" else "stop"
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage_json(result.usage.to_json()),
        }
        return json_body(request, 200, body)

    # GET /v1/models, /v1/models/{id}

    def model_ids(self) -> list[str]:
        return ["openclaw", "openclaw/default", *(f"openclaw/{a}" for a in self.edge.roster.ids)]

    async def models(self, request: IRequest, model_id: str | None = None) -> bytes:
        refusal = await self.precheck(request, b"GET, HEAD", self.models_enabled)
        if refusal is not None:
            return refusal
        if model_id is None:
            data = [self._model(m) for m in self.model_ids()]
            return json_body(request, 200, {"object": "list", "data": data})
        if model_id not in self.model_ids():
            return ErrorReply(
                404,
                f"The model '{model_id}' does not exist.",
                "invalid_request_error",
                "model_not_found",
                param="model",
            ).render(request)
        return json_body(request, 200, self._model(model_id))

    @staticmethod
    def _model(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "openclaw"}
