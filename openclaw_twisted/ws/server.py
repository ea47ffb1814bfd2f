"""The Gateway WebSocket protocol (v3), served by Autobahn behind the one-port dispatch."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import txaio

txaio.use_twisted()

from autobahn.twisted.resource import WebSocketResource  # noqa: E402
from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.interfaces import IDelayedCall, IReactorTime  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from .. import _json as strict_json  # noqa: E402
from .._version import __version__  # noqa: E402
from ..agents.events import FINAL_EVENTS, RunEvent  # noqa: E402
from ..agents.runner import Run  # noqa: E402
from ..agents.store import STORE_UNAVAILABLE_MESSAGE, StoreUnavailable  # noqa: E402
from ..auth import LOCKED_OUT, AuthResult  # noqa: E402
from . import methods  # noqa: E402
from .handlers import HANDLERS, PROTOCOL_VERSION, Call, Handler  # noqa: E402
from .methods import MethodError, dumps, invalid  # noqa: E402
from .outbox import Outbox  # noqa: E402
from .runs import RunRegistry  # noqa: E402

if TYPE_CHECKING:
    from ..edge import Edge

log = Logger()

MiB = 1024 * 1024
#: Largest frame accepted from a client (a long pasted message fits; images do not go here).
MAX_PAYLOAD = 4 * MiB
#: Bytes that may wait for a client that does not read before it is disconnected.
MAX_BUFFERED_BYTES = 8 * MiB
TICK_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
#: RFC 6455 close codes (Autobahn's public ``sendClose`` only allows 1000 and 3000-4999).
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
#: RFC 6455 (IANA registry): the server cannot take the connection now; try again later.
CLOSE_TRY_AGAIN_LATER = 1013

METHODS = tuple(HANDLERS)
EVENTS = ("connect.challenge", "agent", "chat", "tick", "shutdown")
#: Which runs end with the connection that started them: a ``chat.send`` answer goes only to
#: its requester, while an ``agent`` run is reached again by ``agent.wait`` or its
#: ``idempotencyKey`` from a new connection (OpenClaw keeps those running too).
CANCELLED_ON_CLOSE = frozenset({"chat"})


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
        #: Runs this connection started that have not ended, and which method started them.
        self._in_flight: dict[str, tuple[Run, str]] = {}
        self._tasks: set[Deferred[Any]] = set()
        self._stopping = False
        #: Ends this connection's count in ``openclaw_streams_open`` (metrics on).
        self._stream_closed: Callable[[], None] | None = None

    @property
    def _edge(self) -> Edge:
        return self.factory.edge

    @property
    def registry(self) -> RunRegistry[GatewayWebSocket]:
        return self.factory.registry

    @property
    def max_payload(self) -> int:
        return self.factory.max_payload

    @property
    def started_ms(self) -> int:
        return self.factory.started_ms

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
        self.registry.connections.add(self)
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
        self.registry.connections.discard(self)
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
        d = self._edge.auth.check(auth.get("token") or auth.get("password"), self.client_ip)
        d.addCallbacks(
            self._checked,
            self._not_checked,
            callbackArgs=(req_id, client),
            errbackArgs=(req_id,),
        ).addErrback(lambda f: log.failure("connect failed", f))

    def _not_checked(self, failure: Failure, req_id: str) -> None:
        failure.trap(StoreUnavailable)
        log.warn("cannot check a credential: {why}", why=failure.value)
        if self.state != self.STATE_OPEN:
            return
        self.reply_error(req_id, MethodError("UNAVAILABLE", STORE_UNAVAILABLE_MESSAGE))
        self.close(CLOSE_TRY_AGAIN_LATER, "session store unavailable")

    def _checked(self, verdict: AuthResult, req_id: str, client: dict[str, Any]) -> None:
        if self.state != self.STATE_OPEN:
            return  # closed while a shared limiter was asked
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
            "server": {"version": __version__, "connId": self.conn_id},
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
        handler = HANDLERS.get(method)
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
        self, req_id: str, method: str, handler: Handler, params: dict[str, Any]
    ) -> None:
        try:
            payload = await handler(self._edge, self, Call(req_id, params))
        except MethodError as e:
            self.reply_error(req_id, e)
        except StoreUnavailable as e:
            log.warn("WebSocket method {method}: {why}", method=method, why=e)
            self.reply_error(req_id, MethodError("UNAVAILABLE", STORE_UNAVAILABLE_MESSAGE))
        except Exception:
            log.failure("WebSocket method {method} failed", method=method)
            self.reply_error(req_id, MethodError("INTERNAL", "Internal error."))
        else:
            if payload is not None:
                self.reply(req_id, payload)

    # Runs this connection started.

    def runs_in_flight(self) -> int:
        return len(self._in_flight)

    def hold(self, run: Run, kind: str) -> None:
        run_id = run.run_id
        self._in_flight[run_id] = (run, kind)
        run.wait().addCallback(lambda _: self._in_flight.pop(run_id, None))

    async def pump(self, run: Run, send: Callable[[RunEvent], object]) -> None:
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
            self.registry.disown(run.run_id)

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
    """Holds the edge, the connection settings, and the registry of connections and runs."""

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
        self.registry: RunRegistry[GatewayWebSocket] = RunRegistry(edge.clock, edge.now_ms)
        edge.runner.listeners.append(self.registry.broadcast)
        if edge.cluster is not None:
            edge.cluster.relays.append(self.registry.relay)

    @property
    def connections(self) -> set[GatewayWebSocket]:
        return self.registry.connections

    @property
    def clock(self) -> IReactorTime:
        """When merged broadcast events go out (the edge's clock; a test may set a ``Clock``)."""
        return self.registry.clock

    @clock.setter
    def clock(self, clock: IReactorTime) -> None:
        self.registry.clock = clock

    def shutdown(self) -> None:
        """Tell every connected client the gateway is going away."""
        for conn in list(self.registry.connections):
            conn.shutdown()


def websocket_resource(edge: Edge) -> WebSocketResource:
    """The Autobahn resource the root hands every ``Upgrade: websocket`` request to."""
    factory = GatewayWebSocketFactory(edge)
    factory.startFactory()
    return WebSocketResource(factory)
