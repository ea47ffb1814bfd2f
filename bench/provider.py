"""
A fast fake OpenAI-compatible model server: a raw Twisted protocol, so it is never the bottleneck.

``POST .../chat/completions`` answers by the request's ``model``:

- ``tick``: streams ``--tick-chunks`` deltas at ``--tick-rate`` a second; each delta is
  ``"<index>:<monotonic ns when written>;"`` so a client can check order and measure delay;
- ``big``: streams ``--big-bytes`` of ``z`` in deltas of ``--big-chunk`` bytes, as fast as the
  reader takes them (it is a push producer: it stops writing while the socket is full);
- anything else: one short answer, as JSON or (``stream: true``) as SSE, written at once.

Run: ``python -m bench.provider [--port 0]``; it prints ``listening <port>``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet import task
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

#: The global reactor, untyped: the bench is a process edge, like the CLI.
reactor: Any = _reactor

ANSWER = "Hello from the bench provider."
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def frame(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def ending(model: str) -> bytes:
    """The finish chunk, the usage chunk and ``[DONE]``, then the end of the chunked body."""
    usage = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0}
    usage.update(model=model, choices=[], usage=USAGE)
    data = frame(model, {}, "stop") + b"data: " + json.dumps(usage).encode() + b"\n\n"
    return chunked(data + b"data: [DONE]\n\n") + b"0\r\n\r\n"


def quick(model: str, stream: bool) -> bytes:
    """The whole response for a short answer."""
    if stream:
        first = frame(model, {"role": "assistant", "content": ANSWER})
        return SSE_HEAD + chunked(first) + ending(model)
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": ANSWER},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    ).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


#: A ``tick`` delta, formatted without a JSON encoder (the provider must stay cheap).
TICK = frame("tick", {"content": "%d:%d;"})


class Ticker:
    """Every ``tick`` stream is due once a period; one timer serves them all, oldest first."""

    def __init__(self, chunks: int, rate: float) -> None:
        self.chunks = chunks
        self.period = 1.0 / rate
        self.due: collections.deque[tuple[float, int, HTTPServer]] = collections.deque()
        self.loop = task.LoopingCall(self.run)

    def add(self, server: HTTPServer) -> None:
        server.send(SSE_HEAD)
        self.emit(server, 0)
        # Same period for all, so appending keeps the deque sorted by due time.
        self.due.append((time.monotonic() + self.period, 1, server))
        if not self.loop.running:
            self.loop.start(0.001)

    def emit(self, server: HTTPServer, index: int) -> None:
        server.send(chunked(TICK % (index, time.monotonic_ns())))

    def run(self) -> None:
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            at, index, server = self.due.popleft()
            if server.gone:
                continue
            self.emit(server, index)
            if index + 1 < self.chunks:
                self.due.append((at + self.period, index + 1, server))
            else:
                server.send(ending("tick"))
        if not self.due:
            self.loop.stop()


@implementer(IPushProducer)
class Big:
    """A large answer written only while the socket takes it."""

    def __init__(self, server: HTTPServer, total: int, size: int) -> None:
        self.server = server
        server.queued = True  # from now on this connection writes through the transport
        self.left = total
        self.piece = self.make(size)
        self.size = size
        self.paused = False
        server.transport.registerProducer(self, True)
        server.transport.write(SSE_HEAD)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        write = self.server.transport.write
        while not self.paused and self.left > 0 and not self.server.gone:
            piece = self.piece if self.left >= self.size else self.make(self.left)
            write(piece)
            self.left -= self.size
        if self.left <= 0 and not self.paused and not self.server.gone:
            self.server.transport.unregisterProducer()
            write(ending("big"))

    def make(self, size: int) -> bytes:
        return chunked(frame("big", {"content": "z" * size}))

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = 0
        self.paused = True


class HTTPServer(Protocol):
    """Just enough HTTP/1.1: Content-Length request bodies, keep-alive, one request at a time."""

    transport: Any

    def __init__(self, options: argparse.Namespace, ticker: Ticker) -> None:
        self.options = options
        self.ticker = ticker
        self.buf = b""
        self.gone = False
        self.queued = False

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # each delta leaves when written, as a model's do

    def send(self, data: bytes) -> None:
        """
        Write now, straight to the socket: a transport ``write`` costs two ``epoll_ctl`` calls
        and a reactor turn per chunk, which at 40,000 chunks/s would make this the bottleneck.
        Once the socket is full, queue in the transport from then on (order is kept).
        """
        if not self.queued and not self.gone:
            try:
                sent = self.transport.getHandle().send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return
            if sent == len(data):
                return
            data, self.queued = data[sent:], True
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"\ncontent-length:")
            if at >= 0:
                eol = head.find(b"\r\n", at + 1)
                length = int(head[at + 16 : eol if eol >= 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
            self.handle(head.split(b" ", 2), body)

    def handle(self, line: list[bytes], body: bytes) -> None:
        if line[0] != b"post" or not line[1].endswith(b"/chat/completions"):
            self.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        request = json.loads(body or b"{}")
        model, stream = str(request.get("model", "")), bool(request.get("stream"))
        if model == "tick" and stream:
            self.ticker.add(self)
        elif model == "big" and stream:
            Big(self, self.options.big_bytes, self.options.big_chunk)
        else:
            self.send(quick(model, stream))

    def connectionLost(self, reason: object = None) -> None:
        self.gone = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.provider", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tick-chunks", type=int, default=200)
    parser.add_argument("--tick-rate", type=float, default=20.0)
    parser.add_argument("--big-bytes", type=int, default=20_000_000)
    parser.add_argument("--big-chunk", type=int, default=4096)
    options = parser.parse_args(argv)
    ticker = Ticker(options.tick_chunks, options.tick_rate)
    factory = Factory.forProtocol(lambda: HTTPServer(options, ticker))
    port = reactor.listenTCP(options.port, factory, backlog=4096, interface="127.0.0.1")
    sys.stdout.write(f"listening {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
