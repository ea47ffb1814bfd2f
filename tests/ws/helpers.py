"""A gateway on loopback and a protocol-speaking WS client for the WebSocket tests."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.providers.interface import IProvider
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.ws.server import GatewayWebSocketFactory

from ..support import WSClient, listen, ws_connect

TOKEN = "test-token"
_ids = itertools.count(1)


def make_gateway(
    test: SynchronousTestCase,
    config: dict[str, Any] | None = None,
    *,
    providers: tuple[IProvider, ...] = (),
    clock: Any = None,
) -> Gateway:
    data = config if config is not None else {"gateway": {"auth": {"token": TOKEN}}}
    cfg = parse_config(data, {"OPENCLAW_STATE_DIR": test.mktemp()})
    return Gateway(cfg, clock or reactor, providers=Providers.of(providers) if providers else None)


def ws_factory(gateway: Gateway) -> GatewayWebSocketFactory:
    gateway.websocket_resource()
    factory = gateway._ws_factory
    assert factory is not None
    return factory


def connect_frame(
    token: str | None = TOKEN, low: int = 3, high: int = 3, client_id: str = "test"
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "minProtocol": low,
        "maxProtocol": high,
        "client": {"id": client_id, "version": "1.0", "platform": "test", "mode": "test"},
    }
    if token is not None:
        params["auth"] = {"token": token}
    return {"type": "req", "id": "connect-1", "method": "connect", "params": params}


class Session:
    """A WS client past the handshake: requests by id, events collected on the side."""

    def __init__(self, client: WSClient, hello: dict[str, Any]) -> None:
        self.client = client
        self.hello = hello
        self.events: list[dict[str, Any]] = []
        #: Responses that arrived while another one was awaited, by request id.
        self.replies: dict[Any, list[dict[str, Any]]] = {}

    def send(self, method: str, params: dict[str, Any] | None = None) -> str:
        req_id = f"r{next(_ids)}"
        frame: dict[str, Any] = {"type": "req", "id": req_id, "method": method}
        if params is not None:
            frame["params"] = params
        self.client.send_json(frame)
        return req_id

    async def res(self, req_id: str) -> dict[str, Any]:
        """The next response to ``req_id``; events met on the way go to ``events``."""
        if self.replies.get(req_id):
            return self.replies[req_id].pop(0)
        while True:
            frame = await self.client.frames.get()
            if frame is None:
                raise AssertionError(f"connection closed while waiting for {req_id}")
            if frame["type"] == "event":
                self.events.append(frame)
            elif frame.get("id") == req_id:
                return frame
            else:
                self.replies.setdefault(frame.get("id"), []).append(frame)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.res(self.send(method, params))

    async def ok(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        frame = await self.call(method, params)
        assert frame["ok"], frame
        payload: dict[str, Any] = frame["payload"]
        return payload

    async def event(self, name: str) -> dict[str, Any]:
        """The next event called ``name`` (earlier ones seen are taken first)."""
        for i, frame in enumerate(self.events):
            if frame["event"] == name:
                return self.events.pop(i)
        while True:
            frame = await self.client.frames.get()
            if frame is None:
                raise AssertionError(f"connection closed while waiting for event {name}")
            if frame["type"] == "event" and frame["event"] == name:
                return frame
            if frame["type"] == "event":
                self.events.append(frame)
            else:
                self.replies.setdefault(frame.get("id"), []).append(frame)


async def open_session(
    test: TestCase, url: str, token: str | None = TOKEN, client_id: str = "test"
) -> Session:
    client = await ws_connect(test, url)
    challenge = await client.frames.get()
    assert challenge["event"] == "connect.challenge", challenge
    client.send_json(connect_frame(token, client_id=client_id))
    hello = await client.frames.get()
    assert hello["ok"], hello
    return Session(client, hello["payload"])


async def serve(test: TestCase, gateway: Gateway) -> str:
    return await listen(test, gateway)


async def until_end(session: Session, run_id: str | None = None) -> list[dict[str, Any]]:
    """The ``agent`` events ``session`` gets of one run, up to its lifecycle end or error."""
    seen: list[dict[str, Any]] = []
    while True:
        event = await session.event("agent")
        payload = event["payload"]
        if run_id is not None and payload["runId"] != run_id:
            continue
        seen.append(event)
        if payload["stream"] == "lifecycle" and payload["data"].get("phase") in ("end", "error"):
            return seen
