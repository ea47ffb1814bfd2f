"""The HTTP routes: health and readiness here; each feature adds its routes to this app."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from .completions import ChatCompletions
from .errors import JSON_TYPE, error_body, json_body, not_found
from .request import BodyLimit

log = Logger()

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from ..gateway import Gateway


@cache
def openapi_document() -> bytes:
    """The OpenAPI 3.1 document of the HTTP API, shipped in the package."""
    return files("openclaw_twisted").joinpath("openapi.json").read_bytes()


class GatewayHTTP:
    """The Klein application of one gateway."""

    app = Klein()

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.chat = ChatCompletions(gateway)

    def body_gate(self, request: IRequest) -> bytes | BodyLimit | None:
        """Checks a request once its headers are in, before its body is read."""
        return self.chat.body_gate(request)

    @app.route("/healthz", methods=["GET", "HEAD"])
    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        return json_body(request, 200, {"ok": True, "status": "live"}, no_store=True)

    @app.route("/readyz", methods=["GET", "HEAD"])
    @app.route("/ready", methods=["GET", "HEAD"])
    def ready(self, request: IRequest) -> bytes:
        ready = self.gateway.ready
        return json_body(request, 200 if ready else 503, {"ready": ready}, no_store=True)

    @app.route("/openapi.json", methods=["GET", "HEAD"])
    def openapi(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", JSON_TYPE)
        return openapi_document()

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

    @app.route("/v1/models")
    def models(self, request: IRequest) -> bytes:
        return self.chat.models(request)

    @app.route("/v1/models/<path:model_id>")
    def model(self, request: IRequest, model_id: str) -> bytes:
        return self.chat.models(request, model_id)

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
