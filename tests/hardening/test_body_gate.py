"""The body gate on real sockets: every route and spelling refuses a body before reading it."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from openclaw_twisted.testing import Script, ScriptedProvider

from ..support import listen
from ..web.memory import TOKEN, Response, gateway_config, make_gateway, parse_response
from ..web.test_loopback import RawClient, until

MiB = 1024 * 1024
#: What a client may have handed its socket before the answer arrives: the head is answered
#: at once, but the kernel's loopback buffers take a few MB first.
ANSWERED_WITHIN = 8 * MiB
#: A flood that got no answer after this many bytes was read by the gateway: stop there.
GIVE_UP_AT = 48 * MiB
PIECE = b"x" * 65536
LIMIT = 1 * MiB  # maxBodyBytes of the chat endpoint in these tests

JSON = b"Content-Type: application/json\r\n"
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


def head(
    method: str,
    path: str,
    *extra: bytes,
    chunked: bool = False,
    size: int = 512 * MiB,
    host: str = "127.0.0.1",
) -> bytes:
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: %d\r\n" % size
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
        + b"".join(extra)
        + framing
        + b"\r\n"
    )


def spool_files() -> set[str]:
    """This process's open, unlinked temporary files (Twisted's body spool is one)."""
    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        raise SkipTest("needs /proc")
    tmp = tempfile.gettempdir()
    found = set()
    for fd in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, fd))
        except OSError:
            continue
        if target.startswith(tmp) and target.endswith("(deleted)"):
            found.add(f"{fd} {target}")
    return found


def temp_files(before: set[str]) -> int:
    """How many spool files are open that were not ``before`` (pytest's capture has some)."""
    return len(spool_files() - before)


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SkipTest("needs /proc")


@implementer(IPushProducer)
class Flood(Protocol):
    """
    Sends a request head, then body bytes as fast as the socket takes them, until the answer's
    head arrives (or L{GIVE_UP_AT} bytes went out unanswered).  ``answered_at``: bytes sent
    when the answer came; ``most_temp_files``: spool files seen while sending.
    """

    def __init__(self, head: bytes, chunked: bool, spools: set[str]) -> None:
        self.head = head
        self.spools = spools
        self.piece = b"%x\r\n%s\r\n" % (len(PIECE), PIECE) if chunked else PIECE
        self.sent = 0
        self.answered_at: int | None = None
        self.received = bytearray()
        self.paused = False
        self.done = False
        self.most_temp_files = 0
        self._pump_call: IDelayedCall | None = None
        self.answered: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.transport.write(self.head)  # type: ignore[union-attr]
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._pump_call is None and not self.done:
            self._pump_call = reactor.callLater(0, self._pump)

    def stopProducing(self) -> None:
        self.done = True

    def _pump(self) -> None:
        self._pump_call = None
        self.most_temp_files = max(self.most_temp_files, temp_files(self.spools))
        for _ in range(8):  # then let the reactor (and the gateway) run
            if self.paused or self.done:
                return
            self.transport.write(self.piece)  # type: ignore[union-attr]
            self.sent += len(self.piece)
            if self.sent >= GIVE_UP_AT:
                self._stop()
                return
        self.resumeProducing()

    def _stop(self) -> None:
        self.done = True
        if not self.answered.called:
            self.answered.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.answered_at is None and b"\r\n\r\n" in self.received:
            self.answered_at = self.sent
            self.most_temp_files = max(self.most_temp_files, temp_files(self.spools))
            self._stop()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._stop()
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self.lost.callback(None)

    def response(self) -> Response:
        r = parse_response(bytes(self.received))
        assert r is not None, bytes(self.received[:300])
        return r


class BodyGateLoopbackTests(TestCase):
    timeout = 120

    async def serve(self, data: dict[str, Any] | None = None) -> int:
        self.spools = spool_files()
        self.provider = ScriptedProvider(Script(), clock=reactor)
        self.gateway = make_gateway(
            self.mktemp(),
            self.provider,
            data if data is not None else gateway_config("x", maxBodyBytes=LIMIT),
            reactor=reactor,
        )
        url = await listen(self, self.gateway)
        return int(url.rsplit(":", 1)[1])

    async def flood(self, port: int, request_head: bytes, chunked: bool) -> Flood:
        client = Flood(request_head, chunked, self.spools)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.lost if client.transport.connected else None)  # type: ignore[union-attr]
        self.addCleanup(client.transport.abortConnection)  # type: ignore[union-attr]
        await client.answered
        return client

    async def assertRefusedEarly(
        self,
        port: int,
        request_head: bytes,
        chunked: bool,
        status: int,
        within: int = ANSWERED_WITHIN,
        reads_body: bool = False,
    ) -> tuple[Response, int]:
        """
        The answer comes while the client is still sending, and nothing is spooled to disk;
        ``reads_body``: an authenticated chunked body, read up to the limit and then cut
        (spooled meanwhile as any accepted body, and gone with the answer).
        """
        client = await self.flood(port, request_head, chunked)
        what = request_head.split(b"\r\n", 1)[0].decode(), "chunked" if chunked else "declared"
        self.assertIsNotNone(client.answered_at, f"{what}: {client.sent} bytes read, no answer")
        assert client.answered_at is not None
        self.assertLess(client.answered_at, within + (LIMIT if reads_body else 0), what)
        r = client.response()
        self.assertEqual(r.status, status, (what, r.body[:200]))
        if not reads_body:
            self.assertEqual(client.most_temp_files, 0, what)
        self.assertEqual(temp_files(self.spools), 0, what)
        await client.lost  # the gateway closes once it answered
        return r, client.answered_at

    async def test_every_route_and_spelling_refuses_a_body_before_reading_it(self) -> None:
        port = await self.serve()
        chat = [
            "/v1/chat/completions",
            "//v1/chat/completions",
            "/v1//chat/completions",
            "/v1/chat%2Fcompletions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/v1/chat/%63ompletions",
        ]
        no_body = ["/healthz", "//healthz", "/health", "/readyz", "/ready", "/openapi.json"]
        models = ["/v1/models", "/v1//models", "/v1/models/openclaw%2Fmain", "/v1/models/nope"]
        unknown = ["/nope", "/v1/chat/completion", "/v1/chat/completions/", "/", "/%ff"]
        wrong = b"Authorization: Bearer wrong\r\n"
        upgrade = (
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
        # (method, path, headers, status, whether an authenticated body is read to the limit)
        cases: list[tuple[str, str, tuple[bytes, ...], int, bool]] = []
        for path in chat:
            cases += [
                ("POST", path, (JSON,), 401, False),
                ("POST", path, (JSON, wrong), 401, False),
                ("POST", path, (JSON, AUTH), 413, True),
                ("GET", path, (AUTH,), 405, False),
            ]
        for path in no_body:
            cases += [("GET", path, (AUTH,), 413, False), ("POST", path, (AUTH,), 405, False)]
        for path in models:
            cases += [
                ("GET", path, (), 401, False),
                ("GET", path, (AUTH,), 413, False),
                ("POST", path, (AUTH,), 405, False),
            ]
        for path in unknown:
            status = 400 if path == "/%ff" else 404
            cases += [("POST", path, (AUTH,), status, False), ("POST", path, (), status, False)]
        for path in ("/", "/v1/chat/completions", "/anything"):
            cases.append(("GET", path, (upgrade,), 413, False))
        most = 0
        for method, path, headers, status, reads in cases:
            for chunked in (False, True):
                r, sent = await self.assertRefusedEarly(
                    port,
                    head(method, path, *headers, chunked=chunked),
                    chunked,
                    status,
                    reads_body=reads and chunked,
                )
                if status not in (404, 405):  # those two are the routes' plain-text answers
                    self.assertEqual(r.header("content-type"), "application/json; charset=utf-8")
                    self.assertEqual(set(r.json()["error"]), {"message", "type", "param", "code"})
                if not (reads and chunked):
                    most = max(most, sent)
        # What the root refuses before any route is refused before the body too.
        for path, headers in (("/v1/chat/completions", (JSON, AUTH)), ("/", (upgrade,))):
            for chunked in (False, True):
                r, _ = await self.assertRefusedEarly(
                    port,
                    head(
                        "GET" if path == "/" else "POST",
                        path,
                        *headers,
                        chunked=chunked,
                        host="evil.example",
                    ),
                    chunked,
                    421,
                )
                self.assertEqual(r.json()["error"]["code"], "host_not_allowed")
        self.assertEqual(self.provider.requests, [])
        print(f"\n  {len(cases) * 2} refusals: at most {most / MiB:.1f} MiB sent before the answer")

    async def test_a_512_mb_attempt_leaves_memory_and_disk_as_they_were(self) -> None:
        port = await self.serve()
        before = rss()
        for auth in (b"", AUTH):
            for chunked in (False, True):
                request_head = head("POST", "//v1/chat/completions", JSON, auth, chunked=chunked)
                await self.assertRefusedEarly(
                    port,
                    request_head,
                    chunked,
                    413 if auth else 401,
                    reads_body=chunked and bool(auth),
                )
        grown = rss() - before
        self.assertLess(grown, 8 * MiB)
        self.assertEqual(temp_files(self.spools), 0)
        print(f"\n  4 x 512 MiB attempts: RSS grew {grown / MiB:.1f} MiB")

    async def test_a_locked_out_client_is_refused_before_its_body(self) -> None:
        data = gateway_config("x", maxBodyBytes=LIMIT)
        data["gateway"]["auth"]["rateLimit"] = {"maxAttempts": 2, "exemptLoopback": False}
        port = await self.serve(data)
        wrong = b"Authorization: Bearer wrong\r\n"
        for _ in range(2):
            await self.assertRefusedEarly(
                port,
                head("POST", "/v1/chat%2Fcompletions", JSON, wrong),
                False,
                401,
                ANSWERED_WITHIN,
            )
        for path in ("/v1/chat/completions", "//v1/chat/completions", "/v1/models"):
            for chunked in (False, True):
                r, _ = await self.assertRefusedEarly(
                    port,
                    head("POST" if "chat" in path else "GET", path, JSON, AUTH, chunked=chunked),
                    chunked,
                    429,
                )
                self.assertEqual(r.json()["error"]["type"], "rate_limited")
                self.assertIsNotNone(r.header("retry-after"))

    async def test_a_json_endpoint_refuses_other_content_types_before_the_body(self) -> None:
        port = await self.serve()
        for ctype in (
            b"Content-Type: text/plain\r\n",
            b"Content-Type: application/x-www-form-urlencoded\r\n",
            b"Content-Type: application/json; charset=latin-1\r\n",
            b"",
        ):
            for chunked in (False, True):
                r, _ = await self.assertRefusedEarly(
                    port,
                    head("POST", "/v1/chat/completions", ctype, AUTH, chunked=chunked),
                    chunked,
                    415,
                )
                error = r.json()["error"]
                self.assertEqual(error["code"], "unsupported_media_type")
                self.assertIn("application/json", error["message"])
                self.assertEqual(r.header("x-should-retry"), "false")

    async def test_odd_spellings_of_the_chat_route_are_served_by_it(self) -> None:
        port = await self.serve()
        body = b'{"messages": [{"role": "user", "content": "hi"}]}'
        for path in ("//v1/chat/completions", "/v1/./chat/completions", "/v1/chat%2F%63ompletions"):
            client = RawClient(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
                + AUTH
                + b"Content-Type: application/json; charset=UTF-8\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            await client.lost
            r = parse_response(bytes(client.received))
            assert r is not None
            self.assertEqual(r.status, 200, (path, r.body))
            self.assertEqual(r.json()["object"], "chat.completion")

    async def test_a_bare_lf_head_is_answered_at_once(self) -> None:
        port = await self.serve()
        for request in (
            b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\n\n",
            b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\r\n\r\n",
        ):
            client = RawClient(request)
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            self.addCleanup(client.transport.abortConnection)  # type: ignore[union-attr]
            # Well before the 30 s header deadline.
            await until(lambda c=client: b"\r\n\r\n" in c.received, limit=5.0)
            r = parse_response(bytes(client.received))
            assert r is not None
            self.assertEqual(r.status, 400, request)
            error = r.json()["error"]
            self.assertEqual(error["code"], "bad_request")
            self.assertIn("CRLF", error["message"])
            await client.lost
