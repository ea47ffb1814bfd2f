"""A real model server on loopback, speaking the OpenAI and Anthropic streaming formats."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from ..config import ProviderApi, ProviderConfig, ProviderModel
from ..providers.interface import StopReason, Usage
from ._memory import MEMORY_TOKEN

#: What a garbage upstream sends: not an event stream a model would write.
GARBAGE: tuple[bytes, ...] = (
    b"<html><body>502 Bad Gateway</body></html>\n",
    b"data: {this is not json\n\n",
)


@attrs.frozen
class FakeToolCall:
    """
    A tool call a L{Reply} makes, in the API's own wire format: OpenAI ``delta.tool_calls``
    chunks (or ``message.tool_calls``), Anthropic ``tool_use`` blocks with
    ``input_json_delta`` pieces (or whole ``tool_use`` blocks).
    """

    name: str
    #: The arguments JSON text, or the pieces it is streamed in (one chunk each; split them
    #: anywhere, mid-string or mid-character).  A whole answer sends them joined.
    arguments: str | Sequence[str] = "{}"
    #: ``None``: ``call_fake<n>`` (OpenAI) or ``toolu_fake<n>`` (Anthropic).
    id: str | None = None

    @property
    def pieces(self) -> tuple[str, ...]:
        return (self.arguments,) if isinstance(self.arguments, str) else tuple(self.arguments)

    @property
    def text(self) -> str:
        """The whole arguments JSON text."""
        return "".join(self.pieces)

    def call_id(self, api: str, n: int) -> str:
        if self.id is not None:
            return self.id
        return f"toolu_fake{n}" if api == "anthropic" else f"call_fake{n}"


@attrs.frozen
class Reply:
    """
    How L{FakeUpstream} answers one request.

    By default it streams ``deltas`` in the format the path asks for (OpenAI chat completions
    chunks, or Anthropic message events), with ``usage`` (``Usage()``: none at all, as
    llama-cpp-python, which ignores ``include_usage``) and a ``stop_reason`` of ``"stop"`` or
    ``"length"``; then the ``tool_calls``, if any (the stop reason is then ``tool_calls`` /
    ``tool_use``).  The other fields script the faults a real provider has.
    """

    deltas: Sequence[str] = ("Hello", " from", " upstream.")
    usage: Usage = Usage(11, 3)
    stop_reason: StopReason = "stop"
    #: After the text, the model calls these tools (see L{FakeToolCall}).
    tool_calls: Sequence[FakeToolCall] = ()
    #: OpenAI: stream the calls' chunks round-robin by index (first chunks, then the pieces),
    #: as some servers do, instead of one call after the other.
    interleave: bool = False
    #: The exact ``finish_reason`` / ``stop_reason`` to send, instead of the one derived from
    #: ``stop_reason`` and ``tool_calls`` (e.g. ``"stop"`` after tool calls, as older Ollama).
    finish_reason: str | None = None
    #: A non-2xx status answers with that API's JSON error body carrying ``error_message``.
    status: int = 200
    error_message: str = "scripted upstream error"
    retry_after: str | None = None
    headers: Sequence[tuple[str, str]] = ()
    #: Seconds before the response headers, and before each event, on the server's clock.
    accept_delay: float = 0.0
    delay: float = 0.0
    #: Never answer at all: no status line, no byte (the request just waits).
    hang: bool = False
    #: After this many deltas: stop sending and keep the connection open.
    stall_after: int | None = None
    #: After this many deltas: drop the connection (a stream cut in the middle).
    cut_after: int | None = None
    #: After the deltas, an in-stream error event instead of a normal end.
    stream_error: str | None = None
    #: Send these raw bytes as the body instead of a well-formed stream (see L{GARBAGE}).
    raw: Sequence[bytes] | None = None
    #: Stream deltas without end, as fast as the client reads them (asked for a whole answer:
    #: never answer).  ``stall_after``/``cut_after`` on a whole answer send half of it first;
    #: ``stream_error`` on a whole answer is a 500; ``raw`` is the whole body.
    forever: bool = False
    #: End without ``data: [DONE]`` / ``message_stop`` (the body still ends cleanly).
    omit_end: bool = False
    #: Send no ``finish_reason`` / ``message_delta`` stop reason.  With ``omit_end``: a body
    #: that just ends (a server stopped by SIGTERM); without: a bare ``[DONE]`` (an OpenAI
    #: server that interrupted the answer) or a ``message_stop`` without a stop reason.
    omit_finish: bool = False
    #: OpenAI: put ``usage`` on the finish chunk, not in a chunk of its own (as some servers do,
    #: whatever ``include_usage`` says).
    usage_in_finish: bool = False
    #: Answer with one JSON completion even when ``stream`` is true (as some servers do).
    ignore_stream: bool = False


@attrs.define
class Received:
    """One request L{FakeUpstream} received: what was sent, and when its connection closed."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: Fires when the TCP connection that carried this request is closed (by either side).
    disconnected: Deferred[None]
    #: Whether the status line went out, how many events were written, whether the body ended.
    answered: bool = False
    chunks_sent: int = 0
    completed: bool = False

    @property
    def json(self) -> Any:
        """The request body, decoded (what the provider sent)."""
        return json.loads(self.body)

    @property
    def closed(self) -> bool:
        return self.disconnected.called


def _dumps(data: object) -> bytes:
    try:
        # Real servers write UTF-8, not \u escapes: a character may be split between reads.
        return json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate exists in JSON only as an escape.
        return json.dumps(data).encode()


def _sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return head.encode() + b"data: " + _dumps(data) + b"\n\n"


def _openai_finish(reply: Reply) -> str:
    if reply.finish_reason is not None:
        return reply.finish_reason
    if reply.stop_reason == "length":
        return "length"
    return "tool_calls" if reply.tool_calls or reply.stop_reason == "tool_calls" else "stop"


def _anthropic_stop(reply: Reply) -> str:
    if reply.finish_reason is not None:
        return reply.finish_reason
    if reply.stop_reason == "length":
        return "max_tokens"
    return "tool_use" if reply.tool_calls or reply.stop_reason == "tool_calls" else "end_turn"


def _openai_tool_chunks(reply: Reply) -> Iterator[dict[str, Any]]:
    """The ``delta.tool_calls`` entries of ``reply``'s calls, one per chunk, in stream order."""
    calls = list(enumerate(reply.tool_calls))

    def first(n: int, call: FakeToolCall) -> dict[str, Any]:
        return {
            "index": n,
            "id": call.call_id("openai", n),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }

    def piece(n: int, text: str) -> dict[str, Any]:
        return {"index": n, "function": {"arguments": text}}

    if not reply.interleave:
        for n, call in calls:
            yield first(n, call)
            for text in call.pieces:
                yield piece(n, text)
        return
    for n, call in calls:
        yield first(n, call)
    for k in range(max((len(c.pieces) for _, c in calls), default=0)):
        for n, call in calls:
            if k < len(call.pieces):
                yield piece(n, call.pieces[k])


def _openai_events(reply: Reply, body: Any) -> Iterator[tuple[bool, bytes]]:
    model = body.get("model", "")

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return _sse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
        )

    yield False, chunk({"role": "assistant", "content": ""})
    deltas: Iterable[str] = reply.deltas
    if reply.forever:
        deltas = (f"tok{i} " for i in itertools.count())
    for text in deltas:
        yield True, chunk({"content": text})
    for entry in _openai_tool_chunks(reply):
        yield True, chunk({"tool_calls": [entry]})
    if reply.stream_error is not None:
        err = {"message": reply.stream_error, "type": "server_error", "param": None, "code": None}
        yield False, _sse({"error": err})
        return
    usage = _openai_usage(reply.usage)
    if not reply.omit_finish:
        on_finish = {"usage": usage} if reply.usage_in_finish and usage is not None else {}
        yield False, chunk({}, _openai_finish(reply), **on_finish)
    if (
        (body.get("stream_options") or {}).get("include_usage")
        and usage is not None
        and not reply.usage_in_finish
    ):
        yield False, _sse({"id": "chatcmpl-fake", "choices": [], "usage": usage})
    if not reply.omit_end:
        yield False, b"data: [DONE]\n\n"


def _openai_usage(u: Usage) -> dict[str, int] | None:
    if not u.known:
        return None
    return {
        "prompt_tokens": u.input_tokens or 0,
        "completion_tokens": u.output_tokens or 0,
        "total_tokens": u.total_tokens or 0,
    }


def _anthropic_events(reply: Reply, body: Any) -> Iterator[tuple[bool, bytes]]:
    u = reply.usage
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if u.known:
        message["usage"] = {"input_tokens": u.input_tokens or 0, "output_tokens": 1}
    yield False, _sse({"type": "message_start", "message": message}, "message_start")
    # A model that answers with tool calls alone writes no text block (as Claude does).
    text_block = bool(reply.deltas) or reply.forever or not reply.tool_calls
    if text_block:
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        yield False, _sse(block, "content_block_start")
    yield False, _sse({"type": "ping"}, "ping")
    deltas: Iterable[str] = reply.deltas
    if reply.forever:
        deltas = (f"tok{i} " for i in itertools.count())
    for text in deltas:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": text},
        }
        yield True, _sse(delta, "content_block_delta")
    if reply.stream_error is not None:
        err = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": reply.stream_error},
        }
        yield False, _sse(err, "error")
        return
    if text_block:
        yield False, _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    for n, call in enumerate(reply.tool_calls):
        index = n + text_block
        use = {"type": "tool_use", "id": call.call_id("anthropic", n), "name": call.name}
        start = {
            "type": "content_block_start",
            "index": index,
            "content_block": {**use, "input": {}},
        }
        yield True, _sse(start, "content_block_start")
        # The API begins each tool_use block with an empty piece.
        for text in ("", *call.pieces):
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": text},
            }
            yield True, _sse(delta, "content_block_delta")
        yield False, _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
    stop = _anthropic_stop(reply)
    if not reply.omit_finish:
        end: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
        }
        if u.known:
            end["usage"] = {"output_tokens": u.output_tokens or 0}
        yield False, _sse(end, "message_delta")
    if not reply.omit_end:
        yield False, _sse({"type": "message_stop"}, "message_stop")


def _error_body(api: str, status: int, message: str) -> bytes:
    if api == "anthropic":
        kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
        err = {"type": kind.get(status, "api_error" if status >= 500 else "invalid_request_error")}
        return json.dumps({"type": "error", "error": {**err, "message": message}}).encode()
    return json.dumps(
        {"error": {"message": message, "type": "error", "param": None, "code": None}}
    ).encode()


def _complete_body(api: str, reply: Reply, body: Any) -> bytes:
    """The non-streaming answer (``stream`` not true)."""
    text, u = "".join(reply.deltas), reply.usage
    answer: dict[str, Any]
    if api == "anthropic":
        content: list[dict[str, Any]] = []
        if text or not reply.tool_calls:
            content.append({"type": "text", "text": text})
        content += [
            {
                "type": "tool_use",
                "id": c.call_id(api, n),
                "name": c.name,
                "input": json.loads(c.text),
            }
            for n, c in enumerate(reply.tool_calls)
        ]
        answer = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": _anthropic_stop(reply),
        }
        if u.known:
            answer["usage"] = {
                "input_tokens": u.input_tokens or 0,
                "output_tokens": u.output_tokens or 0,
            }
        return _dumps(answer)
    answer = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": _openai_finish(reply),
            }
        ],
    }
    if reply.tool_calls:
        message = answer["choices"][0]["message"]
        message["content"] = text or None
        message["tool_calls"] = [
            {
                "id": c.call_id(api, n),
                "type": "function",
                "function": {"name": c.name, "arguments": c.text},
            }
            for n, c in enumerate(reply.tool_calls)
        ]
    # A server that counts nothing says nothing (llama-cpp-python); some send null.
    if u.known:
        answer["usage"] = _openai_usage(u)
    return _dumps(answer)


def reply_body(api: ProviderApi, reply: Reply, request: Any = None) -> bytes:
    """
    The body L{FakeUpstream} answers ``request`` (a request body; default: a streaming one)
    with on ``api``'s path, all at once: to feed a parser in pieces of one's choosing.
    """
    body = {"stream": True} if request is None else request
    name = "anthropic" if api == "anthropic-messages" else "openai"
    if not body.get("stream") or reply.ignore_stream:
        return _complete_body(name, reply, body)
    events = _anthropic_events(reply, body) if name == "anthropic" else _openai_events(reply, body)
    return b"".join(data for _, data in events)


def _cancel(timer: IDelayedCall) -> None:
    if timer.active():
        timer.cancel()


@implementer(IPushProducer)
class _Writer:
    """Writes one scripted response, honouring the client's backpressure."""

    def __init__(
        self,
        upstream: FakeUpstream,
        request: Request,
        received: Received,
        reply: Reply,
        events: Iterator[tuple[bool, bytes]],
    ) -> None:
        self.upstream = upstream
        self.request = request
        self.received = received
        self.reply = reply
        self.events = events
        self.deltas = 0
        self.paused = False
        self.stopped = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(lambda _: self.stopProducing())
        self.request.write(b"")  # the status line and headers, now
        self._schedule(self.reply.delay)

    def _schedule(self, delay: float) -> None:
        if not self.stopped and not self.paused and self._call is None:
            self._call = self.upstream.clock.callLater(delay, self._step)

    def _step(self) -> None:
        self._call = None
        burst = 0
        while not self.paused and not self.stopped:
            reply = self.reply
            if reply.cut_after is not None and self.deltas >= reply.cut_after:
                self.stopped = True
                # Close after what was written is sent: the body ends mid-way.
                transport: Any = self.request.transport
                transport.loseConnection()
                return
            if reply.stall_after is not None and self.deltas >= reply.stall_after:
                return
            item = next(self.events, None)
            if item is None:
                self.stopped = True
                self.request.unregisterProducer()
                self.received.completed = True
                self.request.finish()
                return
            is_delta, data = item
            self.deltas += is_delta
            self.received.chunks_sent += 1
            self.request.write(data)
            burst += 1
            if reply.delay or burst >= 64:
                # A delay between events, or a pause in an endless stream so the
                # reactor can run.
                self._schedule(reply.delay)
                return

    def pauseProducing(self) -> None:
        self.paused = True
        self.upstream.pauses += 1
        if not self.upstream.paused.called:
            self.upstream.paused.callback(self.received)

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule(0)

    def stopProducing(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _UpstreamResource(Resource):
    isLeaf = True

    def __init__(self, upstream: FakeUpstream) -> None:
        super().__init__()
        self.upstream = upstream

    def render(self, request: Request) -> bytes | int:
        return self.upstream._handle(request)


class FakeUpstream:
    """
    A real model server on 127.0.0.1: the OpenAI chat completions streaming format on
    ``POST .../chat/completions`` and the Anthropic messages format on ``POST .../v1/messages``.

    Each request takes the next scripted L{Reply} (``default`` once the script is used up),
    is recorded in ``requests`` (body, headers, a Deferred that fires when its connection
    closes), and is answered on ``clock`` (the reactor unless one is given)::

        server = await FakeUpstream.start(reactor)
        self.addCleanup(server.stop)
        server.script(Reply(deltas=["Hi", " there"]), Reply(status=429, retry_after="7"))
        config = server.provider("fake", "openai-completions", models=["m1"])
        # ... a run against "fake/m1" streams "Hi", " there"; the next one gets a 429.
        assert server.requests[0].json["stream"] is True
        await server.requests[1].disconnected  # e.g. after cancelling a run

    ``paused`` fires (with the L{Received}) the first time a client's backpressure stops the
    server writing; ``pauses`` counts them.
    """

    def __init__(self, reactor: Any, clock: IReactorTime | None = None) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.default = Reply()
        self.requests: list[Received] = []
        self.pauses = 0
        self.paused: Deferred[Received] = Deferred()
        self._script: list[Reply | Callable[[Received], Reply]] = []
        self._waiting: list[tuple[int, Deferred[Received]]] = []
        self._connections: dict[Any, Deferred[None]] = {}
        self._timers: list[IDelayedCall] = []
        self._port: Any = None
        site = Site(_UpstreamResource(self))
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        build = site.buildProtocol

        def tracked(addr: Any) -> Any:
            proto = build(addr)
            make_connection, connection_lost = proto.makeConnection, proto.connectionLost
            seen: list[Any] = []

            def on_connect(transport: Any) -> None:
                seen.append(transport)
                self._connections[transport] = Deferred()
                make_connection(transport)

            def on_lost(reason: Failure) -> None:
                connection_lost(reason)
                d = self._connections.pop(seen[0], None) if seen else None
                if d is not None:
                    d.callback(None)

            proto.makeConnection, proto.connectionLost = on_connect, on_lost
            return proto

        site.buildProtocol = tracked  # type: ignore[method-assign]
        self.site = site

    @classmethod
    async def start(cls, reactor: Any, clock: IReactorTime | None = None) -> FakeUpstream:
        """A server listening on 127.0.0.1:<free port>."""
        server = cls(reactor, clock)
        server._port = reactor.listenTCP(0, server.site, interface="127.0.0.1")
        return server

    @property
    def port(self) -> int:
        return int(self._port.getHost().port)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the Anthropic ``baseUrl``; OpenAI's adds ``/v1``."""
        return f"http://127.0.0.1:{self.port}"

    def provider(
        self,
        name: str = "fake",
        api: ProviderApi = "openai-completions",
        models: Sequence[str] = ("fake-model",),
        api_key: str | None = "sk-test-key",
    ) -> ProviderConfig:
        """A ``models.providers`` entry pointing at this server."""
        base = self.base_url + ("/v1" if api == "openai-completions" else "")
        return ProviderConfig(name, api, base, api_key, (), tuple(ProviderModel(m) for m in models))

    def provider_config(
        self,
        name: str = "fake",
        api: ProviderApi = "openai-completions",
        models: Sequence[str] = ("m",),
        api_key: str | None = "sk-test-key",
    ) -> dict[str, Any]:
        """The ``models.providers`` entry pointing at this server, as ``openclaw.json`` has it."""
        p = self.provider(name, api, models, api_key)
        entry: dict[str, Any] = {"baseUrl": p.base_url, "api": api}
        if api_key is not None:
            entry["apiKey"] = api_key
        entry["models"] = [{"id": m} for m in models]
        return entry

    def gateway_config(
        self,
        api: ProviderApi = "openai-completions",
        models: Sequence[str] = ("m",),
        *,
        name: str = "fake",
        token: str = MEMORY_TOKEN,
        api_key: str | None = "sk-test-key",
        endpoints: Mapping[str, Any] | None = None,
        agents: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """
        A whole ``openclaw.json`` document for a gateway in front of this server: token auth
        with ``token``, the HTTP ``endpoints`` (default: chat completions on), ``agents``
        (default: every agent on ``<name>/<first model>``) and this server as provider
        ``name`` serving ``models`` with ``api_key``.  A fresh mapping: add to it what a test
        needs (``data["gateway"]["limits"] = ...``).
        """
        if endpoints is None:
            endpoints = {"chatCompletions": {"enabled": True}}
        if agents is None:
            agents = {"defaults": {"model": f"{name}/{models[0]}"}}
        return {
            "gateway": {
                "auth": {"mode": "token", "token": token},
                "http": {"endpoints": endpoints},
            },
            "agents": agents,
            "models": {"providers": {name: self.provider_config(name, api, models, api_key)}},
        }

    @property
    def bodies(self) -> list[Any]:
        """The JSON body of every request received, in order: what the provider sent."""
        return [r.json for r in self.requests]

    def script(self, *replies: Reply | Callable[[Received], Reply]) -> None:
        """Answer the next requests with these, in order (a callable decides per request)."""
        self._script.extend(replies)

    def request(self, n: int = 0) -> Deferred[Received]:
        """Fires once request number ``n`` (from 0) has arrived and its answer has begun."""
        if n < len(self.requests):
            return succeed(self.requests[n])
        d: Deferred[Received] = Deferred()
        self._waiting.append((n, d))
        return d

    def _handle(self, request: Request) -> bytes | int:
        content = request.content.read() if request.content is not None else b""
        transport = request.channel.transport
        disconnected = self._connections.get(transport)
        if disconnected is None:
            disconnected = succeed(None)
        headers = {
            k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        path = (request.path or b"").decode("latin-1")
        method = (request.method or b"").decode("latin-1")
        received = Received(method, path, headers, content, disconnected)
        self.requests.append(received)
        try:
            return self._respond(request, received)
        finally:
            # After the answer began, so a waiting test sees its first timers scheduled.
            for waiting in [w for w in self._waiting if w[0] < len(self.requests)]:
                self._waiting.remove(waiting)
                waiting[1].callback(self.requests[waiting[0]])

    def _respond(self, request: Request, received: Received) -> bytes | int:
        path, method, content = received.path, received.method, received.body
        api = (
            "openai"
            if path.endswith("/chat/completions")
            else "anthropic"
            if path.endswith("/messages")
            else None
        )
        if api is None or method != "POST":
            request.setResponseCode(404 if api is None else 405)
            request.setHeader(b"content-type", b"application/json")
            return _error_body("openai", 404, f"no route {method} {path}")
        try:
            body = json.loads(content)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return _error_body(api, 400, f"invalid JSON body: {e}")
        item = self._script.pop(0) if self._script else self.default
        reply = item(received) if callable(item) else item
        if reply.hang or (reply.forever and not body.get("stream")):
            # An endless answer asked for whole: the server never gets to answer.
            return NOT_DONE_YET
        if reply.accept_delay:
            timer = self.clock.callLater(
                reply.accept_delay, self._answer, request, received, reply, api, body
            )
            self._timers = [t for t in self._timers if t.active()] + [timer]
            request.notifyFinish().addBoth(lambda _: _cancel(timer))
            return NOT_DONE_YET
        self._answer(request, received, reply, api, body)
        return NOT_DONE_YET

    def _answer(
        self, request: Request, received: Received, reply: Reply, api: str, body: Any
    ) -> None:
        received.answered = True

        def headers(content_type: bytes) -> None:
            request.setHeader(b"content-type", content_type)
            # The scripted headers last: they may replace the content type.
            for k, v in reply.headers:
                request.setHeader(k.encode("latin-1"), v.encode("latin-1"))

        whole = not body.get("stream") or reply.ignore_stream
        status, message = reply.status, reply.error_message
        if whole and reply.stream_error is not None:
            # Asked for a whole answer, a server reports the failure as a status.
            status, message = 500, reply.stream_error
        if status >= 300 or status < 200:
            request.setResponseCode(status)
            if reply.retry_after is not None:
                request.setHeader(b"retry-after", reply.retry_after.encode("latin-1"))
            headers(b"application/json")
            request.write(_error_body(api, status, message))
            received.completed = True
            request.finish()
            return
        request.setResponseCode(reply.status)
        if whole:
            headers(b"application/json")
            data = (
                b"".join(reply.raw) if reply.raw is not None else _complete_body(api, reply, body)
            )
            broken = reply.cut_after is not None or reply.stall_after is not None
            if broken:
                # The faults of a stream, in a whole answer: half of it, then a stall or a cut.
                request.write(data[: len(data) // 2])
                received.chunks_sent = 1
                if reply.cut_after is not None:
                    transport: Any = request.transport
                    transport.loseConnection()
                return
            request.write(data)
            received.completed = True
            request.finish()
            return
        request.setHeader(b"cache-control", b"no-cache")
        headers(b"text/event-stream; charset=utf-8")
        events: Iterator[tuple[bool, bytes]]
        if reply.raw is not None:
            events = ((False, chunk) for chunk in reply.raw)
        elif api == "anthropic":
            events = _anthropic_events(reply, body)
        else:
            events = _openai_events(reply, body)
        _Writer(self, request, received, reply, events).start()

    async def stop(self) -> None:
        """Stop listening, drop every connection and wait until each is closed."""
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if self._port is not None:
            await maybeDeferred(self._port.stopListening)
        for transport, lost in list(self._connections.items()):
            transport.abortConnection()
            await lost
