"""The one-port dispatch: WebSocket upgrades to Autobahn, everything else to the Klein app."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from .errors import error_body
from .origin import BrowserPolicy

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)
#: The WebSocket version spoken here: RFC 6455's (every browser and client since 2011).
WEBSOCKET_VERSION = b"13"


def is_websocket_upgrade(request: IRequest) -> bool:
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


def _tokens(request: IRequest, name: bytes) -> set[bytes]:
    values = request.requestHeaders.getRawHeaders(name) or []
    return {t.strip().lower() for v in values for t in v.split(b",")}


def _one(request: IRequest, name: bytes) -> bytes | None:
    values = request.requestHeaders.getRawHeaders(name) or []
    return values[0].strip() if len(values) == 1 else None


def upgrade_refusal(request: IRequest, policy: BrowserPolicy) -> bytes | None:
    """
    The JSON refusal of an upgrade that is not a WebSocket handshake we accept, or ``None``.

    Autobahn refuses such requests with a bare status line, without the security headers or
    a body; checked here first, they get the gateway's usual error response instead.
    """

    def refuse(status: int, message: str, code: str, type_: str = "invalid_request_error") -> bytes:
        return error_body(request, status, message, type_, code=code)

    if request.method != b"GET":
        request.setHeader(b"allow", b"GET")
        return refuse(405, "A WebSocket upgrade must be a GET request.", "method_not_allowed")
    origin = policy.origin_refusal(request)
    if origin is not None:
        return refuse(403, origin, "origin_not_allowed", "forbidden")
    if getattr(request, "clientproto", b"HTTP/1.1") != b"HTTP/1.1":
        return refuse(400, "A WebSocket upgrade needs HTTP/1.1.", "invalid_upgrade")
    if _one(request, b"host") is None:
        return refuse(400, "A WebSocket upgrade needs exactly one Host header.", "invalid_upgrade")
    if b"upgrade" not in _tokens(request, b"connection"):
        return refuse(
            400, "A WebSocket upgrade needs the header `Connection: Upgrade`.", "invalid_upgrade"
        )
    if _one(request, b"sec-websocket-version") != WEBSOCKET_VERSION:
        request.setHeader(b"sec-websocket-version", WEBSOCKET_VERSION)
        request.setHeader(b"upgrade", b"websocket")
        return refuse(
            426,
            "This gateway speaks WebSocket version 13 (RFC 6455): "
            "send `Sec-WebSocket-Version: 13`.",
            "unsupported_websocket_version",
        )
    key = _one(request, b"sec-websocket-key")
    try:
        valid_key = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        return refuse(
            400,
            "A WebSocket upgrade needs one Sec-WebSocket-Key: 16 random bytes in base64.",
            "invalid_upgrade",
        )
    return None


def root_refusal(request: IRequest, policy: BrowserPolicy) -> bytes | None:
    """What the root answers before any route, if anything (the body gate asks it too)."""
    host = policy.host_refusal(request)
    if host is not None:
        return error_body(request, 421, host, "invalid_request_error", code="host_not_allowed")
    if is_websocket_upgrade(request):
        return upgrade_refusal(request, policy)
    return None


class GatewayRoot(Resource):
    """
    A leaf resource, so the Klein app sees the whole path below wherever it is mounted.

    Any request with ``Upgrade: websocket`` goes to the WebSocket side, whatever its path.
    ``websocket`` is called for that side on each upgrade, so it can be built (and Autobahn
    imported) only once a client first asks for it.  Before either side, ``policy`` refuses
    a foreign ``Host`` on loopback and a WebSocket from a foreign ``Origin``.
    """

    isLeaf = True

    def __init__(
        self,
        http: IResource,
        websocket: Callable[[], IResource],
        policy: BrowserPolicy | None = None,
    ) -> None:
        super().__init__()
        self._http = http
        self._websocket = websocket
        self._policy = policy if policy is not None else BrowserPolicy()

    def render(self, request: IRequest) -> bytes | int:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        refusal = root_refusal(request, self._policy)
        if refusal is not None:
            return refusal
        side = self._websocket() if is_websocket_upgrade(request) else self._http
        answer: bytes | int = side.render(request)
        return answer
