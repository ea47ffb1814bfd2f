"""Request parameters and the read-only methods of the WebSocket protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._json import dumps
from ..agents.events import RunEnded, RunEvent, RunFailed, TextDelta
from ..agents.roster import RouteError
from ..agents.store import session_key_error
from ..config import normalize_agent_id
from ..providers.registry import split_ref

if TYPE_CHECKING:
    from ..edge import Edge

#: The session a client lands in when it names none (OpenClaw's "main" session per agent).
MAIN_KEY = "main"


class MethodError(Exception):
    """A request failed: rendered as ``{ok:false, error:{code, message, details?}}``."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return error


def invalid(message: str) -> MethodError:
    return MethodError("INVALID_REQUEST", message)


def text(params: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string parameter, trimmed; empty counts as absent."""
    value = params.get(name)
    if value is None:
        if required:
            raise invalid(f"missing required param '{name}'")
        return None
    if not isinstance(value, str):
        raise invalid(f"param '{name}' must be a string")
    value = value.strip()
    if not value and required:
        raise invalid(f"param '{name}' must not be empty")
    return value or None


def integer(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"param '{name}' must be an integer in {low}..{high}")
    return value


def target(edge: Edge, params: dict[str, Any]) -> tuple[str, str]:
    """
    ``(agentId, sessionKey)`` of a request, by the HTTP endpoint's rules: a session key
    ``agent:<id>:...`` decides the agent; else ``agentId``; else the default agent, whose main
    session (``agent:<id>:main``) is used when no key is given.
    """
    key = text(params, "sessionKey")
    if key is not None and (problem := session_key_error(key, "sessionKey")) is not None:
        raise invalid(problem)
    try:
        route = edge.roster.route("ws", session_key=key, agent=text(params, "agentId"))
    except RouteError as e:
        raise invalid(e.message) from None
    return route.agent_id, route.session_key


def health(edge: Edge, params: dict[str, Any]) -> dict[str, Any]:
    reason = edge.not_ready  # what /readyz says
    out: dict[str, Any] = {
        "ok": True,
        "status": "live" if edge.ready else "stopping",
        "ready": reason is None,
        "ts": edge.now_ms(),
    }
    if reason is not None:
        out["reason"] = reason
    return out


def agents_list(edge: Edge, params: dict[str, Any]) -> dict[str, Any]:
    roster = edge.roster
    return {
        "defaultId": roster.default_id,
        "mainKey": MAIN_KEY,
        "scope": "per-sender",
        "agents": [{"id": a.id, "name": a.name, "model": a.model.primary} for a in roster.agents],
    }


def models_list(edge: Edge, params: dict[str, Any]) -> dict[str, Any]:
    names = {
        (p.name, m.id): (m.name or m.id, m.context_window) for p in edge.providers for m in p.models
    }
    # The configured models, then any model an agent names that the config does not list.
    pairs = list(edge.models())
    for agent in edge.roster.agents:
        for ref in agent.model.refs:
            pair = split_ref(ref)
            if pair not in pairs:
                pairs.append(pair)
    models = []
    for provider, model in pairs:
        name, window = names.get((provider, model), (model, None))
        entry: dict[str, Any] = {"id": f"{provider}/{model}", "name": name, "provider": provider}
        if window is not None:
            entry["contextWindow"] = window
        models.append(entry)
    return {"models": models}


async def sessions_list(edge: Edge, params: dict[str, Any]) -> dict[str, Any]:
    raw = text(params, "agentId")
    limit = integer(params, "limit", 100, 1, 1000)
    if raw is not None:
        agent_id = normalize_agent_id(raw)
        try:
            edge.roster.require(agent_id)
        except RouteError as e:
            raise invalid(e.message) from None
        agents = [agent_id]
    else:
        agents = list(edge.roster.ids)
    rows = [
        {**row, "agentId": agent_id}
        for agent_id in agents
        for row in await edge.store.sessions(agent_id)
    ]
    rows.sort(key=lambda r: -int(r.get("updatedAt") or 0))
    return {"count": len(rows), "sessions": rows[:limit]}


def chat_message(role: str, body: str, ts: int) -> dict[str, Any]:
    """A message as OpenClaw's chat surfaces carry it."""
    return {"role": role, "content": [{"type": "text", "text": body}], "timestamp": ts}


async def chat_history(edge: Edge, params: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """The last ``limit`` messages of a session, cut further so the reply fits one frame."""
    text(params, "sessionKey", required=True)
    agent_id, key = target(edge, params)
    limit = integer(params, "limit", 200, 1, 1000)
    messages = []
    for record in await edge.store.transcript(agent_id, key):
        role, body = record.get("role"), record.get("text")
        if role not in ("user", "assistant") or not isinstance(body, str):
            continue
        message = chat_message(role, body, int(record.get("ts") or 0))
        for field in ("runId", "stopReason", "usage"):
            if field in record:
                message[field] = record[field]
        messages.append(message)
    messages = messages[-limit:]
    # Keep a margin for the envelope; drop the oldest until the reply fits.
    budget = max_bytes - 1024
    sizes = [len(dumps(m)) for m in messages]
    size = sum(sizes)
    while messages and size > budget:
        messages.pop(0)
        size -= sizes.pop(0)
    return {"sessionKey": key, "agentId": agent_id, "messages": messages}


def chat_event(event: RunEvent, text_so_far: str) -> dict[str, Any] | None:
    """The ``chat`` event for one run event (``None`` for events chat clients don't see)."""
    base: dict[str, Any] = {
        "runId": event.run_id,
        "sessionKey": event.session_key,
        "seq": event.seq,
    }
    if isinstance(event, TextDelta):
        message = chat_message("assistant", event.text, event.ts)
        return {**base, "state": "delta", "delta": event.delta, "message": message}
    if isinstance(event, RunEnded):
        message = chat_message("assistant", text_so_far, event.ts)
        return {
            **base,
            "state": "final",
            "message": message,
            "stopReason": event.stop_reason,
            "usage": event.usage.to_json(),
        }
    if isinstance(event, RunFailed):
        kind = event.error.kind
        state = "aborted" if kind == "aborted" else "error"
        out = {**base, "state": state, "errorKind": kind}
        out["errorMessage"] = event.error.message
        if text_so_far:
            out["message"] = chat_message("assistant", text_so_far, event.ts)
        return out
    return None
