"""The one-port dispatch: WebSocket upgrades to Autobahn, everything else to the Klein app."""

from __future__ import annotations

from collections.abc import Callable

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)


def is_websocket_upgrade(request: IRequest) -> bool:
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


class GatewayRoot(Resource):
    """
    A leaf resource, so the Klein app sees the whole path below wherever it is mounted.

    Any request with ``Upgrade: websocket`` goes to the WebSocket side, whatever its path.
    ``websocket`` is called for that side on each upgrade, so it can be built (and Autobahn
    imported) only once a client first asks for it.
    """

    isLeaf = True

    def __init__(self, http: IResource, websocket: Callable[[], IResource]) -> None:
        super().__init__()
        self._http = http
        self._websocket = websocket

    def render(self, request: IRequest) -> bytes | int:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if is_websocket_upgrade(request):
            return self._websocket().render(request)
        return self._http.render(request)
