"""Hardening helpers: a log capture, an in-memory WebSocket client, hypothesis settings."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from hypothesis import HealthCheck, settings
from twisted.internet.error import ConnectionDone
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ..web.memory import MemoryClient, Response, parse_response

#: Examples per property in CI; ``OPENCLAW_FUZZ_EXAMPLES=5000`` (and a random seed) for the
#: longer run described in the README.
FUZZ_EXAMPLES = int(os.environ.get("OPENCLAW_FUZZ_EXAMPLES", "0")) or None


def fuzz_settings(ci_examples: int) -> settings:
    """CI: derandomized (never flaky), no example database; the long run: random, many."""
    long_run = FUZZ_EXAMPLES is not None
    return settings(
        max_examples=FUZZ_EXAMPLES or ci_examples,
        derandomize=not long_run,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=long_run,
    )


@implementer(ILogObserver)
class LogCapture:
    """Every log event while installed; ``failures()`` are the ``log.failure`` ones."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def install(self, test: SynchronousTestCase) -> LogCapture:
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)
        return self

    def failures(self) -> list[str]:
        return [
            f"{formatEvent(e)}\n{e['log_failure'].getTraceback()}"
            for e in self.events
            if "log_failure" in e
        ]

    def text(self) -> str:
        """Every event as it would be written, tracebacks included."""
        out = []
        for e in self.events:
            out.append(formatEvent(e))
            if "log_failure" in e:
                out.append(e["log_failure"].getTraceback())
        return "\n".join(out)


def assert_error_envelope(test: SynchronousTestCase, r: Response) -> dict[str, Any]:
    """``r`` is a JSON error envelope as CONTRACT §4.1 describes; its ``error``."""
    test.assertEqual(r.header("content-type"), "application/json; charset=utf-8", r.body)
    body = r.json()
    test.assertEqual(set(body), {"error"}, body)
    error: dict[str, Any] = body["error"]
    test.assertEqual(set(error), {"message", "type", "param", "code"}, error)
    test.assertIsInstance(error["message"], str)
    test.assertIsInstance(error["type"], str)
    return error


# ---------------------------------------------------------------------------------------
# WebSocket in memory: the gateway's own Site over a StringTransport, frames by hand.

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def client_frame(payload: bytes, opcode: int = TEXT, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The (opcode, payload) of each complete unmasked server frame in ``data``; bytes used."""
    frames = []
    used = 0
    while len(data) >= 2:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        at = 2
        if n == 126:
            n, at = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, at = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < at + n:
            break
        frames.append((opcode, data[at : at + n]))
        data = data[at + n :]
        used += at + n
    return frames, used


class MemoryWebSocket:
    """A WebSocket connection to a gateway's Site, in memory."""

    def __init__(self, client: MemoryClient) -> None:
        self.client = client
        transport: Any = client.transport
        transport.protocol = client.channel  # Autobahn's takeover looks here
        client.send(UPGRADE)
        head = parse_response(transport.value())
        assert head is not None and head.status == 101, transport.value()
        self._offset = transport.value().index(b"\r\n\r\n") + 4
        self.protocol: Any = transport.protocol
        self.closed = False
        #: The server sent a close frame (or dropped the connection).
        self.closing = False

    def send(self, payload: bytes, opcode: int = TEXT) -> None:
        if not self.closed:
            self.protocol.dataReceived(client_frame(payload, opcode))
            self._check_closed()

    def send_json(self, frame: Any) -> None:
        self.send(json.dumps(frame).encode())

    def _check_closed(self) -> None:
        if self.client.transport.disconnecting and not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def received(self) -> list[tuple[int, bytes]]:
        """Every frame the server sent since the last call."""
        data = self.client.transport.value()
        frames, used = server_frames(data[self._offset :])
        self._offset += used
        self.closing = self.closing or self.closed or any(op == CLOSE for op, _ in frames)
        return frames

    def messages(self) -> list[Any]:
        """The JSON text frames since the last call (close frames left out)."""
        return [json.loads(p) for op, p in self.received() if op == TEXT]

    def close(self) -> None:
        if not self.closed:
            self.send(b"\x03\xe8", CLOSE)
            if not self.closed:
                self.closed = True
                self.protocol.connectionLost(Failure(ConnectionDone()))
