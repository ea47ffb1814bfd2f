"""HTTPModelStream with a fake body transport: pause/resume, the end grace, cancel, cuts."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed

from openclaw_twisted.providers._http import END_GRACE, HIGH_WATER, LOW_WATER, HTTPModelStream
from openclaw_twisted.providers.interface import Finish, ProviderError, TextDelta, Usage
from openclaw_twisted.providers.openai import ChunkDecoder


def chunk(text: str) -> bytes:
    return b'data: {"choices": [{"delta": {"content": "%s"}}]}\n\n' % text.encode()


class FakeResponse:
    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class StreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.response = FakeResponse()
        self.stream = HTTPModelStream(
            self.response,  # type: ignore[arg-type]
            ChunkDecoder("upstream"),
            self.clock,
            "upstream",
            ("sk-secret",),
        )

    def feed(self, data: bytes) -> None:
        self.response.protocol.dataReceived(data)

    def end(self, reason: BaseException | None = None) -> None:
        self.response.protocol.connectionLost(Failure(reason or ResponseDone()))

    def test_pause_and_resume(self) -> None:
        transport = self.response.transport
        for i in range(HIGH_WATER):
            self.feed(chunk(str(i)))
        self.assertEqual(transport.producerState, "producing")
        self.feed(chunk("over"))
        self.assertEqual(transport.producerState, "paused")
        for i in range(HIGH_WATER + 1 - LOW_WATER - 1):
            self.assertEqual(self.successResultOf(self.stream.next()), TextDelta(str(i)))
        self.assertEqual(transport.producerState, "paused")
        self.successResultOf(self.stream.next())
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual((self.stream.pauses, self.stream.resumes), (1, 1))

    def test_done_then_body_end(self) -> None:
        self.feed(chunk("a") + b'data: {"choices": [], "usage": {"prompt_tokens": 4, ')
        self.feed(b'"completion_tokens": 1}}\n\ndata: [DONE]\n\n')
        self.assertEqual(self.successResultOf(self.stream.next()), TextDelta("a"))
        self.assertEqual(self.successResultOf(self.stream.next()), Finish("stop", Usage(4, 1)))
        pending = self.stream.next()
        self.assertNoResult(pending)
        self.end()
        self.assertIsNone(self.successResultOf(pending))
        self.stream.cancel()
        self.assertEqual(self.response.transport.producerState, "producing")  # left for reuse

    def test_done_without_body_end(self) -> None:
        """After [DONE] a body that does not end is closed after a grace period."""
        self.feed(b"data: [DONE]\n\n")
        self.assertIsInstance(self.successResultOf(self.stream.next()), Finish)
        pending = self.stream.next()
        self.clock.advance(END_GRACE)
        self.assertIsNone(self.successResultOf(pending))
        self.assertEqual(self.response.transport.producerState, "stopped")

    def test_cancel_closes_and_ends_waiting_consumer(self) -> None:
        pending = self.stream.next()
        self.stream.cancel()
        self.assertIsNone(self.successResultOf(pending))
        self.assertEqual(self.response.transport.producerState, "stopped")
        self.stream.cancel()  # idempotent

    def test_cut(self) -> None:
        self.feed(chunk("a"))
        self.end(ResponseFailed([Failure(ConnectionLost("reset by peer"))]))
        self.assertEqual(self.successResultOf(self.stream.next()), TextDelta("a"))
        error = self.failureResultOf(self.stream.next(), ProviderError).value
        self.assertEqual(error.kind, "upstream_error")

    def test_error_messages_redacted(self) -> None:
        self.feed(b'data: {"error": {"message": "bad key sk-secret"}}\n\n')
        error = self.failureResultOf(self.stream.next(), ProviderError).value
        self.assertNotIn("sk-secret", error.message)
        self.assertNotIn("sk-secret", str(error))
        self.assertEqual(self.response.transport.producerState, "stopped")

    def test_events_after_done_ignored(self) -> None:
        self.feed(b"data: [DONE]\n\ndata: not json\n\n")
        self.assertIsInstance(self.successResultOf(self.stream.next()), Finish)
        self.end()
        self.assertIsNone(self.successResultOf(self.stream.next()))
