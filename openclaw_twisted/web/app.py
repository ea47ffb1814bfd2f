"""The HTTP routes: health and readiness here; each feature adds its routes to this app."""

from __future__ import annotations

from collections.abc import Coroutine
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from .completions import ChatCompletions
from .errors import JSON_TYPE, error_body, json_body, not_found
from .gate import (
    NO_BODY,
    BodyRule,
    RouteGate,
    json_content_type,
    method_not_allowed,
    payload_too_large,
)
from .request import BodyLimit, RoutePath
from .responses import Responses
from .root import is_websocket_upgrade, root_refusal
from .sessions import SessionRoutes
from .tools_invoke import MAX_BODY_BYTES as TOOLS_INVOKE_MAX_BODY_BYTES
from .tools_invoke import ToolsInvoke

log = Logger()

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from ..edge import Edge


@cache
def openapi_document() -> bytes:
    """The OpenAPI 3.1 document of the HTTP API, shipped in the package."""
    return files("openclaw_twisted").joinpath("openapi.json").read_bytes()


class GatewayHTTP:
    """The Klein application of one gateway."""

    app = Klein()

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.chat = ChatCompletions(edge)
        self.responses = Responses(edge, self.chat)
        self.sessions = SessionRoutes(edge, self.chat)
        self.tools = ToolsInvoke(edge)
        cc = edge.chat_completions
        # Bound once: naming a request's route for the metrics costs one match, no more, and
        # none for a path a route spells out whole (a table no bigger than the routes).
        self._urls = self.app.url_map.bind("gateway")
        self._static_routes: dict[tuple[str, bytes], str] = {}
        models = BodyRule(
            0, precheck=lambda r: self.chat.precheck(r, b"GET, HEAD", self.chat.models_enabled)
        )
        # What each route takes as a body, by endpoint name (a route added below without an
        # entry gets the gate's small default).  A new body route brings its own line.
        policy = edge.browser
        self.gate = RouteGate(
            self.app.url_map,
            {
                "health": NO_BODY,
                "ready": NO_BODY,
                "openapi": NO_BODY,
                "models": models,
                "model": models,
                "metrics": BodyRule(0, precheck=self.metrics_precheck),
                "chat_completions": BodyRule(
                    cc.max_body_bytes, json=True, precheck=lambda r: self.chat.precheck(r, b"POST")
                ),
                "responses_create": BodyRule(
                    edge.responses.max_body_bytes, json=True, precheck=self.responses.precheck
                ),
                "session_history": BodyRule(
                    0, precheck=lambda r: self.sessions.precheck(r, b"GET, HEAD")
                ),
                # ``{}`` at most: some clients send an empty object with every POST.
                "session_kill": BodyRule(
                    1024, json=True, precheck=lambda r: self.sessions.precheck(r, b"POST")
                ),
                "tools_invoke": BodyRule(
                    TOOLS_INVOKE_MAX_BODY_BYTES, json=True, precheck=self.tools_precheck
                ),
            },
            before=lambda r: root_refusal(r, policy),
        )

    def body_gate(
        self, request: IRequest, route: RoutePath
    ) -> bytes | BodyLimit | Deferred[bytes | BodyLimit] | None:
        """Checks a request with a body once its headers are in, before the body is read."""
        return self.gate(request, route)

    def route_name(self, request: IRequest) -> str:
        """
        The endpoint name of the route a request reached (``chat_completions``, ``health``,
        ...): a label from a fixed set, never the path the client wrote.  ``websocket`` for
        an upgrade; ``none`` when no route (or not this method) serves the path.
        """
        if is_websocket_upgrade(request):
            return "websocket"
        route: RoutePath | None = getattr(request, "route", None)
        if route is None:
            return "none"
        known = self._static_routes.get((route.text, request.method))
        if known is not None:
            return known
        try:
            rule, _ = self._urls.match(
                route.text, method=request.method.decode("latin-1"), return_rule=True
            )
        except HTTPException:
            return "none"
        name = str(rule.endpoint)
        if not rule.arguments:
            self._static_routes[route.text, request.method] = name
        return name

    def count_response(self, request: IRequest, status: int) -> None:
        """The site's ``answered``: one more request of its route and status."""
        metrics = self.edge.metrics
        if metrics is not None:
            metrics.request_done(self.route_name(request), status)

    def tools_precheck(self, request: IRequest) -> Deferred[bytes | None]:
        """``POST`` only, and the bearer credential, before the body is read."""
        if request.method != b"POST":
            return succeed(method_not_allowed(request, b"POST"))
        return self.chat.authorize(request)

    def metrics_precheck(self, request: IRequest) -> Deferred[bytes | None]:
        """404 while ``gateway.metrics`` is off; the bearer check unless its auth is none."""
        if self.edge.metrics is None or not self.edge.metrics_config.enabled:
            return succeed(not_found(request))
        if self.edge.metrics_config.auth == "none":
            return succeed(None)
        return self.chat.authorize(request)

    @app.route("/healthz", methods=["GET", "HEAD"])
    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"ok": True, "status": "live"}, no_store=True)

    @app.route("/readyz", methods=["GET", "HEAD"])
    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        # Not ready while stopping, or while the shared session store (Redis) is down: a
        # balancer takes the gateway out until it is back (``/healthz`` stays 200).
        reason = self.edge.not_ready
        if reason is None:
            return json_body(request, 200, {"ready": True}, no_store=True)
        return json_body(request, 503, {"ready": False, "reason": reason}, no_store=True)

    @app.route("/openapi.json", methods=["GET", "HEAD"])
    def openapi(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        return openapi_document()

    @app.route("/metrics", methods=["GET", "HEAD"])
    async def metrics(self, request: IRequest) -> bytes:
        refusal = await self.metrics_precheck(request)
        metrics = self.edge.metrics
        if refusal is not None or metrics is None:
            return refusal or not_found(request)

        from ..metrics import CONTENT_TYPE  # prometheus-client: only once metrics are on

        def send(text: bytes) -> bytes:
            request.setHeader(b"content-type", CONTENT_TYPE)
            request.setHeader(b"cache-control", b"no-store")
            return text

        return send(await metrics.scrape())

    @app.route("/v1/chat/completions", branch=False)
    async def chat_completions(self, request: IRequest) -> bytes | None:
        try:
            return await self.chat.complete(request)
        except CancelledError:
            raise
        except Exception:
            log.failure("chat completion failed")
            if request.startedWriting:  # type: ignore[attr-defined]
                request.loseConnection()  # type: ignore[attr-defined]
                return None
            return error_body(request, 500, "Internal error.", "api_error", code="internal_error")

    @app.route("/v1/responses", branch=False)
    async def responses_create(self, request: IRequest) -> bytes | None:
        return await self._guarded(request, self.responses.create(request), "response")

    @app.route("/sessions/<path:key>/history")
    async def session_history(self, request: IRequest, key: str) -> bytes | None:
        return await self._guarded(request, self.sessions.history(request, key), "history")

    @app.route("/sessions/<path:key>/kill")
    async def session_kill(self, request: IRequest, key: str) -> bytes | None:
        return await self._guarded(request, self.sessions.kill(request, key), "session kill")

    async def _guarded(
        self, request: IRequest, answer: Coroutine[Any, Any, bytes | None], what: str
    ) -> bytes | None:
        """The route's answer; a bug is a 500 (or a cut stream), its details in the log."""
        try:
            return await answer
        except CancelledError:
            raise
        except Exception:
            log.failure("{what} failed", what=what)
            if request.startedWriting:  # type: ignore[attr-defined]
                request.loseConnection()  # type: ignore[attr-defined]
                return None
            return error_body(request, 500, "Internal error.", "api_error", code="internal_error")

    @app.route("/tools/invoke", methods=["POST"])
    async def tools_invoke(self, request: IRequest) -> bytes | None:
        # The gate of the gateway's own Site checked these before the body; a Site
        # without it (embedding) gets the same answers here.
        if not getattr(request, "prechecked", False):
            refusal = await self.tools_precheck(request) or json_content_type(request)
            if refusal is not None:
                return refusal
            if request.content.seek(0, 2) > TOOLS_INVOKE_MAX_BODY_BYTES:
                return payload_too_large(request)
        return await self._guarded(request, self.tools.invoke(request), "tools/invoke")

    @app.route("/v1/models")
    async def models(self, request: IRequest) -> bytes:
        return await self.chat.models(request)

    @app.route("/v1/models/<path:model_id>")
    async def model(self, request: IRequest, model_id: str) -> bytes:
        return await self.chat.models(request, model_id)

    @app.handle_errors(NotFound)
    def missing(self, request: IRequest, failure: Failure) -> bytes:
        return not_found(request)

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        allowed = getattr(failure.value, "valid_methods", None) or []
        return method_not_allowed(request, ", ".join(allowed).encode("ascii"))
