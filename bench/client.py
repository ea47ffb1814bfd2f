"""
Load clients that need more than ``wrk``: many concurrent SSE streams, a slow reader, and a
closed-loop request generator used when ``wrk`` is not installed. Bare sockets and ``epoll``, no
reactor, so they stay far cheaper than what they measure. Each runs in its own process:
``python -m bench.client streams|slow|load '<json options>'`` prints one JSON line of results.
"""

from __future__ import annotations

import json
import re
import resource
import select
import socket
import sys
import time
from collections import Counter
from typing import Any

#: A tick delta: a chat completion chunk's ``content``, or a Responses text ``delta``.
TICK = re.compile(rb'"(?:content|delta)":\s*"(\d+):(\d+);"')
BIG = re.compile(rb'"content":\s*"(z+)"')


def request_bytes(options: dict[str, Any], body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {options['path']} HTTP/1.1\r\nHost: {options['host']}:{options['port']}\r\n"
    if options.get("token"):
        head += f"Authorization: Bearer {options['token']}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


class Response:
    """An incremental HTTP/1.1 response parser (Content-Length or chunked), without I/O."""

    def __init__(self) -> None:
        self.buf = b""
        self.status = 0
        self.state = "head"  # then "size", "data", "crlf" (after a chunk), "end" or "done"
        self.chunked = False
        self.left = 0  # body bytes of the current chunk (or the whole body) still to come

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return the body bytes it completed."""
        self.buf += data
        out = []
        while True:
            if self.state == "head":
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, self.buf = self.buf[:end].lower(), self.buf[end + 4 :]
                self.status = int(head[9:12])
                self.chunked = b"transfer-encoding: chunked" in head
                m = re.search(rb"content-length: *(\d+)", head)
                self.left = int(m.group(1)) if m else 0
                self.state = "size" if self.chunked else "data"
            elif self.state == "size":
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    break
                self.left = int(self.buf[:eol].split(b";")[0], 16)
                self.buf = self.buf[eol + 2 :]
                self.state = "data" if self.left else "end"
            elif self.state == "data":
                take, self.buf = self.buf[: self.left], self.buf[self.left :]
                out.append(take)
                self.left -= len(take)
                if self.left:
                    break
                self.state = "crlf" if self.chunked else "done"
            elif self.state in ("crlf", "end"):  # the CRLF after a chunk / the last chunk
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.state = "size" if self.state == "crlf" else "done"
            else:
                break
        return b"".join(out)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    values.sort()

    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": values[-1]}


class Stream:
    """One ``tick`` stream: checks that deltas arrive complete and in order, times each one."""

    def __init__(self, sock: socket.socket, request: bytes) -> None:
        self.sock = sock
        self.request = request
        self.response = Response()
        self.sse = b""
        self.next = 0
        self.in_order = True
        self.finished = False

    def feed(self, data: bytes, now: int, delays: list[float]) -> bool:
        """Take ``data`` received at ``now`` (ns); True once the response has ended."""
        body = self.response.feed(data)
        if self.response.status not in (0, 200):
            return True
        frames = (self.sse + body).split(b"\n\n")
        self.sse = frames.pop()
        for f in frames:
            m = TICK.search(f)
            if m:
                index, sent = int(m.group(1)), int(m.group(2))
                self.in_order = self.in_order and index == self.next
                self.next = index + 1
                delays.append((now - sent) / 1e6)
            elif f.startswith(b"data: [DONE]"):
                self.finished = True
        return self.response.done

    def verdict(self, chunks: int) -> str:
        if self.response.status != 200:
            return f"status_{self.response.status}"
        if not self.in_order:
            return "out_of_order"
        return "ok" if self.next == chunks and self.finished else "incomplete"


def streams(options: dict[str, Any]) -> dict[str, Any]:
    """
    Open ``streams`` tick streams, ``ramp`` a second, and follow them all to their end: to
    ``port``, or round robin over ``ports`` (several gateways, figures for them all at once).
    """
    total, ramp = options["streams"], options["ramp"]
    ports = options.get("ports") or [options["port"]]
    requests = [request_bytes(dict(options, port=port), options["body"]) for port in ports]
    per_port: Counter[int] = Counter()
    poll = select.epoll()
    live: dict[int, Stream] = {}
    connecting: dict[int, Stream] = {}
    delays: list[float] = []
    results: Counter[str] = Counter()
    start = time.monotonic()
    opened = 0
    while (opened < total or live or connecting) and time.monotonic() - start < options["timeout"]:
        due = min(total, int((time.monotonic() - start) * ramp) + 1)
        for i in range(opened, due):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((options["host"], ports[i % len(ports)]))
            per_port[ports[i % len(ports)]] += 1
            connecting[sock.fileno()] = Stream(sock, requests[i % len(ports)])
            poll.register(sock.fileno(), select.EPOLLOUT)
        opened = due
        events = poll.poll(0.001 if opened < total else 0.1)
        now = time.monotonic_ns()
        for fd, _ in events:
            if fd in connecting:
                stream = live[fd] = connecting.pop(fd)
                error = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if not error:
                    stream.sock.send(stream.request)  # small: fits in an empty socket buffer
                    poll.modify(fd, select.EPOLLIN)
                    continue
                data = b""
            else:
                stream = live[fd]
                try:
                    data = stream.sock.recv(65536)
                except OSError:
                    data = b""
            if not data or stream.feed(data, now, delays):
                results[stream.verdict(options["chunks"])] += 1
                poll.unregister(fd)
                stream.sock.close()
                del live[fd]
    results["timeout"] += len(live) + len(connecting) + total - opened
    return {
        "streams": total,
        "per_port": {str(port): n for port, n in per_port.items()},
        "results": {k: v for k, v in results.items() if v},
        "chunks": len(delays),
        "delay_ms": percentiles(delays),
        "wall_s": time.monotonic() - start,
    }


def slow(options: dict[str, Any]) -> dict[str, Any]:
    """Read one ``big`` stream at ``rate`` bytes a second through a small socket buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect((options["host"], options["port"]))
    sock.sendall(request_bytes(options, options["body"]))
    response, sse, content, received = Response(), b"", 0, 0
    start = time.monotonic()
    while not response.done:
        data = sock.recv(16384)
        if not data:
            break
        received += len(data)
        frames = (sse + response.feed(data)).split(b"\n\n")
        sse = frames.pop()
        content += sum(len(m.group(1)) for f in frames if (m := BIG.search(f)))
        ahead = received / options["rate"] - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    sock.close()
    return {
        "status": response.status,
        "complete": response.done,
        "content_bytes": content,
        "wire_bytes": received,
        "wall_s": time.monotonic() - start,
    }


class Looper:
    """One closed-loop client: send, read the whole response, send again."""

    def __init__(self, sock: socket.socket, request: bytes) -> None:
        self.sock = sock
        self.request = request
        self.send()

    def send(self) -> None:
        self.response = Response()
        self.sent = time.monotonic()
        self.sock.sendall(self.request)


def load(options: dict[str, Any]) -> dict[str, Any]:
    """``connections`` closed-loop clients for ``duration`` seconds (used when wrk is missing)."""
    poll = select.epoll()
    clients: dict[int, Looper] = {}
    for i in range(options["connections"]):
        body = dict(options["body"])
        if options.get("user"):  # each client is one user, as with wrk
            body["user"] = f"{options['user']}-{i + 1}"
        sock = socket.create_connection((options["host"], options["port"]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients[sock.fileno()] = Looper(sock, request_bytes(options, body))
        poll.register(sock.fileno(), select.EPOLLIN)
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + options["duration"]
    while clients and (left := end - time.monotonic()) > 0:
        for fd, _ in poll.poll(left):
            client = clients[fd]
            data = client.sock.recv(65536)
            if not data:
                errors += 1
                poll.unregister(fd)
                del clients[fd]
                continue
            client.response.feed(data)
            if client.response.done:
                latencies.append((time.monotonic() - client.sent) * 1e3)
                errors += client.response.status != 200
                client.send()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": options["duration"],
        "latency_ms": percentiles(latencies),
    }


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mode, options = sys.argv[1], json.loads(sys.argv[2])
    result = {"streams": streams, "slow": slow, "load": load}[mode](options)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
