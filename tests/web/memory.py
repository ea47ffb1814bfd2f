"""An in-memory HTTP client for the gateway's Site: raw bytes over a StringTransport, a Clock."""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.server import Site

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.providers.interface import IProvider
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import ScriptedProvider, parse_sse

TOKEN = "test-token"


def gateway_config(state_dir: str, **chat: Any) -> dict[str, Any]:
    """A config with the endpoint on, token auth, and agents main (default) and beta."""
    return {
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN},
            "http": {"endpoints": {"chatCompletions": {"enabled": True, **chat}}},
        },
        "agents": {
            "defaults": {"model": "scripted/model-a"},
            "list": [
                {"id": "main", "default": True},
                {"id": "beta", "name": "Beta", "model": "scripted/model-b"},
            ],
        },
    }


def make_gateway(
    state_dir: str,
    provider: IProvider | None = None,
    data: dict[str, Any] | None = None,
    reactor: Any = None,
) -> Gateway:
    config = parse_config(
        data if data is not None else gateway_config(state_dir),
        {"OPENCLAW_STATE_DIR": state_dir},
    )
    reactor = reactor or MemoryReactorClock()
    provider = provider or ScriptedProvider(clock=reactor)
    return Gateway(config, reactor, providers=Providers.of([provider]))


@attrs.define
class Response:
    """A parsed HTTP/1.1 response (chunked bodies decoded)."""

    status: int
    headers: dict[str, list[str]]
    body: bytes
    complete: bool

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        return parse_sse(self.body)


def parse_response(raw: bytes) -> Response | None:
    """The first response in ``raw`` (``None`` before its headers are complete)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head, sep, rest = rest.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:
        body, complete = b"", False
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                complete = True
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return Response(status, headers, body, complete)
    length = int(headers.get("content-length", ["0"])[0])
    return Response(status, headers, rest[:length], len(rest) >= length)


class BufferingTransport(StringTransport):
    """
    A StringTransport that pauses its producer past ``buffer_size`` unsent bytes, as a real
    socket transport does; ``drain()`` is the client reading them.
    """

    def __init__(self, buffer_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.buffer_size = buffer_size
        self.unsent = 0
        self.most_buffered = 0
        self.paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        self.most_buffered = max(self.most_buffered, self.unsent)
        if (
            self.buffer_size is not None
            and self.unsent > self.buffer_size
            and not self.paused
            and self.producer is not None
        ):
            self.paused = True
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def drain(self) -> None:
        self.unsent = 0
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()


class MemoryClient:
    """One client connection to ``gateway.site()``, driven by hand."""

    def __init__(
        self,
        gateway: Gateway,
        peer: str = "127.0.0.1",
        buffer_size: int | None = None,
        site: Site | None = None,
    ) -> None:
        self.gateway = gateway
        self.site = site or gateway.site()
        # A GatewayChannel, or the generic HTTP/1.1 channel of a plain Site.
        self.channel: Any = self.site.buildProtocol(IPv4Address("TCP", peer, 40000))
        self.transport = BufferingTransport(
            buffer_size,
            hostAddress=IPv4Address("TCP", "127.0.0.1", 18789),
            peerAddress=IPv4Address("TCP", peer, 40000),
        )
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def request(
        self,
        method: str = "POST",
        path: str = "/v1/chat/completions",
        body: Any = None,
        *,
        token: str | None = TOKEN,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Send a whole request (``body`` as JSON unless ``raw`` bytes are given)."""
        data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        headers = dict(headers or {})
        if data and not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"  # as every JSON client sends it
        for name, value in headers.items():
            lines.append(f"{name}: {value}")
        if data or method == "POST":
            lines.append(f"Content-Length: {len(data)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)

    def response(self) -> Response:
        r = parse_response(self.transport.value())
        assert r is not None, f"no response yet: {self.transport.value()!r}"
        return r

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def disconnect(self) -> None:
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        self.channel.connectionLost(Failure(ConnectionLost("client went away")))


def post(gateway: Gateway, body: Any = None, site: Site | None = None, **kwargs: Any) -> Response:
    """One request on a fresh connection; its response."""
    client = MemoryClient(gateway, site=site)
    client.request(body=body, **kwargs)
    return client.response()
