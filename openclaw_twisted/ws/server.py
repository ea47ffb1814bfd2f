"""The Gateway WebSocket protocol (v3), served by Autobahn behind the one-port dispatch."""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import txaio

txaio.use_twisted()

from autobahn.twisted.resource import WebSocketResource  # noqa: E402
from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketServerFactory,
    WebSocketServerProtocol,
)

if TYPE_CHECKING:
    from ..gateway import Gateway

PROTOCOL_VERSION = 3


class GatewayWebSocket(WebSocketServerProtocol):
    """One WebSocket client: challenge, connect, then requests and events."""

    factory: GatewayWebSocketFactory

    def onOpen(self) -> None:
        gateway = self.factory.gateway
        self.nonce = secrets.token_hex(16)
        self.send_event(
            "connect.challenge",
            {"nonce": self.nonce, "ts": int(gateway.reactor.seconds() * 1000)},
        )

    def send_event(self, event: str, payload: dict[str, Any], seq: int | None = None) -> None:
        frame: dict[str, Any] = {"type": "event", "event": event, "payload": payload}
        if seq is not None:
            frame["seq"] = seq
        self.sendMessage(json.dumps(frame, separators=(",", ":")).encode("utf-8"))


class GatewayWebSocketFactory(WebSocketServerFactory):
    protocol = GatewayWebSocket  # type: ignore[assignment]

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(reactor=gateway.reactor)
        self.gateway = gateway

    def shutdown(self) -> None:
        """Tell every connected client the gateway is going away."""


def websocket_resource(gateway: Gateway) -> WebSocketResource:
    """The Autobahn resource the root hands every ``Upgrade: websocket`` request to."""
    factory = GatewayWebSocketFactory(gateway)
    factory.startFactory()
    return WebSocketResource(factory)
