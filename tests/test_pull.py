"""PullQueue: the backpressure mechanism under every stream."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted._pull import PullQueue


class PullQueueTests(SynchronousTestCase):
    def test_pauses_over_high_and_resumes_at_low(self) -> None:
        calls: list[str] = []
        q: PullQueue[int] = PullQueue(
            high=3,
            low=1,
            pause=lambda: calls.append("pause"),
            resume=lambda: calls.append("resume"),
        )
        for i in range(4):
            q.put(i)
        self.assertEqual(calls, ["pause"])
        self.assertEqual(self.successResultOf(q.get()), 0)
        self.assertEqual(self.successResultOf(q.get()), 1)
        self.assertEqual(calls, ["pause"])
        self.assertEqual(self.successResultOf(q.get()), 2)
        self.assertEqual(calls, ["pause", "resume"])

    def test_waiting_consumer_gets_item_directly(self) -> None:
        q: PullQueue[str] = PullQueue()
        d = q.get()
        self.assertNoResult(d)
        q.put("x")
        self.assertEqual(self.successResultOf(d), "x")

    def test_error_delivered_after_queued_items(self) -> None:
        q: PullQueue[int] = PullQueue()
        q.put(1)
        q.fail(ValueError("boom"))
        self.assertEqual(self.successResultOf(q.get()), 1)
        self.failureResultOf(q.get(), ValueError)

    def test_finish_then_none(self) -> None:
        q: PullQueue[int] = PullQueue()
        d = q.get()
        q.finish()
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(q.get()))

    def test_room(self) -> None:
        q: PullQueue[int] = PullQueue(high=4, low=1)
        for i in range(3):
            q.put(i)
        room = q.room()
        self.assertNoResult(room)
        q.get()
        self.assertNoResult(room)
        q.get()
        self.successResultOf(room)

    def test_cancelled_get_frees_the_consumer_slot(self) -> None:
        q: PullQueue[int] = PullQueue()
        d = q.get()
        d.cancel()
        self.failureResultOf(d)
        q.put(5)
        self.assertEqual(self.successResultOf(q.get()), 5)
