"""Sessions written off the reactor thread: group commit, order, failures, flush, the runner."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from openclaw_twisted.agents import sessions
from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.agents.runner import AgentRunner
from openclaw_twisted.agents.sessions import WRITERS, DiskSessionStore
from openclaw_twisted.config import parse_config
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import Script, ScriptedProvider

from .test_sessions import turn

KEY = "agent:main:main"
Call = tuple[Callable[..., Any], tuple[Any, ...]]


@implementer(IReactorThreads, IReactorFromThreads)
class FakeThreads:
    """``callInThread`` jobs wait until the test runs them; so do their ``callFromThread``s."""

    def __init__(self) -> None:
        self.jobs: list[Call] = []
        self.replies: list[Call] = []

    def callInThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.jobs.append((f, args))

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.replies.append((f, args))

    def work(self, n: int = 1) -> None:
        """Run the first ``n`` jobs (as a pool thread would), not yet their replies."""
        for _ in range(n):
            f, args = self.jobs.pop(0)
            f(*args)

    def reply(self) -> None:
        while self.replies:
            f, args = self.replies.pop(0)
            f(*args)

    def settle(self) -> None:
        while self.jobs or self.replies:
            self.work(len(self.jobs))
            self.reply()


class ThreadedStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.threads = FakeThreads()
        self.state = self.mktemp()
        self.store = DiskSessionStore(self.state, reactor=self.threads)

    def path(self, key: str = KEY) -> str:
        sid = {r["key"]: r["sessionId"] for r in self.successResultOf(self.store.sessions("main"))}[
            key
        ]
        return os.path.join(self.state, "agents", "main", "sessions", sid + ".jsonl")

    def on_disk(self, key: str = KEY) -> list[dict[str, Any]]:
        return self.successResultOf(DiskSessionStore(self.state).transcript("main", key))

    def test_nothing_blocks_the_caller_and_the_deferred_fires_once_durable(self) -> None:
        d = self.store.append("main", KEY, turn("q", "a"))
        assert d is not None
        self.assertNoResult(d)
        self.assertFalse(os.path.exists(self.path()))
        # Reads see the turn at once (the next turn's history).
        self.assertEqual(
            [r["text"] for r in self.successResultOf(self.store.transcript("main", KEY))],
            ["q", "a"],
        )
        self.threads.work(2)  # the transcript and the new session's index entry
        self.assertEqual([r["text"] for r in self.on_disk()], ["q", "a"])
        self.assertNoResult(d)
        self.threads.reply()
        self.assertIsNone(self.successResultOf(d))

    def test_appends_during_an_fsync_share_the_next_one_in_order(self) -> None:
        first = self.store.append("main", KEY, turn("1", "a"))
        self.threads.settle()
        self.successResultOf(first)
        d1 = self.store.append("main", KEY, turn("2", "b"))
        self.assertEqual(len(self.threads.jobs), 1)
        # While that write is in flight, three more turns arrive: one job, not three.
        later = [self.store.append("main", KEY, turn(str(n), "c")) for n in (3, 4, 5)]
        self.assertEqual(len(self.threads.jobs), 1)
        self.threads.work()
        self.threads.reply()
        self.successResultOf(d1)
        for d in later:
            self.assertNoResult(d)
        self.assertEqual(len(self.threads.jobs), 1)
        self.threads.work()
        self.threads.reply()
        for d in later:
            self.successResultOf(d)
        users = [r["text"] for r in self.on_disk() if r["role"] == "user"]
        self.assertEqual(users, ["1", "2", "3", "4", "5"])

    def test_files_are_written_in_parallel_up_to_a_limit(self) -> None:
        for n in range(WRITERS + 3):
            self.store.append("main", f"k{n}", turn("q", "a"))
        self.assertEqual(len(self.threads.jobs), WRITERS)
        # When a job ends, the files that waited meanwhile go to the pool in one job.
        self.threads.work()
        self.threads.reply()
        self.assertEqual(len(self.threads.jobs), WRITERS)
        _, (batch,) = self.threads.jobs[-1]
        self.assertGreater(len(batch), 1)
        self.threads.settle()
        self.assertEqual(len(self.successResultOf(self.store.sessions("main"))), WRITERS + 3)
        for n in range(WRITERS + 3):
            self.assertEqual(len(self.on_disk(f"k{n}")), 2)

    def test_a_failed_write_fails_the_append_and_the_next_one_reads_the_disk(self) -> None:
        first = self.store.append("main", KEY, turn("1", "a"))
        self.threads.settle()
        self.successResultOf(first)

        def full(path: str, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        self.patch(sessions, "_append", full)
        d = self.store.append("main", KEY, turn("2", "b"))
        assert d is not None
        self.threads.settle()
        self.failureResultOf(d, OSError)
        # The turn that never reached the disk is not served from the cache either.
        read = self.store.transcript("main", KEY)
        self.threads.settle()  # read from the disk, on a pool thread
        self.assertEqual([r["text"] for r in self.successResultOf(read)], ["1", "a"])

    def test_flush_waits_for_every_write(self) -> None:
        d = self.store.append("main", KEY, turn("1", "a"))
        flushed = self.store.flush()
        assert flushed is not None
        self.assertNoResult(flushed)
        self.threads.settle()
        self.successResultOf(flushed)
        self.successResultOf(d)
        self.assertEqual(len(self.on_disk()), 2)
        self.assertIsNone(self.successResultOf(self.store.flush()))

    def test_without_a_reactor_append_is_synchronous(self) -> None:
        store = DiskSessionStore(self.mktemp())
        # Written on the caller's thread: the Deferreds have fired on return.
        self.assertIsNone(self.successResultOf(store.append("main", KEY, turn("1", "a"))))
        self.assertIsNone(self.successResultOf(store.flush()))

    def test_the_reactor_must_have_threads(self) -> None:
        with self.assertRaises(TypeError):
            DiskSessionStore(self.mktemp(), reactor=Clock())  # type: ignore[arg-type]


class RunnerWaitsForTheDiskTests(SynchronousTestCase):
    def test_final_event_only_once_the_transcript_is_durable(self) -> None:
        clock, threads = Clock(), FakeThreads()
        config = parse_config(
            {"agents": {"defaults": {"model": "scripted/m"}}},
            {"OPENCLAW_STATE_DIR": self.mktemp()},
        )
        store = DiskSessionStore(config.state_dir, now=clock.seconds, reactor=threads)
        provider = ScriptedProvider(Script(), clock=clock)
        runner = AgentRunner(Roster.from_config(config), Providers.of([provider]), store, clock)
        run = runner.start(RunRequest("main", KEY, "hi"))
        events = []
        while (d := run.next_event()).called:
            event = self.successResultOf(d)
            if event is None:
                break
            events.append(event)
        self.assertEqual(events[-1].stream, "assistant")
        self.assertNoResult(run.wait())
        self.assertEqual(runner.active.keys(), {run.run_id})
        threads.settle()
        self.assertEqual(self.successResultOf(d).data["phase"], "end")  # type: ignore[union-attr]
        self.assertEqual(self.successResultOf(run.wait()).error, None)
        on_disk = self.successResultOf(DiskSessionStore(config.state_dir).transcript("main", KEY))
        self.assertEqual([r["role"] for r in on_disk], ["user", "assistant"])
