"""Requests on the gateway's own Site: one path spelling, bodies gated when the head is in."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from io import BytesIO
from typing import IO, Any
from urllib.parse import quote, unquote_to_bytes

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from .errors import JSON_TYPE, error_body, error_envelope
from .root import SECURITY_HEADERS

log = Logger()

#: A request body must be complete this long after its headers (CONTRACT §4.1: 408).
BODY_TIMEOUT_SECONDS = 30.0
#: A request's line and headers must be complete this long after the connection opened or
#: the previous response ended (twisted.web has no such limit: a client sending a header
#: byte now and then would hold its connection for the 12 h idle timeout — slowloris).
HEADER_TIMEOUT_SECONDS = 30.0
#: After an early answer, how long unread request bytes are drained so the client can read
#: the answer before the connection closes (closing with unread data would reset it).
LINGER_SECONDS = 5.0
#: Bodies of unknown length (chunked) are kept in memory up to this size, then spooled to a
#: temporary file, as Twisted does for a declared length.
SPOOL_BYTES = 100_000
#: Path characters kept as they are when a path is spelled canonically (RFC 3986 pchar).
_PCHAR = "!$&'()*+,;=:@-._~"
BARE_LF = "Malformed HTTP request: lines must end with CRLF (\\r\\n), not a bare LF."


@attrs.frozen
class RoutePath:
    """A request path as the router sees it: its segments, percent-decoded."""

    segments: tuple[bytes, ...]

    @property
    def text(self) -> str:
        """What the routes are matched against: the segments joined with ``/``."""
        return "/" + "/".join(s.decode("utf-8") for s in self.segments)

    @property
    def path(self) -> bytes:
        """The canonical spelling: each segment percent-encoded again where it must be."""
        return b"/" + b"/".join(quote(s, safe=_PCHAR).encode("ascii") for s in self.segments)


def route_path(path: bytes) -> RoutePath | None:
    """
    The one normalisation of a request path, for the body gate and the router alike.

    Percent-encodings are decoded (an encoded slash is a slash: Twisted and Klein route on
    decoded segments joined with ``/``, which is how ``GET /v1/models/openclaw%2Fmain``
    names the model ``openclaw/main``), duplicate slashes merged, dot segments resolved
    (RFC 3986 §5.2.4, ``%2e`` included), a trailing slash kept.  ``None`` when the decoded
    path is not UTF-8 (the router could not match it).
    """
    parts = unquote_to_bytes(path).split(b"/")
    try:
        b"".join(parts).decode("utf-8")
    except UnicodeDecodeError:
        return None
    segments: list[bytes] = []
    for part in parts:
        if part == b"..":
            if segments:
                segments.pop()
        elif part not in (b"", b"."):
            segments.append(part)
    if segments and parts[-1] in (b"", b".", b".."):
        segments.append(b"")  # "/healthz/" is not "/healthz"
    return RoutePath(tuple(segments))


@attrs.frozen
class BodyLimit:
    """Read the body, but answer ``too_large(request)`` once it exceeds ``max_bytes``."""

    max_bytes: int
    too_large: Callable[[IRequest], bytes]


#: Called once a request's headers are in and it has a body (declared or chunked), with the
#: request and its L{RoutePath}: ``bytes`` is an answer to send at once (status and headers
#: already set on the request) and the body is never kept; a L{BodyLimit} bounds the body
#: and says the request passed its route's checks (auth included); ``None`` leaves it alone.
BodyGate = Callable[[IRequest, RoutePath], "bytes | BodyLimit | Deferred[bytes | BodyLimit] | None"]


def body_timeout(request: IRequest) -> bytes:
    return error_body(
        request,
        408,
        "The request body was not received in time.",
        "invalid_request_error",
        code="request_timeout",
    )


def bad_path(request: IRequest) -> bytes:
    return error_body(
        request,
        400,
        "The request path is not valid UTF-8 once percent-decoded.",
        "invalid_request_error",
        code="invalid_path",
    )


def _body_file(length: int | None) -> IO[bytes]:
    if length is None:
        return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    if length < SPOOL_BYTES:
        return BytesIO()
    return tempfile.TemporaryFile()


def raw_error(status: int, reason: bytes, message: str, type_: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response, for when there is no request object to answer on."""
    body = json.dumps(error_envelope(message, type_, code=code)).encode()
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"content-type: " + JSON_TYPE,
        b"content-length: %d" % len(body),
        b"connection: close",
        *(name + b": " + value for name, value in SECURITY_HEADERS),
    ]
    if status != 408:
        head.append(b"x-should-retry: false")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GatewayRequest(Request):
    """
    A request whose path is spelled one way and whose body is checked as it arrives.

    When the headers are in, the path is normalised once (L{route_path}): the site's gate
    sees that path, and so does the router.  For a request with a body the gate may answer
    at once (a 401, a 413 from the ``Content-Length``, a route that takes no body) — the
    body is then never kept anywhere — or bound the body; a body not complete within
    L{BODY_TIMEOUT_SECONDS} gets a 408.  An early answer closes the connection.
    """

    #: The gate ran (and found nothing to object to) before the body was read.
    prechecked = False
    answered_early = False
    #: The normalised path; ``None`` when it is not UTF-8 (answered with a 400).
    route: RoutePath | None = None
    _limit: BodyLimit | None = None
    #: The gate has not decided yet (it waits on a shared limiter); the body waits too.
    _gating = False
    _held: tuple[bytes, bytes, bytes] | None = None
    _received = 0
    _deadline: IDelayedCall | None = None

    def gotLength(self, length: int | None) -> None:
        channel: Any = self.channel
        site = channel.site
        # The request line is known to the channel; requestReceived copies it here only once
        # the body is in.
        self.method, self.uri, self.clientproto = channel._command, channel._path, channel._version
        raw = self.uri.split(b"?", 1)[0]
        self.route = route_path(raw)
        self.path = self.route.path if self.route is not None else raw
        if length == 0:
            self.content = BytesIO()
            return
        gate = getattr(site, "gate", None)
        verdict: bytes | BodyLimit | Deferred[bytes | BodyLimit] | None
        try:
            if self.route is None:
                verdict = bad_path(self)
            else:
                verdict = gate(self, self.route) if gate is not None else None
        except Exception:
            log.failure("checking a request before its body failed")
            verdict = self._gate_failed()
        if isinstance(verdict, Deferred):
            now: list[Any] = []
            verdict.addBoth(lambda v: self._decided(v, length) if self._gating else now.append(v))
            if not now:
                # The gate waits on something (a shared limiter): read no more of the body
                # until it has decided; what one read already brought is kept meanwhile.
                self._gating = True
                self.content = _body_file(length)
                self._deadline = site.reactor.callLater(BODY_TIMEOUT_SECONDS, self._too_slow)
                channel.transport.pauseProducing()
                return
            got = now[0]
            if isinstance(got, Failure):
                log.failure("checking a request before its body failed", got)
                got = self._gate_failed()
            self._apply(got, length)
            return
        self._apply(verdict, length)

    def _refused(self) -> bool:
        """Whether the request has been answered early (a method: mypy keeps no narrowing)."""
        return self.answered_early

    def _gate_failed(self) -> bytes:
        return error_body(self, 500, "Internal error.", "api_error", code="internal_error")

    def _decided(self, verdict: bytes | BodyLimit | Failure | None, length: int | None) -> None:
        """The gate's answer, come after the body began to arrive."""
        self._gating = False
        if isinstance(verdict, Failure):
            log.failure("checking a request before its body failed", verdict)
            verdict = self._gate_failed()
        if self.answered_early or self.finished or self._disconnected:
            return
        self._apply(verdict, length, gated=True)
        if self._refused():
            return
        transport = getattr(self.channel, "transport", None)
        if transport is not None:
            transport.resumeProducing()
        if self._limit is not None and self._received > self._limit.max_bytes:
            self._answer_early(self._limit.too_large(self))
            return
        held, self._held = self._held, None
        if held is not None:
            self._stop_deadline()
            super().requestReceived(*held)

    def _apply(
        self, verdict: bytes | BodyLimit | None, length: int | None, gated: bool = False
    ) -> None:
        site: Any = self.channel.site  # type: ignore[attr-defined]
        if isinstance(verdict, bytes):
            # Nothing of a refused body is kept: no spool file, no buffer that grows.
            self.content = BytesIO()
            self._answer_early(verdict)
            return
        if not gated:
            self.content = _body_file(length)
        if isinstance(verdict, BodyLimit):
            # Only a gate that bounded the body has checked the request (auth included).
            self.prechecked = True
            self._limit = verdict
        if not gated:
            self._deadline = site.reactor.callLater(BODY_TIMEOUT_SECONDS, self._too_slow)

    def process(self) -> None:
        if self.path != b"*":  # OPTIONS * is Twisted's to answer
            if self.route is None:
                self.site = self.channel.site  # type: ignore[attr-defined]
                self._answer(bad_path(self))
                return
            # requestReceived copied the path from the request line again: the router gets
            # the spelling the gate saw.
            self.path = self.route.path
        super().process()

    def handleContentChunk(self, data: bytes) -> None:
        if self.answered_early:
            return
        self._received += len(data)
        if self._limit is not None and self._received > self._limit.max_bytes:
            self._answer_early(self._limit.too_large(self))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.answered_early:
            return
        if self._gating:
            self._held = (command, path, version)  # the whole body came before the verdict
            return
        self._stop_deadline()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        answered = getattr(getattr(self.channel, "site", None), "answered", None)
        if answered is not None and not self.finished and self.route is not None:
            # The client left before the response ended (nginx's 499), so finish() never logs.
            answered(self, 499)
        super().connectionLost(reason)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.answered_early and not self.finished:
            self._answer_early(body_timeout(self))

    def _answer_early(self, body: bytes) -> None:
        """Answer before the body was read, then close (after a short drain)."""
        self._stop_deadline()
        self.answered_early = True
        channel: GatewayChannel = self.channel  # type: ignore[assignment]
        channel.draining = True
        channel.persistent = False
        self.setHeader(b"connection", b"close")
        self._answer(body)

    def _answer(self, body: bytes) -> None:
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        self.write(body)
        self.finish()


class GatewayChannel(HTTPChannel):
    """
    An HTTP channel that can stop parsing a request it already answered early, bounds the
    time a client may take to send a request's headers (L{HEADER_TIMEOUT_SECONDS}), and
    answers malformed or oversized request heads with a JSON 400/431 instead of a bare
    line or a silent close.
    """

    draining = False
    _closing = False
    _linger: IDelayedCall | None = None
    _header_deadline: IDelayedCall | None = None
    _header_bytes = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self._closed: Deferred[None] = Deferred()
        self.site.channels.add(self)  # type: ignore[attr-defined]
        self._arm_header_deadline()

    def close_when_done(self) -> Deferred[None] | None:
        """
        Close once the response in flight (if any) has been written; a Deferred that fires
        when the connection is closed, or ``None`` if another protocol owns it (WebSocket).
        """
        if self.transport is None:
            return None
        self.persistent = False
        if not self.requests:
            self.loseConnection()  # an idle keep-alive connection
        return self._closed

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._header_deadline is not None:
            self._header_bytes += len(data)
        super().dataReceived(data)
        # Still reading a head, and a newline the CRLF split left behind: a bare LF, which
        # would otherwise wait for a CRLF until the header deadline.  Refused rather than
        # served: a peer that splits lines differently is how requests get smuggled.
        if self.line_mode and not self.paused and not self.draining and b"\n" in self._buffer:
            self._bad_request(too_large=False, message=BARE_LF)

    def allHeadersReceived(self) -> None:
        self._disarm_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        # Armed first: a pipelined request already buffered disarms it again right away.
        self._arm_header_deadline()
        super().requestDone(request)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_bytes = 0
        reactor: IReactorTime = self.site.reactor  # type: ignore[attr-defined]
        self._header_deadline = reactor.callLater(HEADER_TIMEOUT_SECONDS, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.transport is None:
            return
        if self._header_bytes:  # a request was started: say why it is dropped
            self.transport.write(
                raw_error(
                    408,
                    b"Request Timeout",
                    "The request headers were not received in time.",
                    "invalid_request_error",
                    "request_timeout",
                )
            )
        self.draining = True
        self.transport.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        too_large = (
            self._receivedHeaderSize > self.totalHeadersSize
            or self._receivedHeaderCount > self.maxHeaders
        )
        self._bad_request(too_large)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._bad_request(too_large=True)

    def _bad_request(self, too_large: bool, message: str = "Malformed HTTP request.") -> None:
        if self.draining or self.transport is None:
            return
        self._disarm_header_deadline()
        if too_large:
            answer = raw_error(
                431,
                b"Request Header Fields Too Large",
                "The request line or headers are too large.",
                "invalid_request_error",
                "headers_too_large",
            )
        else:
            answer = raw_error(
                400,
                b"Bad Request",
                message,
                "invalid_request_error",
                "bad_request",
            )
        self.transport.write(answer)
        self.draining = True
        self.persistent = False
        self.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if self.draining:
            return
        if b"\n" in line:
            self._bad_request(too_large=False, message=BARE_LF)
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.draining:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self.draining:
            super().allContentReceived()

    def _send100Continue(self) -> None:
        # Never invite the body of a request that was already answered.
        if not self.draining:
            super()._send100Continue()

    def loseConnection(self) -> None:
        if not self.draining or self.transport is None:
            super().loseConnection()
            return
        if self._closing:  # once is enough (an idle timeout may come after an early answer)
            return
        self._closing = True
        # Half-close: the answer and a FIN go out; unread bytes are drained until the client
        # closes too, or the linger time is up.
        transport: Any = self.transport
        self._networkProducer.unregisterProducer()  # type: ignore[attr-defined]
        if not hasattr(transport, "loseWriteConnection"):
            transport.loseConnection()
            return
        transport.loseWriteConnection()
        reactor: IReactorTime = self.site.reactor  # type: ignore[attr-defined]
        self._linger = reactor.callLater(LINGER_SECONDS, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.channels.discard(self)  # type: ignore[attr-defined]
        if not self._closed.called:
            self._closed.callback(None)
        self._disarm_header_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)


class GatewaySite(Site):
    """
    The gateway's ``Site``: no per-request access log (it costs more than the request), and
    request bodies checked by ``gate`` as soon as their headers are in.
    """

    noisy = False
    protocol = GatewayChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest

    def __init__(
        self,
        resource: IResource,
        *,
        gate: BodyGate | None = None,
        reactor: IReactorTime | None = None,
        answered: Callable[[IRequest, int], object] | None = None,
    ) -> None:
        # Form bodies are never ours to parse: Twisted would run the email package's header
        # parser over every POST's Content-Type (about 15% of a chat completion's CPU).
        super().__init__(resource, reactor=reactor, parsePOSTFormSubmission=False)
        self.gate = gate
        #: Told of every request once answered, with its status (499: the client left first).
        self.answered = answered
        #: The open HTTP connections (not those a WebSocket took over).
        self.channels: set[GatewayChannel] = set()

    async def drain(self, timeout: float) -> None:
        """
        Close every connection once its response in flight is written (an SSE stream that
        just got its last frame, say); abort what is still open after ``timeout`` seconds.
        Without this, stopping the reactor would cut responses whose last bytes were not
        yet sent.
        """
        closing = [d for d in (c.close_when_done() for c in list(self.channels)) if d]
        if not closing:
            return

        def abort() -> None:
            for channel in list(self.channels):
                channel.abort()

        clock: IReactorTime = self.reactor
        timer = clock.callLater(timeout, abort)
        await DeferredList(closing)
        if timer.active():
            timer.cancel()

    def log(self, request: Any) -> None:
        if self.answered is not None:
            # A stream cut by the client is finished by its producer's stopProducing, which
            # the socket calls once it knows it is gone: the client did not get it all.
            gone = getattr(getattr(request.channel, "transport", None), "disconnected", False)
            self.answered(request, 499 if gone else request.code)
