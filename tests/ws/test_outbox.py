"""The per-connection outbox: straight through, queued while paused, cut off past the limit."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.ws.outbox import Outbox


class OutboxTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.written: list[bytes] = []
        self.overflows = 0

        def overflow() -> None:
            self.overflows += 1

        self.outbox = Outbox(self.written.append, 10, overflow)

    def test_straight_through_then_queued_in_order(self) -> None:
        self.outbox.send(b"a")
        self.assertEqual(self.written, [b"a"])
        self.outbox.pauseProducing()
        waiting = self.outbox.writable()
        self.outbox.send(b"bb")
        self.outbox.send(b"ccc")
        self.assertEqual((self.written, self.outbox.buffered), ([b"a"], 5))
        self.assertNoResult(waiting)
        self.outbox.resumeProducing()
        self.assertEqual(self.written, [b"a", b"bb", b"ccc"])
        self.assertEqual((self.outbox.buffered, self.outbox.peak), (0, 5))
        self.successResultOf(waiting)

    def test_a_write_that_pauses_again_keeps_the_rest_queued(self) -> None:
        def write(data: bytes) -> None:
            self.written.append(data)
            self.outbox.pauseProducing()

        outbox = self.outbox = Outbox(write, 100, lambda: None)
        outbox.pauseProducing()
        outbox.send(b"1")
        outbox.send(b"2")
        outbox.resumeProducing()
        self.assertEqual((self.written, outbox.buffered), ([b"1"], 1))
        self.assertNoResult(outbox.writable())
        outbox.resumeProducing()
        self.assertEqual(self.written, [b"1", b"2"])

    def test_overflow_drops_everything_once(self) -> None:
        self.outbox.pauseProducing()
        waiting = self.outbox.writable()
        self.outbox.send(b"x" * 6)
        self.assertEqual(self.overflows, 0)
        self.outbox.send(b"y" * 6)
        self.assertEqual((self.overflows, self.outbox.buffered), (1, 0))
        self.assertTrue(self.outbox.closed)
        self.successResultOf(waiting)  # a pump waiting on it goes on (and drains)
        self.outbox.send(b"z")
        self.outbox.resumeProducing()
        self.assertEqual((self.written, self.overflows), ([], 1))
        self.successResultOf(self.outbox.writable())

    def test_stop_producing_closes(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"a")
        self.outbox.stopProducing()
        self.assertEqual((self.outbox.closed, self.outbox.buffered), (True, 0))
