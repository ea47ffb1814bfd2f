"""What both HTTP providers share: the streaming POST, its error mapping, the paused SSE body."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    PotentialDataLoss,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from .._pull import PullQueue
from ..config import ProviderConfig
from .interface import IModelStream, ModelEvent, ProviderError, TextDelta, ToolCallDelta
from .sse import SSEError, SSEEvent, SSEParser

log = Logger()

#: Events buffered for a consumer that is not pulling before the body is paused.
HIGH_WATER = 32
LOW_WATER = 8
#: The part of an error body read for its message.
ERROR_BODY_CAP = 64 * 1024
#: The largest whole (non-streamed) JSON answer accepted from a server that ignores ``stream``.
JSON_BODY_CAP = 16 * 1024 * 1024
#: After the stream's end marker, how long to wait for the body to end before closing it.
END_GRACE = 2.0
#: How long ``open()`` waits for the model's first event (a delta or its finish) once the
#: answer's headers are in.  A stream that fails before it fails to open: the next fallback
#: model runs and the client gets a real HTTP status.  A model slower than this to begin
#: still gets its stream handed over, so the client's response (and its heartbeats) starts.
FIRST_EVENT_WAIT = 10.0
USER_AGENT = "openclaw-twisted"


class Decoder(Protocol):
    """Turns one provider's SSE events into model events."""

    #: Whether the stream's end marker (``[DONE]``, ``message_stop``) was seen.
    done: bool

    def event(self, event: SSEEvent) -> list[ModelEvent]:
        """The model events in ``event``; raises L{ProviderError} for errors and garbage."""

    def end(self) -> list[ModelEvent]:
        """
        The body ended cleanly without the end marker: the last events if a finish reason
        came (the answer is complete), else raise L{cut} (the provider stopped mid-answer).
        """

    def complete(self, answer: Any) -> list[ModelEvent]:
        """The events of a whole JSON answer (a server that ignored ``stream: true``)."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets`` in it (an upstream may echo the key back)."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def describe(what: str, limit: int = 200) -> str:
    """A short, single-line excerpt of upstream text for an error message."""
    one = " ".join(what.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def error_message(body: bytes) -> str:
    """The human message of an upstream error body (OpenAI, Anthropic, Ollama, FastAPI...)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return describe(body.decode("utf-8", "replace"))
    if isinstance(obj, dict):
        for candidate in (obj.get("error"), obj):
            if isinstance(candidate, str):
                return describe(candidate)
            if isinstance(candidate, dict):
                for key in ("message", "detail", "error"):
                    if isinstance(candidate.get(key), str):
                        return describe(candidate[key])
    return describe(body.decode("utf-8", "replace"))


def status_error(
    label: str, code: int, phrase: str, message: str, retry_after: str | None
) -> ProviderError:
    """The L{ProviderError} for a non-2xx answer."""
    text = f"{label} answered {code}" + (f" {phrase}" if phrase else "")
    text += f": {message}" if message else ""
    if code in (401, 403):
        return ProviderError("auth", text, status=code)
    if code == 429:
        return ProviderError("rate_limited", text, status=code, retry_after=retry_after)
    if code >= 500:
        return ProviderError("upstream_error", text, status=code)
    return ProviderError("bad_request", text, status=code)


def connect_error(label: str, reason: BaseException) -> ProviderError:
    """
    The L{ProviderError} for a request that got no answer at all: a sentence for a person
    (the exception's own text, which names hosts and holds reprs, is for the log only).
    """
    if isinstance(reason, ConnectionRefusedError):
        why = "is unreachable: the connection was refused"
    elif isinstance(reason, DNSLookupError):
        why = "is unreachable: its host name could not be resolved"
    elif isinstance(reason, TimeoutError):
        why = "is unreachable: the connection timed out"
    elif isinstance(reason, ResponseNeverReceived | ResponseFailed):
        why = "closed the connection before answering"
    elif isinstance(reason, RequestTransmissionFailed):
        why = "closed the connection while the request was being sent"
    else:
        why = "could not be reached"
    return ProviderError("unavailable", f"{label} {why}")


def cut(label: str, answered: bool) -> ProviderError:
    """The provider went away (reset, or a body that ended without its finish): unavailable."""
    if answered:
        return ProviderError("unavailable", f"{label} closed the connection mid-answer")
    return ProviderError("unavailable", f"{label} closed the connection before answering")


def failure_detail(reason: BaseException | Failure) -> str:
    """What a low-level failure was, for the log: every wrapped reason, one line."""
    error = reason.value if isinstance(reason, Failure) else reason
    inner = getattr(error, "reasons", None)
    if isinstance(inner, list) and inner:
        return "; ".join(failure_detail(r) for r in inner)
    text = str(error)
    return describe(f"{type(error).__name__}: {text}" if text else type(error).__name__, 300)


_DONE = Failure(ResponseDone())


class _Collect(TwistedProtocol):
    """Reads at most ``cap`` bytes of a body (an error body), then lets go of it."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = b""
        self.truncated = False
        #: Why the body ended, when it was cut short (a reset) rather than ended.
        self.reason: Failure | None = None
        self.done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.data += data
        if len(self.data) > self.cap:
            self.data, self.truncated = self.data[: self.cap], True
            self.done.callback(self.data)
            self._stop()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if not self.done.called:
            if reason.check(ResponseDone, PotentialDataLoss) is None:
                self.reason = reason
            self.done.callback(self.data)


class _Body(TwistedProtocol):
    """Receives the SSE body and hands its events to the stream."""

    def __init__(self, stream: HTTPModelStream) -> None:
        self.stream = stream

    def connectionMade(self) -> None:
        self.stream._transport = self.transport  # type: ignore[assignment]

    def dataReceived(self, data: bytes) -> None:
        self.stream._data(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.stream._lost(reason)


@implementer(IModelStream)
class HTTPModelStream:
    """
    A model response read incrementally from an SSE body.

    Events go into a L{PullQueue}; while more than ``HIGH_WATER`` wait, the body's transport
    is paused (the upstream soon cannot write), and resumed once the consumer catches up.
    """

    def __init__(
        self,
        response: IResponse,
        decoder: Decoder,
        clock: IReactorTime,
        label: str,
        secrets: tuple[str, ...] = (),
        endpoint: str = "",
    ) -> None:
        self._decoder = decoder
        self._clock = clock
        self._label = label
        self._endpoint = endpoint
        self._secrets = secrets
        #: Whether a delta was handed on (a cut is then "mid-answer").
        self.answered = False
        self._parser = SSEParser()
        self._transport: IPushProducer | None = None
        self._ended = False  # no more events will be taken from the body
        self._body_done = False  # the HTTP body is over (any reason)
        self._grace: IDelayedCall | None = None
        #: How often the body was paused and resumed for backpressure.
        self.pauses = 0
        self.resumes = 0
        self._queue: PullQueue[ModelEvent] = PullQueue(
            high=HIGH_WATER, low=LOW_WATER, pause=self._pause, resume=self._resume
        )
        # For first_event(): whether an event came (or the stream ended), and how it broke.
        self._begun = False
        self._error: ProviderError | None = None
        self._ready: Deferred[None] | None = None
        self._first: IDelayedCall | None = None
        response.deliverBody(_Body(self))
        # deliverBody resumes the transport after handing over data it had buffered.
        self._repause()

    @property
    def ended(self) -> bool:
        """No more events will be taken from the body (read afresh: a consumer may end it)."""
        return self._ended

    def _repause(self) -> None:
        if self.paused and not self._body_done and self._transport is not None:
            self._transport.pauseProducing()

    @property
    def paused(self) -> bool:
        return self.pauses > self.resumes

    @property
    def buffered(self) -> int:
        """Events waiting for the consumer."""
        return len(self._queue)

    def next(self) -> Deferred[ModelEvent | None]:
        return self._queue.get()

    def first_event(self, wait: float = FIRST_EVENT_WAIT) -> Deferred[None]:
        """
        Fires once the first model event is in (or the stream ended), or after ``wait``
        seconds; fails with the stream's error if it broke first.  Cancelling it cancels the
        stream.
        """
        if self._error is not None:
            return fail(self._error)
        if self._begun or self._ended:
            return succeed(None)
        self._ready = Deferred(lambda _: self.cancel())
        self._first = self._clock.callLater(wait, self._set_ready)
        return self._ready

    def cancel(self) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if self._first is not None and self._first.active():
            # Not ``_set_ready``: cancelling first_event() ends here, and must fail it.
            self._first.cancel()
        self._ended = True
        self._queue.finish()
        self._close()

    def _set_ready(self, error: ProviderError | None = None) -> None:
        self._begun = True
        if self._first is not None:
            if self._first.active():
                self._first.cancel()
            self._first = None
        ready, self._ready = self._ready, None
        if ready is not None and not ready.called:
            if error is None:
                ready.callback(None)
            else:
                ready.errback(error)

    def _put(self, event: ModelEvent) -> None:
        if isinstance(event, TextDelta | ToolCallDelta):
            self.answered = True
        self._queue.put(event)
        self._set_ready()

    def _close(self) -> None:
        if not self._body_done and self._transport is not None:
            self._body_done = True
            # For a TCP transport, stopProducing closes the connection (nothing is unsent).
            self._transport.stopProducing()

    def _pause(self) -> None:
        self.pauses += 1
        if not self._body_done and self._transport is not None:
            self._transport.pauseProducing()

    def _resume(self) -> None:
        self.resumes += 1
        if not self._body_done and self._transport is not None:
            self._transport.resumeProducing()

    def _fail(self, error: ProviderError, detail: str = "") -> None:
        self._ended = True
        scrub(error, self._secrets)
        log_failure(self._label, self._endpoint, error, redact(detail, self._secrets))
        self._error = error
        self._queue.fail(error)
        self._close()
        self._set_ready(error)

    def _grace_after_end(self) -> None:
        # The decoder saw the answer's end: the body gets END_GRACE to close by itself.
        if self._decoder.done and not self._ended and self._grace is None:
            self._grace = self._clock.callLater(END_GRACE, self._end_anyway)

    def _data(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            events = self._parser.feed(data)
            for sse in events:
                if self.ended:
                    return
                if self._decoder.done:
                    continue
                for event in self._decoder.event(sse):
                    self._put(event)
                self._grace_after_end()
        except SSEError as e:
            self._fail(
                ProviderError(
                    "upstream_error", f"{self._label} sent a stream that cannot be read: {e}"
                ),
                str(e),
            )
        except ProviderError as e:
            self._fail(e)

    def _end_anyway(self) -> None:
        # The end marker came but the body did not end: the answer is complete all the same.
        self._ended = True
        self._queue.finish()
        self._close()
        self._set_ready()

    def _lost(self, reason: Failure) -> None:
        self._body_done = True
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        if self._ended:
            return
        clean = reason.check(ResponseDone, PotentialDataLoss) is not None
        if self._decoder.done:
            self._ended = True
            self._queue.finish()
            self._set_ready()
            return
        if not clean:
            # A reset or a body cut short (CONTRACT §4.6: unavailable, whatever came before).
            self._fail(cut(self._label, self.answered), failure_detail(reason))
            return
        try:
            for event in self._decoder.end():
                self._put(event)
        except ProviderError as e:
            self._fail(e, "the body ended without the stream's end marker")
            return
        self._ended = True
        self._queue.finish()
        self._set_ready()


@implementer(IModelStream)
class ListStream:
    """The events of an answer that arrived whole."""

    def __init__(self, events: list[ModelEvent]) -> None:
        self._events = list(reversed(events))

    def next(self) -> Deferred[ModelEvent | None]:
        return succeed(self._events.pop() if self._events else None)

    def cancel(self) -> None:
        self._events.clear()


def cancellable(
    start: Callable[[list[bool]], Coroutine[Any, Any, IModelStream]],
) -> Deferred[IModelStream]:
    """
    Run ``start(cancelled)``; cancelling the result sets ``cancelled[0]`` and cancels what it
    awaits, and the result then fails with ``CancelledError`` (never a L{ProviderError}, so a
    cancelled run does not move on to a fallback model).
    """
    cancelled = [False]
    inner = Deferred.fromCoroutine(start(cancelled))

    def cancel(_: Deferred[IModelStream]) -> None:
        cancelled[0] = True
        inner.cancel()

    outer: Deferred[IModelStream] = Deferred(cancel)

    def done(result: IModelStream | Failure) -> None:
        if outer.called:
            # Cancelled meanwhile: a stream that was opened anyway must not leak.
            if not isinstance(result, Failure):
                result.cancel()
            return
        if isinstance(result, Failure):
            outer.errback(result)
        else:
            outer.callback(result)

    inner.addBoth(done)
    return outer


class HTTPProvider:
    """The streaming ``POST`` every HTTP provider makes, with its errors classified."""

    def __init__(self, config: ProviderConfig, http: Any, clock: IReactorTime) -> None:
        self.name = config.name
        self.config = config
        self._http = http
        self._clock = clock
        host = urlsplit(config.base_url).hostname or config.base_url
        port = urlsplit(config.base_url).port
        # Clients are told the provider's name; where it lives is for the log only.
        self._label = f"model provider {config.name!r}"
        self._endpoint = f"{host}{f':{port}' if port else ''}"
        secrets = [config.api_key or ""] + [v for _, v in config.headers]
        self._secrets = tuple(s for s in secrets if s)

    def max_tokens(self, model: str) -> int | None:
        """The ``maxTokens`` the config gives ``model``, if any."""
        entry = next((m for m in self.config.models if m.id == model), None)
        return entry.max_tokens if entry is not None else None

    def post(
        self, url: str, headers: dict[str, str], body: Any, decoder: Decoder
    ) -> Deferred[IModelStream]:
        """
        POST ``body`` as JSON; fire with the stream once a 2xx answer's first model event is
        in (see L{FIRST_EVENT_WAIT}), or with the whole answer when ``body["stream"]`` is false.
        """
        all_headers = Headers({b"content-type": [b"application/json"]})
        accept = b"text/event-stream" if body.get("stream") else b"application/json"
        all_headers.setRawHeaders(b"accept", [accept])
        all_headers.setRawHeaders(b"user-agent", [USER_AGENT.encode()])
        for k, v in [*headers.items(), *self.config.headers]:
            all_headers.setRawHeaders(k.encode("latin-1"), [v.encode("latin-1")])
        data = json.dumps(body).encode("utf-8")

        async def start(cancelled: list[bool]) -> IModelStream:
            try:
                response = await self._http.request(
                    "POST",
                    url,
                    data=data,
                    headers=all_headers,
                    unbuffered=True,
                    allow_redirects=False,
                )
            except Exception as e:
                if cancelled[0]:
                    raise CancelledError() from None
                raise self._failed(connect_error(self._label, e), failure_detail(e)) from None
            if cancelled[0]:
                discard = _Collect(0)
                response.deliverBody(discard)
                discard._stop()
                raise CancelledError()
            if 200 <= response.code < 300:
                kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
                if kind.lower().startswith(b"application/json"):
                    return await self._whole(response, decoder)
                stream = HTTPModelStream(
                    response, decoder, self._clock, self._label, self._secrets, self._endpoint
                )
                await stream.first_event()
                return stream
            collect = _Collect(ERROR_BODY_CAP)
            response.deliverBody(collect)
            text = await collect.done
            retry = response.headers.getRawHeaders(b"retry-after")
            phrase = (response.phrase or b"").decode("latin-1")
            raise self._failed(
                status_error(
                    self._label,
                    response.code,
                    phrase,
                    error_message(text),
                    retry[0].decode("latin-1") if retry else None,
                ),
                f"HTTP {response.code}",
            )

        return cancellable(start)

    async def _whole(self, response: IResponse, decoder: Decoder) -> IModelStream:
        # Some servers answer with one JSON completion whatever ``stream`` says.
        collect = _Collect(JSON_BODY_CAP)
        response.deliverBody(collect)
        text = await collect.done
        if collect.truncated:
            raise self._failed(
                ProviderError(
                    "upstream_error", f"{self._label} answered more than {JSON_BODY_CAP} bytes"
                )
            )
        if collect.reason is not None:
            # Part of the answer had come: the provider went away mid-answer.
            raise self._failed(cut(self._label, bool(text)), failure_detail(collect.reason))
        try:
            answer = loads(self._label, text.decode("utf-8", "replace"))
            return ListStream(decoder.complete(answer))
        except ProviderError as e:
            raise self._failed(e) from None

    def _failed(self, error: ProviderError, detail: str = "") -> ProviderError:
        scrub(error, self._secrets)
        log_failure(self._label, self._endpoint, error, redact(detail, self._secrets))
        return error


def scrub(error: ProviderError, secrets: Iterable[str]) -> None:
    """Take the credentials out of ``error``'s message."""
    error.message = redact(error.message, secrets)
    error.args = (error.message,)


def log_failure(label: str, endpoint: str, error: ProviderError, detail: str) -> None:
    """One warning per provider failure, with where the provider is and what really broke."""
    log.warn(
        "{label} at {endpoint} failed ({kind}): {message}{detail}",
        label=label,
        endpoint=endpoint,
        kind=error.kind,
        message=error.message,
        detail=f" [{detail}]" if detail else "",
    )


def loads(label: str, data: str) -> Any:
    """``data`` as JSON, or an ``upstream_error`` naming the garbage."""
    try:
        return json.loads(data)
    except ValueError:
        raise ProviderError(
            "upstream_error", f"{label} sent data that is not JSON: {describe(data, 80)}"
        ) from None
