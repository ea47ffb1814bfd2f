"""The WebSocket client the ``openclaw-twisted agent`` command uses to talk to a gateway."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Mapping
from typing import IO, Any

import txaio

txaio.use_twisted()

from autobahn.twisted.websocket import (  # noqa: E402
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS  # noqa: E402
from twisted.internet.ssl import optionsForClientTLS  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from .._pull import PullQueue  # noqa: E402
from ..config import ConfigError, load_config  # noqa: E402
from .server import PROTOCOL_VERSION  # noqa: E402

#: Seconds to wait for the TCP connection and for the gateway's hello.
CONNECT_TIMEOUT = 10.0


class ClientError(Exception):
    """Why the command failed, as the one line it prints."""


class _Client(WebSocketClientProtocol):
    """Parsed frames in a queue; ``closed`` fires with the close code and reason."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: PullQueue[Any] = PullQueue(high=10**9)
        self.opened: Deferred[_Client] = Deferred()
        self.closed: Deferred[tuple[int | None, str]] = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.frames.put(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(Failure(ClientError(reason or "the connection closed")))
        self.frames.finish()
        if not self.closed.called:
            self.closed.callback((code, reason or ""))

    def send_json(self, frame: dict[str, Any]) -> None:
        self.sendMessage(json.dumps(frame).encode("utf-8"))


def _credentials(options: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """``--token``, else the environment, else the config file's secret."""
    if options.get("token"):
        return {"token": options["token"]}
    if environ.get("OPENCLAW_GATEWAY_TOKEN"):
        return {"token": environ["OPENCLAW_GATEWAY_TOKEN"]}
    if environ.get("OPENCLAW_GATEWAY_PASSWORD"):
        return {"password": environ["OPENCLAW_GATEWAY_PASSWORD"]}
    try:
        auth = load_config(options.get("config"), environ).gateway.auth
    except ConfigError:
        return {}
    if auth.token:
        return {"token": auth.token}
    if auth.password:
        return {"password": auth.password}
    return {}


def default_url(options: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    try:
        port = load_config(options.get("config"), environ).gateway.port
    except ConfigError:
        port = 18789
    return f"ws://127.0.0.1:{port}"


def run_agent(
    reactor: Any,
    options: Mapping[str, Any],
    stdout: IO[str],
    stderr: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Deferred[int]:
    """
    Run one agent turn on a gateway over WebSocket, printing the answer as it streams.

    ``options``: ``message`` (required), ``agent``, ``session-key``, ``url``, ``token``,
    ``config``. Fires with the exit code: 0, or 1 after one line on ``stderr``.
    """
    err = stderr if stderr is not None else sys.stderr
    env = os.environ if environ is None else environ

    async def go() -> int:
        try:
            await _run(reactor, options, stdout, env)
        except ClientError as e:
            err.write(f"openclaw-twisted agent: {e}\n")
            err.flush()
            return 1
        return 0

    return ensureDeferred(go())


async def _connect(reactor: Any, url: str) -> _Client:
    try:
        factory = WebSocketClientFactory(url, reactor=reactor)
    except Exception as e:
        raise ClientError(f"invalid --url {url!r}: {e}") from None
    factory.protocol = _Client
    factory.setProtocolOptions(openHandshakeTimeout=CONNECT_TIMEOUT)
    endpoint: Any = HostnameEndpoint(reactor, factory.host, factory.port, timeout=CONNECT_TIMEOUT)
    if factory.isSecure:
        endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
    try:
        protocol = await endpoint.connect(factory)
        client: _Client = await protocol.opened
    except Exception as e:
        raise ClientError(f"cannot connect to {url}: {e}") from None
    return client


async def _next(client: _Client, what: str) -> dict[str, Any]:
    frame = await client.frames.get()
    if frame is None:
        code, reason = await client.closed
        raise ClientError(f"the gateway closed the connection ({code} {reason}) {what}".strip())
    if not isinstance(frame, dict):
        raise ClientError(f"unexpected frame from the gateway {what}")
    return frame


def _failed(frame: dict[str, Any]) -> ClientError:
    error = frame.get("error") or {}
    return ClientError(f"{error.get('code', 'ERROR')}: {error.get('message', 'request failed')}")


async def _run(
    reactor: Any, options: Mapping[str, Any], out: IO[str], env: Mapping[str, str]
) -> None:
    message = options.get("message")
    if not message or not str(message).strip():
        raise ClientError("--message is required")
    url = options.get("url") or default_url(options, env)
    client = await _connect(reactor, url)
    try:
        challenge = await _next(client, "before the challenge")
        if challenge.get("event") != "connect.challenge":
            raise ClientError("the gateway did not send connect.challenge")
        from .. import __version__

        client.send_json(
            {
                "type": "req",
                "id": "connect",
                "method": "connect",
                "params": {
                    "minProtocol": PROTOCOL_VERSION,
                    "maxProtocol": PROTOCOL_VERSION,
                    "client": {
                        "id": "cli",
                        "version": __version__,
                        "platform": sys.platform,
                        "mode": "cli",
                    },
                    "auth": _credentials(options, env),
                },
            }
        )
        hello = await _next(client, "during connect")
        if not hello.get("ok"):
            raise _failed(hello)
        params: dict[str, Any] = {"message": message, "idempotencyKey": str(uuid.uuid4())}
        if options.get("agent"):
            params["agentId"] = options["agent"]
        if options.get("session-key"):
            params["sessionKey"] = options["session-key"]
        client.send_json({"type": "req", "id": "agent", "method": "agent", "params": params})
        await _stream(client, out)
    finally:
        if client.state == client.STATE_OPEN:
            client.sendClose(1000)
        if client.state != client.STATE_CLOSED:
            await client.closed


async def _stream(client: _Client, out: IO[str]) -> None:
    """Print the deltas of our run until its final reply; a newline ends the answer."""
    run_id: str | None = None
    printed = False
    try:
        while True:
            frame = await _next(client, "during the run")
            if frame.get("type") == "event" and frame.get("event") == "agent":
                event = frame.get("payload") or {}
                if event.get("runId") == run_id and event.get("stream") == "assistant":
                    out.write(event["data"]["delta"])
                    out.flush()
                    printed = True
                continue
            if frame.get("type") != "res" or frame.get("id") != "agent":
                continue
            if not frame.get("ok"):
                raise _failed(frame)
            payload = frame["payload"]
            if payload.get("status") == "accepted":
                run_id = payload.get("runId")
                continue
            if not printed:
                texts = [p.get("text", "") for p in payload["result"]["payloads"]]
                out.write("".join(texts))
                printed = True
            return
    finally:
        if printed:
            out.write("\n")
            out.flush()
