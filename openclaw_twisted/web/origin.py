"""Which browsers may drive the gateway: the Host check on loopback and the WebSocket Origin."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import attrs
from twisted.web.iweb import IRequest

from ..config import GatewayConfig

#: Host names that always mean this machine (loopback IP literals are accepted too).
LOOPBACK_NAMES = frozenset({"localhost"})
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def split_host(value: str, default_port: int | None = None) -> tuple[str, int | None] | None:
    """A ``Host`` value as (lower-case name without brackets, port); ``None`` if malformed."""
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:
        name, colon, after = value.partition(":")
        port = after if colon else None
    name = name.rstrip(".")
    if not name:
        return None
    if port is None:
        return name, default_port
    if not (port.isascii() and port.isdigit()) or len(port) > 5:
        return None
    return name, int(port)


def parse_origin(origin: str) -> tuple[str, str, int | None] | None:
    """An ``Origin`` as (scheme, host, port with the scheme's default); ``None`` if opaque."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.rstrip("."), port or _DEFAULT_PORTS.get(scheme)


def _is_loopback_literal(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_loopback_connection(request: IRequest) -> bool:
    """Whether this request arrived on a loopback address of ours (a DNS rebinding target)."""
    host = getattr(request.getHost(), "host", None)
    return isinstance(host, str) and _is_loopback_literal(host.split("%", 1)[0])


@attrs.frozen
class BrowserPolicy:
    """
    What a browser page on another site must not be able to do (CONTRACT §3, issue #17).

    On a loopback connection the ``Host`` must name this machine (or an allowed host): a
    page whose DNS name was re-pointed at 127.0.0.1 sends its own name.  A WebSocket upgrade
    that carries an ``Origin`` must come from the gateway's own origin or an allowed one;
    clients that send no ``Origin`` (not browsers) are not asked.
    """

    allowed_origins: frozenset[tuple[str, str, int | None]] = frozenset()
    any_origin: bool = False
    null_origin: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    any_host: bool = False

    @classmethod
    def from_config(cls, gateway: GatewayConfig) -> BrowserPolicy:
        origins = {o for o in map(parse_origin, gateway.allowed_origins) if o is not None}
        hosts = {h.strip("[]") for h in gateway.allowed_hosts if h != "*"}
        # A host named in an allowed origin is one the operator serves the gateway under.
        hosts.update(host for _, host, _ in origins)
        return cls(
            allowed_origins=frozenset(origins),
            any_origin="*" in gateway.allowed_origins,
            null_origin="null" in gateway.allowed_origins,
            allowed_hosts=frozenset(hosts),
            any_host="*" in gateway.allowed_hosts,
        )

    def host_refusal(self, request: IRequest) -> str | None:
        """Why the ``Host`` of ``request`` is not served here, or ``None`` when it is."""
        if self.any_host or not _is_loopback_connection(request):
            return None
        for raw in request.requestHeaders.getRawHeaders(b"host") or ():
            value = raw.decode("latin-1")
            parsed = split_host(value)
            name = parsed[0] if parsed is not None else None
            if name is None or not (
                name in LOOPBACK_NAMES or _is_loopback_literal(name) or name in self.allowed_hosts
            ):
                return (
                    f"Host {value.strip()!r} is not served here: the gateway listens on "
                    "loopback. If a proxy forwards this name, add it to gateway.allowedHosts."
                )
        return None

    def origin_refusal(self, request: IRequest) -> str | None:
        """Why a WebSocket upgrade with this ``Origin`` is refused, or ``None``."""
        values = request.requestHeaders.getRawHeaders(b"origin")
        if not values:
            return None  # not a browser: nothing to check against
        if len(values) > 1:
            return "A WebSocket upgrade may carry one Origin header."
        origin = values[0].decode("latin-1").strip()
        if self.any_origin or (origin.lower() == "null" and self.null_origin):
            return None
        parsed = parse_origin(origin)
        if parsed is not None and (parsed in self.allowed_origins or _same_origin(parsed, request)):
            return None
        return (
            f"WebSocket connections from origin {origin!r} are not allowed. "
            "Add it to gateway.controlUi.allowedOrigins to allow it."
        )


def _same_origin(origin: tuple[str, str, int | None], request: IRequest) -> bool:
    """The page was served from the name and port the request is addressed to."""
    host = request.getHeader(b"host")
    if host is None:
        return False
    scheme, name, port = origin
    parsed = split_host(host.decode("latin-1"), _DEFAULT_PORTS.get(scheme))
    return parsed == (name, port)
