"""``GET /sessions/{key}/history`` and ``POST /sessions/{key}/kill``, as OpenClaw serves them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IRequest

from ..agents.roster import RouteError
from ..agents.store import session_key_error
from .chat import InvalidRequest, decode_body
from .errors import error_envelope, json_body
from .gate import json_content_type, method_not_allowed

if TYPE_CHECKING:
    from ..edge import Edge
    from .completions import ChatCompletions

#: Messages a history answer holds at most (OpenClaw's cap), and when ``limit`` is not given.
MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 200


def _refusal(request: IRequest, status: int, message: str, type_: str) -> bytes:
    """OpenClaw's ``{ok:false, error:{...}}`` answer of these routes."""
    if status < 500:
        request.setHeader(b"x-should-retry", b"false")
    return json_body(request, status, {"ok": False, **error_envelope(message, type_)})


class SessionRoutes:
    """A session's transcript, and aborting its run in flight; with the bearer auth of /v1."""

    def __init__(self, edge: Edge, chat: ChatCompletions) -> None:
        self.edge = edge
        self.chat = chat

    def precheck(self, request: IRequest, allow: bytes) -> Deferred[bytes | None]:
        """The method, then the credential (these routes are always on)."""
        if request.method not in allow.split(b", "):
            return succeed(method_not_allowed(request, allow))
        return self.chat.authorize(request)

    def _target(self, request: IRequest, key: str) -> tuple[str, str] | bytes:
        """``(agent id, session key)`` of the path's key, or the 400 that refuses it."""
        key = key.strip()
        problem = session_key_error(key, "sessionKey")
        if not key or problem is not None:
            return _refusal(
                request, 400, problem or "The session key is empty.", "invalid_request_error"
            )
        try:
            route = self.edge.roster.route("ws", session_key=key)
        except RouteError as e:
            return _refusal(request, 400, e.message, "invalid_request_error")
        return route.agent_id, route.session_key

    async def history(self, request: IRequest, key: str) -> bytes:
        if not getattr(request, "prechecked", False):
            refusal = await self.precheck(request, b"GET, HEAD")
            if refusal is not None:
                return refusal
        target = self._target(request, key)
        if isinstance(target, bytes):
            return target
        limit = _limit(request)
        if limit is None:
            return _refusal(
                request, 400, "limit must be a positive integer", "invalid_request_error"
            )
        agent_id, session_key = target
        records = await self.edge.store.transcript(agent_id, session_key)
        if not records:
            return _refusal(request, 404, f"Session not found: {session_key}", "not_found")
        messages: list[dict[str, Any]] = []
        for record in records:
            role, text = record.get("role"), record.get("text")
            if role not in ("user", "assistant") or not isinstance(text, str):
                continue
            message: dict[str, Any] = {
                "role": role,
                "content": [{"type": "text", "text": text}],
                "timestamp": int(record.get("ts") or 0),
            }
            for field in ("runId", "responseId", "stopReason", "usage"):
                if field in record:
                    message[field] = record[field]
            messages.append(message)
        body = {"sessionKey": session_key, "agentId": agent_id, "messages": messages[-limit:]}
        return json_body(request, 200, body, no_store=True)

    async def kill(self, request: IRequest, key: str) -> bytes:
        if not getattr(request, "prechecked", False):
            refusal = await self.precheck(request, b"POST")
            if refusal is not None:
                return refusal
        content: Any = request.content
        body = content.read() if content is not None else b""
        if body:
            if not getattr(request, "prechecked", False):
                refusal = json_content_type(request)
                if refusal is not None:
                    return refusal
            try:
                decode_body(body)  # nothing is read from it, but it must be an object
            except InvalidRequest as e:
                return _refusal(request, 400, e.message, "invalid_request_error")
        target = self._target(request, key)
        if isinstance(target, bytes):
            return target
        agent_id, session_key = target
        runs = [r for r in self.edge.runner.active.values() if r.session_key == session_key]
        for run in runs:
            run.cancel("aborted")
        run_ids = [r.run_id for r in runs]
        if self.edge.cluster is not None:
            # The turn may run on another gateway of the same Redis.
            run_ids += await self.edge.cluster.abort_elsewhere(session_key, None)
        # The tail read: one message is enough to know the session exists.
        if not run_ids and not await self.edge.store.history(agent_id, session_key, 1):
            return _refusal(request, 404, f"Session not found: {session_key}", "not_found")
        body = {"ok": True, "killed": bool(run_ids), "runIds": run_ids}
        return json_body(request, 200, body)


def _limit(request: IRequest) -> int | None:
    """``?limit=`` (capped at L{MAX_HISTORY_LIMIT}); ``None`` when it is not a positive integer."""
    args: Any = getattr(request, "args", None) or {}
    values = args.get(b"limit")
    if not values:
        return DEFAULT_HISTORY_LIMIT
    raw = values[0].strip()
    digits = raw.lstrip(b"0")
    if not raw.isdigit() or not digits:
        return None
    return MAX_HISTORY_LIMIT if len(digits) > 6 else min(int(digits), MAX_HISTORY_LIMIT)
