"""Two processes (two stores) on one state dir: per-session locks, and index lines never lost."""

from __future__ import annotations

import os

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from openclaw_twisted.agents.sessions import DiskSessionStore

from .test_group_commit import FakeThreads
from .test_sessions import turn


@implementer(IReactorTime)
class ThreadsAndClock(FakeThreads, Clock):
    """Pool jobs run when the test says; time moves when it says."""

    def __init__(self) -> None:
        FakeThreads.__init__(self)
        Clock.__init__(self)


class SessionLockTests(SynchronousTestCase):
    def test_a_turn_waits_for_the_other_process_and_can_stop_waiting(self) -> None:
        state = self.mktemp()
        reactor = ThreadsAndClock()
        one, other = DiskSessionStore(state), DiskSessionStore(state, reactor=reactor)
        release = self.successResultOf(one.lanes().acquire("k"))
        waiting = other.lanes().acquire("k")
        reactor.advance(1.0)
        self.assertNoResult(waiting)
        # Another key is not held up.
        self.successResultOf(other.lanes().acquire("another"))()
        # A session nobody keeps is held in this process only.
        self.successResultOf(other.lanes().acquire("k", shared=False))()
        release()
        reactor.advance(1.0)
        reactor.settle()
        release_other = self.successResultOf(waiting)

        gave_up = DiskSessionStore(state, reactor=reactor)
        cancelled = gave_up.lanes().acquire("k")
        self.assertNoResult(cancelled)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        release_other()
        self.successResultOf(one.lanes().acquire("k"))()

    def test_the_holder_sees_what_the_other_process_wrote(self) -> None:
        state = self.mktemp()
        one, other = DiskSessionStore(state), DiskSessionStore(state)
        self.successResultOf(one.history("main", "k", 10))
        release = self.successResultOf(other.lanes().acquire("k"))
        other.append("main", "k", turn("from", "the other"))
        release()
        self.successResultOf(one.lanes().acquire("k"))()
        self.assertEqual(
            [m.text for m in self.successResultOf(one.history("main", "k", 10))],
            ["from", "the other"],
        )
        one.append("main", "k", turn("and", "this one"))
        self.assertEqual(len(self.successResultOf(other.transcript("main", "k"))), 4)
        self.assertEqual(
            [s["sessionId"] for s in self.successResultOf(one.sessions("main"))],
            [s["sessionId"] for s in self.successResultOf(other.sessions("main"))],
        )


class IndexLogTests(SynchronousTestCase):
    def test_a_line_another_process_logged_during_our_write_is_not_skipped(self) -> None:
        state = self.mktemp()
        threads = FakeThreads()
        one = DiskSessionStore(state, reactor=threads)
        one.append("main", "first", turn("1", "a"))
        threads.settle()
        # Our index write is on its way to disk when the other process logs its new session.
        one.append("main", "ours", turn("2", "b"))
        other = DiskSessionStore(state)
        other.append("main", "theirs", turn("3", "c"))
        threads.settle()
        keys = one.sessions("main")
        threads.settle()
        self.assertEqual(
            sorted(s["key"] for s in self.successResultOf(keys)), ["first", "ours", "theirs"]
        )
        self.assertTrue(os.path.exists(os.path.join(state, "agents", "main", "locks")))
