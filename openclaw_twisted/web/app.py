"""The HTTP routes: health and readiness here; each feature adds its routes to this app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from klein import Klein
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .errors import json_body, not_found

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from ..gateway import Gateway


class GatewayHTTP:
    """The Klein application of one gateway."""

    app = Klein()

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @app.route("/healthz", methods=["GET", "HEAD"])
    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"ok": True, "status": "live"}, no_store=True)

    @app.route("/readyz", methods=["GET", "HEAD"])
    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        ready = self.gateway.ready
        return json_body(request, 200 if ready else 503, {"ready": ready}, no_store=True)

    @app.handle_errors(NotFound)
    def missing(self, request: IRequest, failure: Failure) -> bytes:
        return not_found(request)

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: IRequest, failure: Failure) -> bytes:
        request.setResponseCode(405)
        allowed = getattr(failure.value, "valid_methods", None) or []
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Method Not Allowed"
