"""The Gateway WebSocket protocol (v3), served by Autobahn behind the one-port dispatch."""

from __future__ import annotations

import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import txaio

txaio.use_twisted()

from autobahn.twisted.resource import WebSocketResource  # noqa: E402
from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet.defer import Deferred, ensureDeferred, succeed  # noqa: E402
from twisted.internet.interfaces import IDelayedCall, IReactorTime  # noqa: E402
from twisted.logger import Logger  # noqa: E402

from .. import _json as strict_json  # noqa: E402
from ..agents.events import (  # noqa: E402
    FINAL_EVENTS,
    RunError,
    RunEvent,
    RunRequest,
    RunResult,
    TextDelta,
    to_json,
)
from ..agents.runner import Run, UnknownAgent  # noqa: E402
from ..auth import LOCKED_OUT  # noqa: E402
from ..limits import TooManyRuns  # noqa: E402
from . import methods  # noqa: E402
from .methods import MethodError, dumps, integer, invalid, text  # noqa: E402
from .outbox import Outbox  # noqa: E402

if TYPE_CHECKING:
    from ..edge import Edge

log = Logger()

PROTOCOL_VERSION = 3
MiB = 1024 * 1024
#: Largest frame accepted from a client (a long pasted message fits; images do not go here).
MAX_PAYLOAD = 4 * MiB
#: Bytes that may wait for a client that does not read before it is disconnected.
MAX_BUFFERED_BYTES = 8 * MiB
TICK_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
#: Runs remembered for ``agent.wait`` and ``idempotencyKey`` after they end.
REMEMBERED_RUNS = 256
#: The shortest time between two ``assistant`` events of one run to an observer (OpenClaw
#: throttles its chat deltas the same way): the deltas in between go out merged as one.
BROADCAST_INTERVAL = 0.150
#: RFC 6455 close codes (Autobahn's public ``sendClose`` only allows 1000 and 3000-4999).
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008

METHODS = (
    "health",
    "status",
    "agents.list",
    "models.list",
    "sessions.list",
    "agent",
    "agent.wait",
    "chat.send",
    "chat.history",
    "chat.abort",
)
EVENTS = ("connect.challenge", "agent", "chat", "tick", "shutdown")
#: How a run's failure kind becomes a protocol error code.
ERROR_CODES = {"agent_timeout": "AGENT_TIMEOUT", "aborted": "ABORTED", "internal_error": "INTERNAL"}
#: Which runs end with the connection that started them: a ``chat.send`` answer goes only to
#: its requester, while an ``agent`` run is reached again by ``agent.wait`` or its
#: ``idempotencyKey`` from a new connection (OpenClaw keeps those running too).
CANCELLED_ON_CLOSE = frozenset({"chat"})


def _version() -> str:
    from .._version import __version__

    return __version__


@attrs.define
class Tracked:
    """A run started over WebSocket, remembered for ``agent.wait`` and idempotent repeats."""

    run: Run
    accepted_at: int
    ended_at: int | None = None


def run_error(error: RunError, run_id: str) -> MethodError:
    details: dict[str, Any] = {"kind": error.kind, "runId": run_id}
    if error.retry_after is not None:
        details["retryAfter"] = error.retry_after
    return MethodError(ERROR_CODES.get(error.kind, "UNAVAILABLE"), error.message, details)


class _Watch:
    """One run's answer on its way to the observers: how much of it each has had."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        #: The deltas seen since the run was first watched (the first may be all before it).
        self.parts: list[str] = []
        self.latest: TextDelta | None = None
        #: How many of ``parts`` each observer has been sent.
        self.sent: dict[GatewayWebSocket, int] = {}
        self.flushed_at = float("-inf")
        self.timer: IDelayedCall | None = None

    def add(self, event: TextDelta, keeps_text: bool) -> None:
        if self.latest is None and keeps_text:
            # Watched from mid-run: the answer so far, joined once.
            self.parts.append(event.text)
        else:
            self.parts.append(event.delta)
        self.latest = event


class GatewayWebSocket(WebSocketServerProtocol):
    """One WebSocket client: challenge, connect, then requests and events."""

    factory: GatewayWebSocketFactory

    def __init__(self) -> None:
        super().__init__()
        self.conn_id = str(uuid.uuid4())
        self.client_ip = ""
        self.nonce = ""
        self.client: dict[str, Any] = {}
        self.authenticated = False
        self.outbox: Outbox | None = None
        self._greeted = False  # the first frame was seen (whatever it was)
        self._seq = 0
        self._timer: IDelayedCall | None = None
        #: Runs this connection started: their events reach it through a pulled pump.
        self._own: set[str] = set()
        #: Runs this connection started that have not ended, and which method started them.
        self._in_flight: dict[str, tuple[Run, str]] = {}
        self._tasks: set[Deferred[Any]] = set()
        self._stopping = False
        #: Ends this connection's count in ``openclaw_streams_open`` (metrics on).
        self._stream_closed: Callable[[], None] | None = None

    @property
    def _edge(self) -> Edge:
        return self.factory.edge

    # Connection lifecycle.

    def onConnect(self, request: Any) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        forwarded = request.headers.get("x-forwarded-for")
        self.client_ip = self._edge.client_address.resolve(
            getattr(peer, "host", "") or "", forwarded
        )

    def onOpen(self) -> None:
        self.outbox = Outbox(self._write, self.factory.max_buffered_bytes, self._overflow)
        transport: Any = self.transport
        try:
            transport.registerProducer(self.outbox, True)
        except RuntimeError:
            # The HTTP channel that served the upgrade is still registered on the socket.
            transport.unregisterProducer()
            transport.registerProducer(self.outbox, True)
        self.factory.connections.add(self)
        metrics = self._edge.metrics
        if metrics is not None:
            self._stream_closed = metrics.stream_opened("websocket")
        self.nonce = secrets.token_hex(16)
        self._send_frame(
            {
                "type": "event",
                "event": "connect.challenge",
                "payload": {"nonce": self.nonce, "ts": self._now_ms()},
            }
        )
        self._timer = self._edge.clock.callLater(
            self.factory.connect_timeout, self._connect_timeout
        )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connections.discard(self)
        if self._stream_closed is not None:
            self._stream_closed()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.outbox is not None:
            self.outbox.close()
        # Nobody is left to read these answers.
        for run, kind in list(self._in_flight.values()):
            if kind in CANCELLED_ON_CLOSE:
                run.cancel("aborted")

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self.authenticated:
            self.close(CLOSE_POLICY_VIOLATION, "connect timeout")

    def _tick(self) -> None:
        self.send_event("tick", {"ts": self._now_ms()})
        self._timer = self._edge.clock.callLater(TICK_SECONDS, self._tick)

    def close(self, code: int, reason: str) -> None:
        """
        Start the closing handshake with any RFC 6455 code, after the frames already queued
        (a ``shutdown`` event waiting in a paused outbox must not be overtaken by the close).
        """
        if self.outbox is not None and not self.outbox.closed and not self.outbox.idle:
            self.outbox.writable().addCallback(lambda _: self._close_now(code, reason))
            return
        self._close_now(code, reason)

    def _close_now(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123])

    def _overflow(self) -> None:
        log.warn(
            "WebSocket client {ip} ({conn}) stopped reading: over {limit} bytes waiting; "
            "disconnecting it",
            ip=self.client_ip,
            conn=self.conn_id,
            limit=self.factory.max_buffered_bytes,
        )
        # A close frame could not reach a client that doesn't read: drop the socket and what
        # its kernel and transport buffers hold.
        self.dropConnection(abort=True)

    # Sending.

    def _now_ms(self) -> int:
        return self._edge.now_ms()

    def _write(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(data)

    def _send_frame(self, frame: dict[str, Any]) -> None:
        data = dumps(frame)
        if len(data) > self.factory.max_payload:
            if frame["type"] == "res":
                error = MethodError("INVALID_REQUEST", "The response is larger than maxPayload.")
                data = dumps(
                    {"type": "res", "id": frame["id"], "ok": False, "error": error.to_json()}
                )
            else:
                log.warn("dropping an oversized {event} event", event=frame.get("event"))
                return
        if self.outbox is not None:
            self.outbox.send(data)

    def takes_more(self) -> bool:
        """Whether a frame sent now would go straight to the socket (nothing waits)."""
        return self.outbox is not None and self.outbox.idle

    def send_event(self, event: str, payload: dict[str, Any]) -> None:
        """An event with this connection's next ``seq``."""
        self.send_encoded_event(event, dumps(payload))

    def send_encoded_event(self, event: str, payload: bytes) -> None:
        """``send_event`` with the payload already JSON: a broadcast encodes it only once."""
        if self.outbox is None or self.outbox.closed:
            return
        self._seq += 1
        data = b'{"type":"event","event":%s,"payload":%s,"seq":%d}' % (
            dumps(event),
            payload,
            self._seq,
        )
        if len(data) > self.factory.max_payload:
            log.warn("dropping an oversized {event} event", event=event)
            return
        self.outbox.send(data)

    def reply(self, req_id: Any, payload: dict[str, Any]) -> None:
        self._send_frame({"type": "res", "id": req_id, "ok": True, "payload": payload})

    def reply_error(self, req_id: Any, error: MethodError) -> None:
        self._send_frame({"type": "res", "id": req_id, "ok": False, "error": error.to_json()})

    # Receiving.

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame: Any = None
        if not isBinary:
            try:
                frame = strict_json.loads(payload.decode("utf-8"))
            except ValueError:
                frame = None
        if not self._greeted:
            self._greeted = True
            self._connect(frame)
        elif self.authenticated:
            self._request(frame)

    def _connect(self, frame: Any) -> None:
        req_id = frame.get("id") if isinstance(frame, dict) else None
        try:
            if not (
                isinstance(frame, dict)
                and frame.get("type") == "req"
                and frame.get("method") == "connect"
                and isinstance(req_id, str)
            ):
                raise invalid("the first frame must be a 'connect' request")
            params = frame.get("params")
            if not isinstance(params, dict):
                raise invalid("connect: params must be an object")
            low, high = params.get("minProtocol"), params.get("maxProtocol")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
                raise invalid("connect: minProtocol and maxProtocol must be integers")
            client = params.get("client")
            if not isinstance(client, dict) or not all(
                isinstance(client.get(k), str) and client[k].strip()
                for k in ("id", "version", "platform", "mode")
            ):
                raise invalid("connect: client must be {id, version, platform, mode}")
            auth = params.get("auth", {})
            if auth is None:
                auth = {}
            if not isinstance(auth, dict) or not all(
                isinstance(auth.get(k), str | None) for k in ("token", "password")
            ):
                raise invalid("connect: auth must be {token} or {password}")
        except MethodError as e:
            self.reply_error(req_id, e)
            self.close(CLOSE_POLICY_VIOLATION, e.message)
            return
        assert isinstance(low, int) and isinstance(high, int)
        if not low <= PROTOCOL_VERSION <= high:
            self.reply_error(
                req_id,
                MethodError(
                    "INVALID_REQUEST",
                    f"protocol mismatch: this gateway speaks {PROTOCOL_VERSION}",
                    {"expectedProtocol": PROTOCOL_VERSION},
                ),
            )
            self.close(CLOSE_PROTOCOL_ERROR, "protocol mismatch")
            return
        verdict = self._edge.auth.check(auth.get("token") or auth.get("password"), self.client_ip)
        if not verdict.ok:
            if verdict.reason == "locked":
                error = MethodError(
                    "RATE_LIMITED",
                    LOCKED_OUT,
                    {"retryAfterMs": (verdict.retry_after or 1) * 1000},
                )
            else:
                error = MethodError("UNAUTHORIZED", "Unauthorized", {"reason": verdict.reason})
            self.reply_error(req_id, error)
            self.close(CLOSE_POLICY_VIOLATION, "unauthorized")
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.authenticated = True
        self.client = {k: client[k] for k in ("id", "version", "platform", "mode")}
        self.reply(req_id, self._hello())
        self._timer = self._edge.clock.callLater(TICK_SECONDS, self._tick)

    def _hello(self) -> dict[str, Any]:
        edge = self._edge
        default = edge.roster.default_id
        return {
            "type": "hello-ok",
            "protocol": PROTOCOL_VERSION,
            "server": {"version": _version(), "connId": self.conn_id},
            "features": {"methods": list(METHODS), "events": list(EVENTS)},
            "snapshot": {
                "presence": [],
                "health": methods.health(edge, {}),
                "stateVersion": {"presence": 0, "health": 0},
                "uptimeMs": self._now_ms() - self.factory.started_ms,
                "sessionDefaults": {
                    "defaultAgentId": default,
                    "mainKey": methods.MAIN_KEY,
                    "mainSessionKey": f"agent:{default}:{methods.MAIN_KEY}",
                    "scope": "per-sender",
                },
            },
            "policy": {
                "maxPayload": self.factory.max_payload,
                "maxBufferedBytes": self.factory.max_buffered_bytes,
                "tickIntervalMs": int(TICK_SECONDS * 1000),
            },
        }

    def _request(self, frame: Any) -> None:
        req_id = frame.get("id") if isinstance(frame, dict) else None
        if not (
            isinstance(frame, dict)
            and frame.get("type") == "req"
            and isinstance(req_id, str)
            and isinstance(frame.get("method"), str)
        ):
            self.reply_error(
                req_id if isinstance(req_id, str) else None,
                invalid("expected a request {type:'req', id, method, params}"),
            )
            return
        method, params = frame["method"], frame.get("params")
        if params is None:
            params = {}
        handler = self._handlers().get(method)
        if handler is None:
            error = invalid(f"unknown method '{method}'")
            if method == "connect":
                error = invalid("already connected")
            self.reply_error(req_id, error)
            return
        if not isinstance(params, dict):
            self.reply_error(req_id, invalid("params must be an object"))
            return
        self._track(ensureDeferred(self._handle(req_id, method, handler, params)))

    def _track(self, d: Deferred[Any]) -> None:
        self._tasks.add(d)

        def done(result: object) -> object:
            self._tasks.discard(d)
            if self._stopping and not self._tasks:
                self.close(CLOSE_GOING_AWAY, "gateway stopping")
            return None

        d.addBoth(done)

    async def _handle(
        self, req_id: str, method: str, handler: Callable[..., Any], params: dict[str, Any]
    ) -> None:
        try:
            payload = await handler(req_id, params)
        except MethodError as e:
            self.reply_error(req_id, e)
        except Exception:
            log.failure("WebSocket method {method} failed", method=method)
            self.reply_error(req_id, MethodError("INTERNAL", "Internal error."))
        else:
            if payload is not None:
                self.reply(req_id, payload)

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "health": self._simple(methods.health),
            "status": self._status,
            "agents.list": self._simple(methods.agents_list),
            "models.list": self._simple(methods.models_list),
            "sessions.list": self._sessions_list,
            "agent": self._agent,
            "agent.wait": self._agent_wait,
            "chat.send": self._chat_send,
            "chat.history": self._chat_history,
            "chat.abort": self._chat_abort,
        }

    def _simple(self, fn: Callable[[Edge, dict[str, Any]], dict[str, Any]]) -> Any:
        async def handler(req_id: str, params: dict[str, Any]) -> dict[str, Any]:
            return fn(self._edge, params)

        return handler

    # Methods.

    async def _status(self, req_id: str, params: dict[str, Any]) -> dict[str, Any]:
        edge = self._edge
        return {
            "version": _version(),
            "protocol": PROTOCOL_VERSION,
            "ready": edge.ready,
            "uptimeMs": self._now_ms() - self.factory.started_ms,
            "connections": sum(1 for c in self.factory.connections if c.authenticated),
            "activeRuns": len(edge.runner.active),
            "agents": list(edge.roster.ids),
            "defaultAgentId": edge.roster.default_id,
        }

    async def _sessions_list(self, req_id: str, params: dict[str, Any]) -> dict[str, Any]:
        return await methods.sessions_list(self._edge, params)

    async def _chat_history(self, req_id: str, params: dict[str, Any]) -> dict[str, Any]:
        return await methods.chat_history(self._edge, params, self.factory.max_payload)

    def _start(self, kind: str, params: dict[str, Any]) -> tuple[Tracked, bool]:
        """The run a request asks for: a new one, or the one its ``idempotencyKey`` started."""
        message = text(params, "message", required=True)
        assert message is not None
        key = text(params, "idempotencyKey")
        if key is not None:
            tracked = self.factory.by_key(kind, key)
            if tracked is not None:
                return tracked, False
        agent_id, session_key = methods.target(self._edge, params)
        extra = text(params, "extraSystemPrompt") or ""
        if not self._edge.ready:
            raise MethodError("UNAVAILABLE", "The gateway is shutting down.")
        limits = self._edge.limits
        try:
            limits.admit(self.client_ip, len(self._in_flight))
        except TooManyRuns as e:
            details = {"scope": e.scope, "limit": e.limit, "configKey": e.key}
            raise MethodError("RATE_LIMITED", e.message, details) from None
        run_id = str(uuid.uuid4())
        # Owned before it starts: a run may emit its first events inside start().
        self._own.add(run_id)
        try:
            run = self._edge.runner.start(
                RunRequest(agent_id, session_key, message, extra_system_prompt=extra, run_id=run_id)
            )
        except UnknownAgent as e:
            self._own.discard(run_id)
            raise invalid(e.message) from None
        limits.hold(self.client_ip, run)
        self._in_flight[run_id] = (run, kind)
        run.wait().addCallback(lambda _: self._in_flight.pop(run_id, None))
        tracked = Tracked(run, self._now_ms())
        self.factory.remember(tracked, kind, key)
        return tracked, True

    async def _pump(self, run: Run, send: Callable[[RunEvent], object]) -> None:
        """
        Pull the run's events only while the socket takes them (backpressure to the model).

        An event that cannot be sent cancels the run (else it would wait for this reader
        forever, holding its session's lane); of the rest only the last event is tried.
        """
        failed = False
        try:
            while True:
                if self.outbox is not None:
                    await self.outbox.writable()
                event = await run.next_event()
                if event is None:
                    return
                if failed and not isinstance(event, FINAL_EVENTS):
                    continue
                try:
                    send(event)
                except Exception:
                    log.failure(
                        "could not send run {run_id}'s event to WebSocket client {conn}",
                        run_id=run.run_id,
                        conn=self.conn_id,
                    )
                    failed = True
                    run.cancel("internal_error")
        finally:
            self._own.discard(run.run_id)

    def _agent_event(self, event: RunEvent) -> None:
        self.send_event("agent", to_json(event))

    async def _agent(self, req_id: str, params: dict[str, Any]) -> dict[str, Any]:
        tracked, fresh = self._start("agent", params)
        run = tracked.run
        self.reply(
            req_id, {"runId": run.run_id, "status": "accepted", "acceptedAt": tracked.accepted_at}
        )
        if fresh:
            await self._pump(run, self._agent_event)
        result = await run.wait()
        if result.error is not None:
            raise run_error(result.error, run.run_id)
        return {
            "runId": run.run_id,
            "status": "ok",
            "summary": "completed",
            "result": {
                "payloads": [{"text": result.text}],
                "meta": {
                    "usage": result.usage.to_json(),
                    "stopReason": result.stop_reason,
                    "agentId": result.agent_id,
                    "sessionKey": result.session_key,
                },
            },
        }

    async def _chat_send(self, req_id: str, params: dict[str, Any]) -> None:
        tracked, fresh = self._start("chat", params)
        run = tracked.run
        status = "started" if fresh else ("in_flight" if run.result is None else "ok")
        self.reply(req_id, {"runId": run.run_id, "status": status})
        if not fresh:
            return
        so_far = [""]

        def send(event: RunEvent) -> None:
            if isinstance(event, TextDelta):
                so_far[0] = event.text
            payload = methods.chat_event(event, so_far[0])
            if payload is not None:
                self.send_event("chat", payload)

        await self._pump(run, send)

    async def _agent_wait(self, req_id: str, params: dict[str, Any]) -> dict[str, Any]:
        run_id = text(params, "runId", required=True)
        timeout_ms = integer(params, "timeoutMs", 30_000, 0, 24 * 3600 * 1000)
        tracked = self.factory.runs.get(run_id or "")
        run = tracked.run if tracked is not None else self._edge.runner.active.get(run_id or "")
        if run is None:
            raise invalid(f"unknown runId '{run_id}'")
        result = await self._wait(run, timeout_ms / 1000)
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

    def _wait(self, run: Run, seconds: float) -> Deferred[RunResult | None]:
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

        timer = self._edge.clock.callLater(seconds, expired)
        run.wait().addCallback(ended)
        return d

    async def _chat_abort(self, req_id: str, params: dict[str, Any]) -> dict[str, Any]:
        key = text(params, "sessionKey")
        run_id = text(params, "runId")
        if key is None and run_id is None:
            raise invalid("chat.abort needs 'sessionKey' or 'runId'")
        active = self._edge.runner.active
        runs = [
            r
            for r in active.values()
            if (run_id is None or r.run_id == run_id) and (key is None or r.session_key == key)
        ]
        for r in runs:
            r.cancel("aborted")
        return {"ok": True, "aborted": bool(runs), "runIds": [r.run_id for r in runs]}

    # Gateway stop.

    def shutdown(self) -> None:
        """Tell the client; close once its requests in flight have answered."""
        if not self.authenticated:
            self.close(CLOSE_GOING_AWAY, "gateway stopping")
            return
        self.send_event("shutdown", {"reason": "gateway stopping", "restartExpectedMs": None})
        self._stopping = True
        if not self._tasks:
            self.close(CLOSE_GOING_AWAY, "gateway stopping")


class GatewayWebSocketFactory(WebSocketServerFactory):
    """Holds the edge, the open connections, and the runs started over WebSocket."""

    protocol = GatewayWebSocket  # type: ignore[assignment]

    def __init__(
        self,
        edge: Edge,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(reactor=edge.clock)
        self.edge = edge
        self.max_payload = max_payload
        self.max_buffered_bytes = max_buffered_bytes
        self.connect_timeout = connect_timeout
        # failByDrop off: an oversized frame gets a close frame (1009) before the socket drops.
        self.setProtocolOptions(
            maxMessagePayloadSize=max_payload, maxFramePayloadSize=max_payload, failByDrop=False
        )
        self.started_ms = int(edge.started_at * 1000)
        self.connections: set[GatewayWebSocket] = set()
        self.runs: OrderedDict[str, Tracked] = OrderedDict()
        self._keys: OrderedDict[tuple[str, str], str] = OrderedDict()
        #: Runs whose ``assistant`` events observers get merged, by run id.
        self._watches: dict[str, _Watch] = {}
        #: When merged events go out (the edge's clock; a test may set a ``Clock``).
        self.clock: IReactorTime = edge.clock
        edge.runner.listeners.append(self._broadcast)

    def by_key(self, kind: str, key: str) -> Tracked | None:
        run_id = self._keys.get((kind, key))
        return self.runs.get(run_id) if run_id is not None else None

    def remember(self, tracked: Tracked, kind: str, key: str | None) -> None:
        run_id = tracked.run.run_id
        self.runs[run_id] = tracked
        if key is not None:
            self._keys[(kind, key)] = run_id

        def ended(result: RunResult) -> None:
            tracked.ended_at = self.edge.now_ms()

        tracked.run.wait().addCallback(ended)
        while len(self.runs) > REMEMBERED_RUNS:
            self.runs.popitem(last=False)
        while len(self._keys) > REMEMBERED_RUNS:
            self._keys.popitem(last=False)

    def _observers(self, run_id: str) -> list[GatewayWebSocket]:
        return [c for c in self.connections if c.authenticated and run_id not in c._own]

    def _broadcast(self, run: Run, event: RunEvent) -> None:
        """Every run's events go to every other authenticated client (best effort, bounded)."""
        run_id = run.run_id
        watch = self._watches.get(run_id)
        if isinstance(event, TextDelta):
            if watch is None:
                if not self._observers(run_id):
                    return
                watch = self._watches[run_id] = _Watch(run_id)
            watch.add(event, run.request.keep_text or run.request.persist)
            if watch.timer is None:
                due = watch.flushed_at + BROADCAST_INTERVAL - self.clock.seconds()
                if due <= 0:
                    self._flush(watch)
                else:
                    watch.timer = self.clock.callLater(due, self._flush, watch)
            return
        if watch is not None and isinstance(event, FINAL_EVENTS):
            # Whatever was held back goes out before the end, to every observer.
            self._flush(watch, force=True)
            del self._watches[run_id]
        observers = self._observers(run_id)
        if observers:
            payload = dumps(to_json(event))
            for conn in observers:
                conn.send_encoded_event("agent", payload)

    def _flush(self, watch: _Watch, force: bool = False) -> None:
        """
        One ``assistant`` event to each observer, its ``delta`` all the deltas it has not had
        yet. An observer whose socket is backed up is passed over until it drains (tried
        again an interval later) instead of queueing more; ``force`` sends to every one.
        """
        if watch.timer is not None:
            if watch.timer.active():
                watch.timer.cancel()
            watch.timer = None
        latest = watch.latest
        if latest is None:
            return
        watch.flushed_at = self.clock.seconds()
        count = len(watch.parts)
        groups: dict[int, list[GatewayWebSocket]] = {}
        behind = False
        for conn in self._observers(watch.run_id):
            had = watch.sent.get(conn, 0)
            if had >= count:
                continue
            if not force and not conn.takes_more():
                behind = True
                continue
            groups.setdefault(had, []).append(conn)
        for had, conns in groups.items():
            payload = dumps(
                {
                    "runId": latest.run_id,
                    "seq": latest.seq,
                    "ts": latest.ts,
                    "sessionKey": latest.session_key,
                    "stream": "assistant",
                    "data": {"delta": "".join(watch.parts[had:])},
                }
            )
            for conn in conns:
                conn.send_encoded_event("agent", payload)
                watch.sent[conn] = count
        if behind and not force:
            watch.timer = self.clock.callLater(BROADCAST_INTERVAL, self._flush, watch)

    def shutdown(self) -> None:
        """Tell every connected client the gateway is going away."""
        for conn in list(self.connections):
            conn.shutdown()


def websocket_resource(edge: Edge) -> WebSocketResource:
    """The Autobahn resource the root hands every ``Upgrade: websocket`` request to."""
    factory = GatewayWebSocketFactory(edge)
    factory.startFactory()
    return WebSocketResource(factory)
