"""The WebSocket protocol's methods: one table of handlers, each ``(edge, connection, call)``."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from twisted.internet.defer import Deferred, succeed

from .._version import __version__
from ..agents.events import RunError, RunEvent, RunRequest, RunResult, TextDelta, to_json
from ..agents.runner import Run, UnknownAgent
from ..agents.store import STORE_UNAVAILABLE_MESSAGE, StoreUnavailable
from ..limits import TooManyRuns
from . import methods
from .methods import MethodError, integer, invalid, text
from .runs import RunRegistry, Tracked

if TYPE_CHECKING:
    from ..cluster._idempotency import Claim, IIdempotencyKeys
    from ..edge import Edge

PROTOCOL_VERSION = 3
#: How a run's failure kind becomes a protocol error code.
ERROR_CODES = {"agent_timeout": "AGENT_TIMEOUT", "aborted": "ABORTED", "internal_error": "INTERNAL"}
#: How long a repeated ``agent`` waits for another gateway's run between two looks at
#: whether this gateway is stopping (seconds).
WAIT_SLICE = 5.0


@attrs.frozen
class Call:
    """One request: its ``id`` (for the response) and its ``params`` object."""

    id: str
    params: dict[str, Any]


class Connection(Protocol):
    """What the handlers use of the connection a request came in on."""

    client_ip: str

    @property
    def registry(self) -> RunRegistry[Any]:
        """The runs started over WebSocket and the open connections (shared by all)."""

    @property
    def max_payload(self) -> int: ...

    @property
    def started_ms(self) -> int:
        """When the gateway started (``edge`` clock, ms): uptime counts from here."""

    def reply(self, req_id: Any, payload: dict[str, Any]) -> None: ...

    def send_event(self, event: str, payload: dict[str, Any]) -> None: ...

    def runs_in_flight(self) -> int:
        """How many runs this connection started that have not ended."""

    def hold(self, run: Run, kind: str) -> None:
        """Count ``run`` (started by a ``kind`` request) as this connection's until it ends."""

    def pump(self, run: Run, send: Callable[[RunEvent], object]) -> Awaitable[None]:
        """Send the run's events as the socket takes them; done after the last."""


Handler = Callable[["Edge", Connection, Call], Awaitable[dict[str, Any] | None]]


def run_error(error: RunError, run_id: str) -> MethodError:
    details: dict[str, Any] = {"kind": error.kind, "runId": run_id}
    if error.retry_after is not None:
        details["retryAfter"] = error.retry_after
    return MethodError(ERROR_CODES.get(error.kind, "UNAVAILABLE"), error.message, details)


# Read-only methods.


async def health(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    return methods.health(edge, call.params)


async def status(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    return {
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "ready": edge.not_ready is None,
        "uptimeMs": edge.now_ms() - conn.started_ms,
        "connections": sum(1 for c in conn.registry.connections if c.authenticated),
        "activeRuns": len(edge.runner.active),
        "agents": list(edge.roster.ids),
        "defaultAgentId": edge.roster.default_id,
    }


async def agents_list(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    return methods.agents_list(edge, call.params)


async def models_list(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    return methods.models_list(edge, call.params)


async def sessions_list(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    return await methods.sessions_list(edge, call.params)


async def chat_history(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    return await methods.chat_history(edge, call.params, conn.max_payload)


# Runs.


@attrs.frozen
class Elsewhere:
    """
    The run an ``idempotencyKey`` started that this gateway does not hold: another gateway
    on the same Redis runs it (or ran it), or this one forgot it.
    """

    kind: str
    key: str
    claim: Claim


async def start_run(
    edge: Edge, conn: Connection, kind: str, params: dict[str, Any]
) -> tuple[Tracked | Elsewhere, bool]:
    """The run a request asks for: a new one, or the one its ``idempotencyKey`` started."""
    message = text(params, "message", required=True)
    assert message is not None
    key = text(params, "idempotencyKey")
    registry = conn.registry
    if key is not None:
        tracked = registry.by_key(kind, key)
        if tracked is not None:
            return tracked, False
    agent_id, session_key = methods.target(edge, params)
    extra = text(params, "extraSystemPrompt") or ""
    run_id = str(uuid.uuid4())
    accepted_at = edge.now_ms()
    shared = edge.idempotency if key is not None else None
    if shared is not None:
        assert key is not None
        # Claimed before anything is checked: a repeat is answered as one wherever it lands
        # (as a repeat here is), even by a gateway that would refuse a new run now.
        claim = await shared.claim(kind, key, run_id, accepted_at, agent_id, session_key)
        if claim.run_id != run_id:
            return _repeat(edge, registry, Elsewhere(kind, key, claim)), False
        if conn not in registry.connections:
            # Closed while Redis answered: nobody was told of the run, so none is started
            # (a retry with the key runs it).
            shared.release(kind, key, run_id)
            raise MethodError("UNAVAILABLE", "The connection closed.")
    request = RunRequest(agent_id, session_key, message, extra_system_prompt=extra, run_id=run_id)
    try:
        run = _start(edge, conn, kind, request)
    except Exception:
        if shared is not None:
            assert key is not None
            shared.release(kind, key, run_id)  # refused: a retry may run
        raise
    tracked = Tracked(run, accepted_at)
    registry.remember(tracked, kind, key)
    if shared is not None:
        assert key is not None
        run.wait().addCallback(_share_end, edge, shared, kind, key, claim)
    return tracked, True


def _share_end(
    result: RunResult, edge: Edge, shared: IIdempotencyKeys, kind: str, key: str, claim: Claim
) -> None:
    """The run's outcome under its key, for a repeat on another gateway."""
    outcome: dict[str, Any]
    if result.error is not None:
        error = result.error.to_json()
        if result.error.retry_after is not None:
            error["retryAfter"] = result.error.retry_after
        outcome = {"error": error}
    else:
        outcome = {"stopReason": result.stop_reason, "usage": result.usage.to_json()}
        if kind == "agent":
            outcome["text"] = result.text  # the final reply's payload
    shared.ended(kind, key, attrs.evolve(claim, ended_at=edge.now_ms(), outcome=outcome))


def _start(edge: Edge, conn: Connection, kind: str, request: RunRequest) -> Run:
    """A new run for ``conn``, unless the gateway is stopping or the client is at its caps."""
    if not edge.ready:
        raise MethodError("UNAVAILABLE", "The gateway is shutting down.")
    try:
        edge.limits.admit(conn.client_ip, conn.runs_in_flight())
    except TooManyRuns as e:
        details = {"scope": e.scope, "limit": e.limit, "configKey": e.key}
        raise MethodError("RATE_LIMITED", e.message, details) from None
    run_id = request.run_id
    assert run_id is not None
    # Owned before it starts: a run may emit its first events inside start().
    conn.registry.own(run_id, conn)
    try:
        run = edge.runner.start(request)
    except UnknownAgent as e:
        conn.registry.disown(run_id)
        raise invalid(e.message) from None
    edge.limits.hold(conn.client_ip, run)
    conn.hold(run, kind)
    return run


def _repeat(edge: Edge, registry: RunRegistry[Any], found: Elsewhere) -> Tracked | Elsewhere:
    """The claimed run as this gateway knows it best: its own (still), or the claim."""
    run_id = found.claim.run_id
    tracked = registry.runs.get(run_id)
    if tracked is not None:
        return tracked
    run = edge.runner.active.get(run_id)
    return Tracked(run, found.claim.accepted_at) if run is not None else found


def agent_result(
    run_id: str, text: str, usage: Any, stop_reason: str, agent_id: str, session_key: str
) -> dict[str, Any]:
    """The final ``agent`` reply of a run that ended well."""
    return {
        "runId": run_id,
        "status": "ok",
        "summary": "completed",
        "result": {
            "payloads": [{"text": text}],
            "meta": {
                "usage": usage,
                "stopReason": stop_reason,
                "agentId": agent_id,
                "sessionKey": session_key,
            },
        },
    }


async def agent(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    found, fresh = await start_run(edge, conn, "agent", call.params)
    if isinstance(found, Elsewhere):
        return await _agent_elsewhere(edge, conn, call, found)
    run = found.run
    conn.reply(
        call.id, {"runId": run.run_id, "status": "accepted", "acceptedAt": found.accepted_at}
    )
    if fresh:
        await conn.pump(run, lambda event: conn.send_event("agent", to_json(event)))
    result = await run.wait()
    if result.error is not None:
        raise run_error(result.error, run.run_id)
    return agent_result(
        run.run_id,
        result.text,
        result.usage.to_json(),
        result.stop_reason,
        result.agent_id,
        result.session_key,
    )


async def _agent_elsewhere(
    edge: Edge, conn: Connection, call: Call, found: Elsewhere
) -> dict[str, Any]:
    """A repeated ``agent`` whose run another gateway holds: accepted, then its outcome."""
    claim = found.claim
    conn.reply(
        call.id, {"runId": claim.run_id, "status": "accepted", "acceptedAt": claim.accepted_at}
    )
    assert edge.idempotency is not None
    while claim.outcome is None:
        if not edge.ready:
            raise MethodError("UNAVAILABLE", "The gateway is shutting down.")
        settled = await edge.idempotency.settled(found.kind, found.key, claim, WAIT_SLICE)
        if settled is None:
            raise MethodError(
                "UNAVAILABLE",
                f"Run {claim.run_id} is no longer known (its gateway may have stopped).",
                {"runId": claim.run_id},
            )
        claim = settled
    outcome = claim.outcome
    error = outcome.get("error")
    if error is not None:
        kind, message = error.get("kind", "internal_error"), error.get("message", "")
        raise run_error(RunError(kind, message, retry_after=error.get("retryAfter")), claim.run_id)
    return agent_result(
        claim.run_id,
        outcome.get("text", ""),
        outcome.get("usage"),
        outcome.get("stopReason", "stop"),
        claim.agent_id,
        claim.session_key,
    )


async def chat_send(edge: Edge, conn: Connection, call: Call) -> None:
    found, fresh = await start_run(edge, conn, "chat", call.params)
    if isinstance(found, Elsewhere):
        status = "in_flight" if found.claim.outcome is None else "ok"
        conn.reply(call.id, {"runId": found.claim.run_id, "status": status})
        return
    run = found.run
    status = "started" if fresh else ("in_flight" if run.result is None else "ok")
    conn.reply(call.id, {"runId": run.run_id, "status": status})
    if not fresh:
        return
    so_far = [""]

    def send(event: RunEvent) -> None:
        if isinstance(event, TextDelta):
            so_far[0] = event.text
        payload = methods.chat_event(event, so_far[0])
        if payload is not None:
            conn.send_event("chat", payload)

    await conn.pump(run, send)


async def agent_wait(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    run_id = text(call.params, "runId", required=True)
    timeout_ms = integer(call.params, "timeoutMs", 30_000, 0, 24 * 3600 * 1000)
    tracked = conn.registry.runs.get(run_id or "")
    run = tracked.run if tracked is not None else edge.runner.active.get(run_id or "")
    if run is None and edge.cluster is not None:
        return await _wait_elsewhere(edge, run_id or "", timeout_ms / 1000)
    if run is None:
        raise invalid(f"unknown runId '{run_id}'")
    result = await _wait(edge, run, timeout_ms / 1000)
    out: dict[str, Any] = {"runId": run_id}
    if tracked is not None:
        out["startedAt"] = tracked.accepted_at
    if result is None:
        return {**out, "status": "timeout"}
    if tracked is not None and tracked.ended_at is not None:
        out["endedAt"] = tracked.ended_at
    if result.error is not None:
        return {**out, "status": "error", "error": result.error.to_json()}
    return {**out, "status": "ok", "stopReason": result.stop_reason}


async def _wait_elsewhere(edge: Edge, run_id: str, seconds: float) -> dict[str, Any]:
    """``agent.wait`` for a run another gateway on the same Redis runs (or ran)."""
    assert edge.cluster is not None
    try:
        remote = await edge.cluster.wait(run_id, seconds)
    except StoreUnavailable:
        raise MethodError("UNAVAILABLE", STORE_UNAVAILABLE_MESSAGE) from None
    if remote is None:
        raise invalid(f"unknown runId '{run_id}'")
    out: dict[str, Any] = {"runId": run_id, "startedAt": remote.accepted_at}
    if remote.ended_at is None or remote.outcome is None:
        return {**out, "status": "timeout"}
    out["endedAt"] = remote.ended_at
    if "error" in remote.outcome:
        return {**out, "status": "error", "error": remote.outcome["error"]}
    return {**out, "status": "ok", "stopReason": remote.outcome.get("stopReason")}


def _wait(edge: Edge, run: Run, seconds: float) -> Deferred[RunResult | None]:
    """The run's result, or ``None`` once ``seconds`` have passed without one."""
    if run.result is not None:
        return succeed(run.result)
    d: Deferred[RunResult | None] = Deferred()

    def ended(result: RunResult) -> None:
        if not d.called:
            timer.cancel()
            d.callback(result)

    def expired() -> None:
        if not d.called:
            d.callback(None)

    timer = edge.clock.callLater(seconds, expired)
    run.wait().addCallback(ended)
    return d


async def chat_abort(edge: Edge, conn: Connection, call: Call) -> dict[str, Any]:
    key = text(call.params, "sessionKey")
    run_id = text(call.params, "runId")
    if key is None and run_id is None:
        raise invalid("chat.abort needs 'sessionKey' or 'runId'")
    runs = [
        r
        for r in edge.runner.active.values()
        if (run_id is None or r.run_id == run_id) and (key is None or r.session_key == key)
    ]
    for r in runs:
        r.cancel("aborted")
    run_ids = [r.run_id for r in runs]
    if edge.cluster is not None and not (run_id is not None and run_ids):
        # The run may be another gateway's: each one stops its matching runs and says which.
        try:
            run_ids += await edge.cluster.abort_elsewhere(key, run_id)
        except StoreUnavailable:
            if not run_ids:
                raise MethodError("UNAVAILABLE", STORE_UNAVAILABLE_MESSAGE) from None
    return {"ok": True, "aborted": bool(run_ids), "runIds": run_ids}


#: Every method a connected client may call, in the order ``hello-ok`` lists them.
HANDLERS: dict[str, Handler] = {
    "health": health,
    "status": status,
    "agents.list": agents_list,
    "models.list": models_list,
    "sessions.list": sessions_list,
    "agent": agent,
    "agent.wait": agent_wait,
    "chat.send": chat_send,
    "chat.history": chat_history,
    "chat.abort": chat_abort,
}
