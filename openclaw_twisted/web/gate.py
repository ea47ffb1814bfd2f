"""The body gate: what each route takes as a request body, decided from the request's head."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map

from .errors import error_body, not_found
from .request import BodyLimit, RoutePath
from .root import is_websocket_upgrade

#: The limit of a route the table does not name; below Twisted's spool size, so such a body
#: is never written to disk.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


def payload_too_large(request: IRequest) -> bytes:
    return error_body(
        request, 413, "Payload too large", "invalid_request_error", code="payload_too_large"
    )


def no_body(request: IRequest, what: str = "This endpoint") -> bytes:
    """The 413 of a request with a body where none is taken."""
    return error_body(
        request,
        413,
        f"{what} takes no request body.",
        "invalid_request_error",
        code="payload_too_large",
    )


def method_not_allowed(request: IRequest, allow: bytes) -> bytes:
    request.setResponseCode(405)
    request.setHeader(b"allow", allow)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"Method Not Allowed"


def json_content_type(request: IRequest) -> bytes | None:
    """
    ``None`` when the request says its body is JSON (``application/json``, a ``charset``
    other than UTF-8 refused); else the 415 answer.

    A body with no ``Content-Type`` at all is refused too: a browser page can send one
    cross-site without a CORS preflight (a ``Blob`` body), as it can ``text/plain``.
    """
    header = request.getHeader(b"content-type")
    if header is not None:
        mime, *params = header.decode("latin-1").split(";")
        charsets = [
            value.strip().strip('"').lower()
            for name, _, value in (p.partition("=") for p in params)
            if name.strip().lower() == "charset"
        ]
        if mime.strip().lower() == "application/json" and all(
            c in ("utf-8", "utf8") for c in charsets
        ):
            return None
        shown = "".join(c for c in header.decode("latin-1")[:100] if c.isprintable())
        message = (
            f'Unsupported Content-Type "{shown}": send the request body as JSON, with '
            '"Content-Type: application/json".'
        )
    else:
        message = 'A request body must be JSON, sent with "Content-Type: application/json".'
    return error_body(request, 415, message, "invalid_request_error", code="unsupported_media_type")


@attrs.frozen
class BodyRule:
    """
    What one route takes as a request body.

    ``max_bytes`` is its limit (0: it takes none; GET and HEAD never do); ``json`` bodies must
    say ``Content-Type: application/json``; ``precheck`` is the route's own checks that come
    before the body (CONTRACT §4.1: endpoint enabled, method, credentials and the rate
    limiter), whose answer, if any, is sent instead; it may take a while (a Deferred: the
    credential checked against a limiter shared over Redis), and the body waits for it.
    """

    max_bytes: int
    json: bool = False
    precheck: Callable[[IRequest], bytes | Deferred[bytes | None] | None] | None = None
    too_large: Callable[[IRequest], bytes] = payload_too_large


#: A route that takes no body: health, readiness, the API document.
NO_BODY = BodyRule(0)


@attrs.frozen
class RouteGate:
    """
    The site's body gate (L{openclaw_twisted.web.request.BodyGate}) for a Klein app.

    The route is found by the app's own URL map on the normalised path the router will see,
    so the gate and the router never disagree on which route a request reaches.  ``rules``
    maps a route's endpoint name to its L{BodyRule}; a route not named gets ``default``.
    The order is the root's refusals (``before``), then CONTRACT §4.1's: 404 (no route, or
    the endpoint off), 405, 401/429, then 415 and 413.
    """

    url_map: Map
    rules: Mapping[str, BodyRule]
    default: BodyRule = BodyRule(DEFAULT_MAX_BODY_BYTES)
    #: What the root resource answers before any route (a foreign Host, a bad handshake).
    before: Callable[[IRequest], bytes | None] | None = None

    def __call__(
        self, request: IRequest, route: RoutePath
    ) -> bytes | BodyLimit | Deferred[bytes | BodyLimit]:
        if self.before is not None:
            refusal = self.before(request)
            if refusal is not None:
                return refusal
        if is_websocket_upgrade(request):
            return no_body(request, "A WebSocket upgrade")
        method = request.method.decode("latin-1")
        try:
            rule, _ = self.url_map.bind("gateway").match(
                route.text, method=method, return_rule=True
            )
        except MethodNotAllowed as e:
            return method_not_allowed(request, ", ".join(e.valid_methods or []).encode())
        except HTTPException:
            # Not found, or a redirect to another spelling (which a normalised path never
            # needs): not served as spelt.
            return not_found(request)
        body = self.rules.get(str(rule.endpoint), self.default)
        if body.precheck is not None:
            checked = body.precheck(request)
            if isinstance(checked, Deferred):
                return checked.addCallback(
                    lambda r: r if r is not None else self._body(request, method, body)
                )
            if checked is not None:
                return checked
        return self._body(request, method, body)

    def _body(self, request: IRequest, method: str, body: BodyRule) -> bytes | BodyLimit:
        if body.max_bytes == 0 or method in ("GET", "HEAD"):
            return no_body(request)
        if body.json:
            refusal = json_content_type(request)
            if refusal is not None:
                return refusal
        length = request.getHeader(b"content-length")  # digits: the channel checked it
        if length is not None and int(length) > body.max_bytes:
            return body.too_large(request)
        return BodyLimit(body.max_bytes, body.too_large)
