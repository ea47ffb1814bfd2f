"""HTTPModelStream with a fake body transport: pause/resume, the end grace, cancel, cuts."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
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


FINISH = b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n'


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
        self.feed(chunk("a") + FINISH + b'data: {"choices": [], "usage": {"prompt_tokens": 4, ')
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
        self.feed(FINISH + b"data: [DONE]\n\n")
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
        """A reset mid-body is ``unavailable`` (CONTRACT §4.6), told as a sentence, no repr."""
        self.feed(chunk("a"))
        self.end(ResponseFailed([Failure(ConnectionLost("reset by peer"))]))
        self.assertEqual(self.successResultOf(self.stream.next()), TextDelta("a"))
        error = self.failureResultOf(self.stream.next(), ProviderError).value
        self.assertEqual(error.kind, "unavailable")
        self.assertEqual(error.message, "upstream closed the connection mid-answer")

    def test_clean_end_without_finish_is_a_cut(self) -> None:
        """No finish reason and no [DONE]: the server went away (SIGTERM), not a stop."""
        self.feed(chunk("a"))
        self.end()
        self.assertEqual(self.successResultOf(self.stream.next()), TextDelta("a"))
        error = self.failureResultOf(self.stream.next(), ProviderError).value
        self.assertEqual(
            (error.kind, error.message),
            ("unavailable", "upstream closed the connection mid-answer"),
        )

    def test_bare_done_is_an_error(self) -> None:
        """[DONE] without a finish reason (an interrupted llama-cpp-python answer)."""
        self.feed(chunk("a") + b"data: [DONE]\n\n")
        self.assertEqual(self.successResultOf(self.stream.next()), TextDelta("a"))
        error = self.failureResultOf(self.stream.next(), ProviderError).value
        self.assertEqual(error.kind, "upstream_error")
        self.assertIn("no finish reason", error.message)

    def test_finish_reason_anywhere_wins(self) -> None:
        """A finish reason before the usage chunk; the body then ends without [DONE]."""
        self.feed(chunk("a") + b'data: {"choices": [{"delta": {}, "finish_reason": "length"}]}')
        self.feed(b'\n\ndata: {"choices": [], "usage": {"prompt_tokens": 2}}\n\n')
        self.end()
        self.assertEqual(self.successResultOf(self.stream.next()), TextDelta("a"))
        self.assertEqual(self.successResultOf(self.stream.next()), Finish("length", Usage(2, 0)))

    def test_no_usage_is_unknown(self) -> None:
        self.feed(FINISH + b"data: [DONE]\n\n")
        finish = self.successResultOf(self.stream.next())
        self.assertEqual(finish, Finish("stop", Usage()))
        assert isinstance(finish, Finish)
        self.assertIsNone(finish.usage.to_json())

    def test_first_event(self) -> None:
        """first_event() waits for a delta (not the role chunk), then fires at once."""
        ready = self.stream.first_event(5.0)
        self.feed(b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n')
        self.assertNoResult(ready)
        self.feed(chunk("a"))
        self.successResultOf(ready)
        self.successResultOf(self.stream.first_event(5.0))

    def test_first_event_fails_with_the_cut(self) -> None:
        ready = self.stream.first_event(5.0)
        self.end(ResponseFailed([Failure(ConnectionLost("reset by peer"))]))
        error = self.failureResultOf(ready, ProviderError).value
        self.assertEqual(error.message, "upstream closed the connection before answering")

    def test_first_event_gives_up_waiting(self) -> None:
        """A model slow to begin gets its stream handed over after the wait all the same."""
        ready = self.stream.first_event(5.0)
        self.clock.advance(4.9)
        self.assertNoResult(ready)
        self.clock.advance(0.1)
        self.successResultOf(ready)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_first_event_cancelled_closes(self) -> None:
        ready = self.stream.first_event(5.0)
        ready.cancel()
        self.failureResultOf(ready, CancelledError)
        self.assertEqual(self.response.transport.producerState, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_error_messages_redacted(self) -> None:
        self.feed(b'data: {"error": {"message": "bad key sk-secret"}}\n\n')
        error = self.failureResultOf(self.stream.next(), ProviderError).value
        self.assertNotIn("sk-secret", error.message)
        self.assertNotIn("sk-secret", str(error))
        self.assertEqual(self.response.transport.producerState, "stopped")

    def test_events_after_done_ignored(self) -> None:
        self.feed(FINISH + b"data: [DONE]\n\ndata: not json\n\n")
        self.assertIsInstance(self.successResultOf(self.stream.next()), Finish)
        self.end()
        self.assertIsNone(self.successResultOf(self.stream.next()))
