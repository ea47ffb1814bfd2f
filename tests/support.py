"""Shared test helpers: a gateway on a loopback port, a child gateway process, a WS client."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from openclaw_twisted._pull import PullQueue
from openclaw_twisted.auth import Authenticator, AuthResult
from openclaw_twisted.gateway import Gateway

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def listen(test: TestCase, gateway: Gateway, site: Site | None = None) -> str:
    """Serve ``gateway`` on 127.0.0.1:<free port> until the test ends; the base URL."""
    site = site or gateway.site()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    track(test, site, port)
    return f"http://127.0.0.1:{port.getHost().port}"


def verdict(auth: Authenticator, credential: str | None, ip: str) -> AuthResult:
    """The verdict of an authenticator counting attempts in memory (fired on return)."""
    results: list[Any] = []
    auth.check(credential, ip).addBoth(results.append)
    assert results and isinstance(results[0], AuthResult), results
    return results[0]


def track(test: TestCase, site: Site, port: Any) -> None:
    """
    At cleanup, close ``port`` and drop and await every server-side connection of ``site``,
    so the reactor is clean for the next test.
    """
    transports: list[Any] = []
    build = site.buildProtocol

    def tracked(addr: Any) -> Any:
        proto = build(addr)
        make_connection = proto.makeConnection

        def on_connect(transport: Any) -> None:
            transports.append(transport)
            make_connection(transport)

        proto.makeConnection = on_connect
        return proto

    site.buildProtocol = tracked  # type: ignore[method-assign]

    async def close() -> None:
        await port.stopListening()
        for transport in transports:
            if transport.disconnected:
                continue
            # Whoever owns the socket now (HTTP channel, or the WebSocket that took it over).
            owner = transport.protocol
            lost: Deferred[None] = Deferred()
            connection_lost = owner.connectionLost

            def on_lost(
                reason: Failure, lost: Deferred[None] = lost, cl: Any = connection_lost
            ) -> None:
                cl(reason)
                lost.callback(None)

            owner.connectionLost = on_lost
            transport.abortConnection()
            await lost

    test.addCleanup(lambda: Deferred.fromCoroutine(close()))


def http_client(test: TestCase) -> HTTPClient:
    """A treq client whose pooled connections are closed when the test ends."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    test.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


class WSClient(WebSocketClientProtocol):  # type: ignore[misc]
    """Collects every text frame (parsed JSON) in ``frames``; ``closed`` fires with the code."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: PullQueue[Any] = PullQueue(high=10**9)
        self.closed: Deferred[int | None] = Deferred()
        self.opened: Deferred[WSClient] = Deferred()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.put(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(Failure(ConnectionError(f"closed before open: {reason}")))
        self.frames.finish()
        if not self.closed.called:
            self.closed.callback(code)

    def send_json(self, frame: Any) -> None:
        self.sendMessage(json.dumps(frame).encode("utf-8"))


async def ws_connect(
    test: TestCase, url: str, path: str = "/", headers: dict[str, str] | None = None
) -> WSClient:
    """A connected WS client (``headers`` go on the upgrade request); dropped when the test ends."""
    ws_url = url.replace("http://", "ws://") + path
    factory = WebSocketClientFactory(ws_url, headers=headers)
    factory.protocol = WSClient
    connector = connectWS(factory)
    test.addCleanup(connector.disconnect)
    client: WSClient = await _opened(factory)
    return client


def _opened(factory: WebSocketClientFactory) -> Deferred[WSClient]:
    d: Deferred[WSClient] = Deferred()
    original = factory.buildProtocol

    def build(addr: Any) -> WSClient:
        proto: WSClient = original(addr)
        proto.opened.chainDeferred(d)
        return proto

    factory.buildProtocol = build
    return d


class GatewayProcess(ProcessProtocol):
    """A gateway in a child process: its output, the lines it logged, and its exit code."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()
        self.signal: int | None = None
        self._waiting: list[tuple[bytes, Deferred[bytes]]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def _check(self) -> None:
        for item in list(self._waiting):
            needle, d = item
            for line in self.out.splitlines():
                if needle in line:
                    self._waiting.remove(item)
                    d.callback(line)
                    break

    def line_with(self, needle: bytes) -> Deferred[bytes]:
        """Fires with the first output line containing ``needle``."""
        d: Deferred[bytes] = Deferred()
        self._waiting.append((needle, d))
        self._check()
        return d

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        for _, d in self._waiting:
            d.errback(Failure(RuntimeError(f"process ended: {self.out!r} {self.err!r}")))
        self._waiting = []
        self.ended.callback(code if code is not None else -1)

    def terminate(self) -> None:
        if self.transport is not None and self.transport.pid is not None:
            self.transport.signalProcess(signal.SIGTERM)


def child_env(state_dir: str, **extra: str) -> dict[str, str]:
    """An environment that runs this checkout and never reads the user's own config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    env.update(
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
        HOME=state_dir,
        OPENCLAW_STATE_DIR=state_dir,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def spawn(test: TestCase, args: Sequence[str], env: dict[str, str]) -> GatewayProcess:
    """Run ``python <args>`` from the repo; terminated (and awaited) when the test ends."""
    proc = GatewayProcess()
    reactor.spawnProcess(proc, sys.executable, [sys.executable, *args], env=env, path=REPO)

    async def stop() -> None:
        if not proc.ended.called:
            proc.terminate()
            await proc.ended

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return proc


def twistd_args(*options: str) -> list[str]:
    run = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    return ["-c", run, "--nodaemon", "--pidfile=", "openclaw", *options]
