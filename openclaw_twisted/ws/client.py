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

from .._exit import Exit  # noqa: E402
from .._pull import PullQueue  # noqa: E402
from ..agents.events import tool_note  # noqa: E402
from ..config import ConfigError, load_config  # noqa: E402
from .server import PROTOCOL_VERSION  # noqa: E402

#: Seconds to wait for the TCP connection and for the gateway's hello.
CONNECT_TIMEOUT = 10.0
#: Seconds an interrupted command waits for the gateway to confirm the abort.
ABORT_GRACE = 3.0
#: The exit status of a command stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED = Exit.INTERRUPTED


class ClientError(Exception):
    """Why the command failed, as the one line it prints, and the exit status it means."""

    def __init__(self, message: str, code: Exit = Exit.UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


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


def _credentials(
    options: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, str], str | None]:
    """``--token``, else the environment, else the config file's secret; and where it came from."""
    if options.get("token"):
        return {"token": options["token"]}, "--token"
    if environ.get("OPENCLAW_GATEWAY_TOKEN"):
        return {"token": environ["OPENCLAW_GATEWAY_TOKEN"]}, "$OPENCLAW_GATEWAY_TOKEN"
    if environ.get("OPENCLAW_GATEWAY_PASSWORD"):
        return {"password": environ["OPENCLAW_GATEWAY_PASSWORD"]}, "$OPENCLAW_GATEWAY_PASSWORD"
    try:
        config = load_config(options.get("config"), environ)
    except ConfigError:
        return {}, None
    where = f" ({config.source})" if config.source else ""
    if config.gateway.auth.token:
        return {"token": config.gateway.auth.token}, f"gateway.auth.token of the config{where}"
    if config.gateway.auth.password:
        password = config.gateway.auth.password
        return {"password": password}, f"gateway.auth.password of the config{where}"
    return {}, None


#: Where a secret comes from, for the message when none was sent.
NO_SECRET = (
    "no token was sent; pass --token T, set $OPENCLAW_GATEWAY_TOKEN, or put the gateway's "
    "token in gateway.auth.token of the config file (--config PATH); in password mode "
    "$OPENCLAW_GATEWAY_PASSWORD or gateway.auth.password"
)


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
    ``config``. Fires with the exit code: 0; 1 after one line on ``stderr``; 130 when the
    reactor stops first (Ctrl-C), after the run was aborted on the gateway (``chat.abort``).
    """
    command = AgentCommand(
        reactor,
        options,
        stdout,
        stderr if stderr is not None else sys.stderr,
        os.environ if environ is None else environ,
    )
    done = command.run()

    def interrupt() -> Deferred[None]:
        # The reactor waits for this before it stops: the abort's round trip, bounded.
        finished: Deferred[None] = Deferred()
        timer = reactor.callLater(ABORT_GRACE, finished.callback, None)

        def ended(result: object) -> object:
            if timer.active():
                timer.cancel()
                finished.callback(None)
            return result

        done.addBoth(ended)
        command.interrupt()
        return finished

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupt)

    def forget(result: object) -> object:
        reactor.removeSystemEventTrigger(trigger)
        return result

    return done.addBoth(forget)


class AgentCommand:
    """One ``agent`` turn over WebSocket; ``interrupt()`` aborts it on the gateway."""

    def __init__(
        self,
        reactor: Any,
        options: Mapping[str, Any],
        out: IO[str],
        err: IO[str],
        environ: Mapping[str, str],
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.out = out
        self.err = err
        self.environ = environ
        self.interrupted = False
        #: Why the turn was cancelled from this side: Ctrl-C or a closed stdout.
        self.cancelled: Exit | None = None
        self.client: _Client | None = None
        self.run_id: str | None = None
        self._connecting: Deferred[Any] | None = None
        self._agent_sent = False

    def run(self) -> Deferred[int]:
        """Fires with the exit code."""
        return ensureDeferred(self._main())

    def interrupt(self, why: Exit = Exit.INTERRUPTED) -> None:
        """Stop: abort the run if it started, else give up connecting."""
        if self.interrupted:
            return
        self.interrupted = True
        self.cancelled = why
        if self._connecting is not None:
            self._connecting.cancel()
        elif self.client is not None and not self._agent_sent:
            self.client.dropConnection(abort=True)
        elif self.run_id is not None:
            self._abort()
        # Sent but not yet accepted: the abort goes out when the runId arrives.

    def _abort(self) -> None:
        assert self.client is not None
        self.client.send_json(
            {"type": "req", "id": "abort", "method": "chat.abort", "params": {"runId": self.run_id}}
        )

    async def _main(self) -> int:
        try:
            await self._run()
        except Exception as e:
            if self.cancelled == Exit.OUTPUT_CLOSED:
                return Exit.OUTPUT_CLOSED  # nobody reads: nothing to say
            if self.interrupted:
                line, code = "interrupted", Exit.INTERRUPTED
            elif isinstance(e, ClientError):
                line, code = str(e), e.code
            else:
                raise
            self.err.write(f"openclaw-twisted agent: {line}\n")
            self.err.flush()
            return code
        return self.cancelled if self.cancelled is not None else Exit.OK

    def _write(self, text: str) -> None:
        """Print part of the answer; a closed stdout cancels the run on the gateway."""
        if self.cancelled == Exit.OUTPUT_CLOSED:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.interrupt(Exit.OUTPUT_CLOSED)

    async def _run(self) -> None:
        options = self.options
        message = options.get("message")
        if not message or not str(message).strip():
            raise ClientError("--message is required", Exit.USAGE)
        url = options.get("url") or default_url(options, self.environ)
        self.client = client = await self._connect(url)
        try:
            await self._handshake(client)
            params: dict[str, Any] = {"message": message, "idempotencyKey": str(uuid.uuid4())}
            if options.get("agent"):
                params["agentId"] = options["agent"]
            if options.get("session-key"):
                params["sessionKey"] = options["session-key"]
            client.send_json({"type": "req", "id": "agent", "method": "agent", "params": params})
            self._agent_sent = True
            await self._stream(client)
        finally:
            if client.state == client.STATE_OPEN:
                client.sendClose(1000)
            if client.state != client.STATE_CLOSED:
                await client.closed

    async def _connect(self, url: str) -> _Client:
        try:
            factory = WebSocketClientFactory(url, reactor=self.reactor)
        except Exception as e:
            raise ClientError(f"invalid --url {url!r}: {e}", Exit.USAGE) from None
        factory.protocol = _Client
        factory.setProtocolOptions(openHandshakeTimeout=CONNECT_TIMEOUT)
        endpoint: Any = HostnameEndpoint(
            self.reactor, factory.host, factory.port, timeout=CONNECT_TIMEOUT
        )
        if factory.isSecure:
            endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
        protocol: _Client | None = None
        try:
            self._connecting = endpoint.connect(factory)
            protocol = await self._connecting
            self._connecting = protocol.opened
            client: _Client = await protocol.opened
        except Exception as e:
            if protocol is not None:
                protocol.dropConnection(abort=True)
            raise ClientError(f"cannot connect to {url}: {e}") from None
        finally:
            self._connecting = None
        return client

    async def _handshake(self, client: _Client) -> None:
        challenge = await _next(client, "before the challenge")
        if challenge.get("event") != "connect.challenge":
            raise ClientError("the gateway did not send connect.challenge")
        from .._version import __version__

        secret, source = _credentials(self.options, self.environ)
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
                    "auth": secret,
                },
            }
        )
        hello = await _next(client, "during connect")
        if not hello.get("ok"):
            error = hello.get("error") or {}
            if error.get("code") == "UNAUTHORIZED":
                why = (
                    NO_SECRET if source is None else f"the gateway refused the secret from {source}"
                )
                raise ClientError(f"UNAUTHORIZED: {why}", Exit.USAGE)
            raise _failed(hello)

    async def _stream(self, client: _Client) -> None:
        """Print the deltas of our run until its final reply; a newline ends the answer."""
        printed = False
        try:
            while True:
                frame = await _next(client, "during the run")
                if frame.get("type") == "event" and frame.get("event") == "agent":
                    event = frame.get("payload") or {}
                    if event.get("runId") != self.run_id:
                        continue
                    data = event.get("data") or {}
                    if event.get("stream") == "assistant":
                        self._write(data["delta"])
                        printed = True
                    elif event.get("stream") == "tool" and data.get("phase") == "start":
                        self.err.write(tool_note(data.get("name"), data.get("args", "")) + "\n")
                    continue
                if frame.get("type") != "res" or frame.get("id") != "agent":
                    continue
                if not frame.get("ok"):
                    raise _failed(frame)
                payload = frame["payload"]
                if payload.get("status") == "accepted":
                    self.run_id = payload.get("runId")
                    if self.interrupted:
                        self._abort()
                    continue
                if not printed:
                    texts = [p.get("text", "") for p in payload["result"]["payloads"]]
                    self._write("".join(texts))
                    printed = True
                return
        finally:
            if printed:
                self._write("\n")


async def _next(client: _Client, what: str) -> dict[str, Any]:
    frame = await client.frames.get()
    if frame is None:
        code, reason = await client.closed
        raise ClientError(f"the gateway closed the connection ({code} {reason}) {what}".strip())
    if not isinstance(frame, dict):
        raise ClientError(f"unexpected frame from the gateway {what}")
    return frame


def _failed(frame: dict[str, Any]) -> ClientError:
    """The gateway's error reply as one line, and its exit status."""
    error = frame.get("error") or {}
    code = error.get("code", "ERROR")
    details = error.get("details")
    if isinstance(details, dict) and details.get("kind"):
        status = Exit.RUN_FAILED  # the run started and failed (model, timeout, aborted)
    elif code in ("INVALID_REQUEST", "UNAUTHORIZED", "RATE_LIMITED"):
        status = Exit.USAGE
    elif code == "UNAVAILABLE":
        status = Exit.UNAVAILABLE
    else:
        status = Exit.RUN_FAILED
    return ClientError(f"{code}: {error.get('message', 'request failed')}", status)
