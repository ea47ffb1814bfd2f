"""Agent runs: events, history, per-session lanes, cancel, timeout, shutdown, transcripts."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.events import RunEvent, RunRequest, TextSoFar
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.agents.runner import AgentRunner, Run, UnknownAgent
from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.config import parse_config
from openclaw_twisted.providers.interface import Message, ProviderError, Usage
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import Script, ScriptedProvider

KEY = "agent:main:main"


class Harness:
    """A runner on a Clock with a scripted provider and sessions on disk."""

    def __init__(
        self, test: SynchronousTestCase, script: Script | None = None, **defaults: Any
    ) -> None:
        self.test = test
        self.clock = Clock()
        self.provider = ScriptedProvider(script or Script(), clock=self.clock)
        config = parse_config(
            {"agents": {"defaults": {"model": "scripted/m", **defaults}}},
            {"OPENCLAW_STATE_DIR": test.mktemp()},
        )
        self.store = DiskSessionStore(config.state_dir, now=self.clock.seconds)
        self.runner = AgentRunner(
            Roster.from_config(config), Providers.of([self.provider]), self.store, self.clock
        )

    def start(self, message: str = "hi", key: str = KEY, **kw: Any) -> Run:
        return self.runner.start(RunRequest("main", key, message, **kw))

    def events(self, run: Run) -> list[RunEvent]:
        """Every event the run has ready (the run must have ended)."""
        out = []
        while (event := self.test.successResultOf(run.next_event())) is not None:
            out.append(event)
        return out

    def transcript(self, key: str = KEY) -> list[dict[str, Any]]:
        return self.test.successResultOf(self.store.transcript("main", key))


class EventTests(SynchronousTestCase):
    def test_event_sequence(self) -> None:
        h = Harness(self)
        run = h.start()
        events = h.events(run)
        self.assertEqual([e.seq for e in events], list(range(1, len(events) + 1)))
        self.assertEqual(events[0].data, {"phase": "start", "startedAt": 0, "model": "scripted/m"})
        self.assertEqual(
            [e.data["delta"] for e in events if e.stream == "assistant"],
            ["Hello", " from", " the", " script."],
        )
        self.assertEqual(events[-2].text, "Hello from the script.")
        self.assertEqual(events[-2].to_json()["data"]["text"], "Hello from the script.")
        self.assertEqual(
            events[-1].data,
            {"phase": "end", "stopReason": "stop", "usage": {"input": 7, "output": 4, "total": 11}},
        )
        result = self.successResultOf(run.wait())
        self.assertEqual(
            (result.text, result.stop_reason, result.error),
            (h.transcript()[-1]["text"], "stop", None),
        )
        self.assertEqual(h.runner.active, {})

    def test_transcript_written_before_the_final_event(self) -> None:
        h = Harness(self)
        seen: list[int] = []
        h.runner.listeners.append(
            lambda run, e: seen.append(len(h.transcript())) if e.phase == "end" else None
        )
        h.events(h.start())
        self.assertEqual(seen, [2])

    def test_provider_refuses(self) -> None:
        """A failure before the model accepted: only the error event, nothing written."""
        h = Harness(
            self, Script(refuse=ProviderError("rate_limited", "slow down", retry_after="3"))
        )
        run = h.start()
        events = h.events(run)
        self.assertEqual(
            [e.data for e in events],
            [{"phase": "error", "error": {"kind": "rate_limited", "message": "slow down"}}],
        )
        result = self.successResultOf(run.wait())
        assert result.error is not None
        self.assertEqual(result.error.retry_after, "3")
        self.assertEqual(h.transcript(), [])

    def test_stream_breaks(self) -> None:
        """A mid-stream failure keeps the partial answer with stopReason error."""
        h = Harness(self, Script(fail=ProviderError("upstream_error", "cut"), fail_after=2))
        events = h.events(h.start())
        self.assertEqual(events[-1].data["error"]["kind"], "upstream_error")
        self.assertEqual(h.transcript()[-1]["text"], "Hello from")
        self.assertEqual(h.transcript()[-1]["stopReason"], "error")

    def test_unknown_agent(self) -> None:
        h = Harness(self)
        with self.assertRaises(UnknownAgent):
            h.runner.start(RunRequest("nobody", KEY, "hi"))

    def test_broken_listener_does_not_break_the_run(self) -> None:
        h = Harness(self)

        def bad(run: Run, e: RunEvent) -> None:
            raise RuntimeError("observer bug")

        seen: list[RunEvent] = []
        h.runner.listeners[:] = [bad, lambda run, e: seen.append(e)]
        run = h.start()
        self.assertEqual(self.successResultOf(run.wait()).stop_reason, "stop")
        self.assertEqual(seen[-1].phase, "end")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), len(seen))

    def test_not_persisted(self) -> None:
        h = Harness(self)
        h.events(h.start("one", persist=False))
        h.events(h.start("two", persist=False))
        self.assertEqual(h.transcript(), [])
        self.assertEqual(h.provider.requests[1].messages, (Message("user", "two"),))


class HistoryTests(SynchronousTestCase):
    def test_second_turn_carries_the_first(self) -> None:
        h = Harness(self)
        h.events(h.start("first"))
        h.events(h.start("second"))
        self.assertEqual(
            h.provider.requests[1].messages,
            (
                Message("user", "first"),
                Message("assistant", "Hello from the script."),
                Message("user", "second"),
            ),
        )
        self.assertEqual(h.provider.requests[0].messages, (Message("user", "first"),))

    def test_history_limit(self) -> None:
        h = Harness(self, historyLimit=3)
        for i in range(4):
            h.events(h.start(f"m{i}"))
        self.assertEqual(
            [m.text for m in h.provider.requests[3].messages],
            ["Hello from the script.", "m2", "Hello from the script.", "m3"],
        )

    def test_other_sessions_are_separate(self) -> None:
        h = Harness(self)
        h.events(h.start("first", key="a"))
        h.events(h.start("second", key="b"))
        self.assertEqual(h.provider.requests[1].messages, (Message("user", "second"),))


class LaneTests(SynchronousTestCase):
    def test_same_key_runs_one_after_the_other(self) -> None:
        h = Harness(self, Script(delta_delay=1.0))
        runs = [h.start(f"m{i}") for i in range(3)]
        self.assertEqual(len(h.provider.requests), 1)
        order: list[str] = []
        h.runner.listeners.append(
            lambda run, e: order.append(f"{run.request.message}:{e.phase}") if e.phase else None
        )
        h.clock.pump([1.0] * 20)
        self.assertEqual(order, ["m0:end", "m1:start", "m1:end", "m2:start", "m2:end"])
        self.assertEqual([m.text for m in h.provider.requests[2].messages][::2], ["m0", "m1", "m2"])
        for run in runs:
            self.assertEqual(self.successResultOf(run.wait()).stop_reason, "stop")
        self.assertEqual(len(h.runner.lanes), 0)  # type: ignore[arg-type]

    def test_different_keys_run_concurrently(self) -> None:
        h = Harness(self, Script(delta_delay=1.0))
        a, b = h.start(key="a"), h.start(key="b")
        self.assertEqual(len(h.provider.requests), 2)
        self.assertTrue(a.started and b.started)
        h.clock.pump([1.0] * 5)
        self.assertIsNotNone(a.result)
        self.assertIsNotNone(b.result)


class CancelTests(SynchronousTestCase):
    def test_cancel_mid_stream(self) -> None:
        """The provider stream is cancelled; the partial turn is kept as aborted."""
        h = Harness(self, Script(deltas=("a", "b", "c"), delta_delay=1.0))
        run = h.start()
        h.clock.advance(1.0)
        run.cancel()
        events = h.events(run)
        self.assertEqual([e.stream for e in events], ["lifecycle", "assistant", "lifecycle"])
        self.assertEqual(events[-1].data["error"]["kind"], "aborted")
        self.assertTrue(h.provider.streams[0].cancelled)
        self.assertEqual(h.transcript()[-1]["stopReason"], "aborted")
        self.assertEqual(h.transcript()[-1]["text"], "a")
        self.assertEqual(h.transcript()[-2]["text"], "hi")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_cancel_from_an_event_callback(self) -> None:
        """A consumer may cancel while the run is delivering it an event."""
        h = Harness(self, Script(deltas=("a", "b", "c")))
        run = h.runner.start(RunRequest("main", KEY, "hi"))
        h.runner.listeners.append(lambda r, e: r.cancel() if e.stream == "assistant" else None)
        run2 = h.start()
        self.assertEqual(self.successResultOf(run.wait()).stop_reason, "stop")
        result = self.successResultOf(run2.wait())
        self.assertEqual((result.stop_reason, result.text), ("aborted", "a"))
        self.assertTrue(h.provider.streams[1].cancelled)

    def test_cancel_while_waiting_in_the_lane(self) -> None:
        h = Harness(self, Script(delta_delay=1.0))
        first, queued = h.start("first"), h.start("queued")
        queued.cancel()
        result = self.successResultOf(queued.wait())
        assert result.error is not None
        self.assertEqual(result.error.kind, "aborted")
        self.assertEqual([e.phase for e in h.events(queued)], ["error"])
        h.clock.pump([1.0] * 10)
        self.assertEqual(self.successResultOf(first.wait()).stop_reason, "stop")
        self.assertEqual(len(h.provider.requests), 1)
        self.assertEqual([r["text"] for r in h.transcript()], ["first", "Hello from the script."])
        after = h.start("after")  # the lane is not stuck
        h.clock.pump([1.0] * 10)
        self.assertEqual(h.events(after)[-1].phase, "end")
        self.assertEqual(len(h.transcript()), 4)

    def test_cancel_while_waiting_for_the_provider(self) -> None:
        h = Harness(self, Script(accept_delay=5.0))
        run = h.start()
        h.clock.advance(1.0)
        run.cancel()
        self.assertEqual([e.phase for e in h.events(run)], ["error"])
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertFalse(run.started)
        self.assertEqual(h.transcript()[-1]["stopReason"], "aborted")
        self.assertEqual(h.transcript()[-1]["text"], "")

    def test_cancel_twice_and_after_the_end(self) -> None:
        h = Harness(self)
        run = h.start()
        run.cancel()
        run.cancel("shutdown")
        self.assertEqual(self.successResultOf(run.wait()).stop_reason, "stop")

    def test_cancel_while_the_consumer_is_not_pulling(self) -> None:
        """Backpressure: a run stalled on a full buffer still cancels."""
        h = Harness(self, Script(deltas=tuple("x" * 40)))
        run = h.start()
        self.assertIsNone(run.result)
        self.assertLess(h.provider.streams[0].sent, 40)
        run.cancel()
        self.assertTrue(h.provider.streams[0].cancelled)
        self.assertEqual(h.events(run)[-1].phase, "error")


class TimeoutTests(SynchronousTestCase):
    def test_timeout_mid_stream(self) -> None:
        h = Harness(self, Script(hang=True), timeoutSeconds=10)
        run = h.start()
        h.clock.advance(9.9)
        self.assertIsNone(run.result)
        h.clock.advance(0.1)
        result = self.successResultOf(run.wait())
        assert result.error is not None
        self.assertEqual(result.error.kind, "agent_timeout")
        self.assertIn("10s", result.error.message)
        self.assertTrue(h.provider.streams[0].cancelled)
        self.assertEqual(h.transcript()[-1]["stopReason"], "aborted")

    def test_timeout_before_accept(self) -> None:
        h = Harness(self, Script(accept_delay=100), timeoutSeconds=10)
        run = h.start()
        h.clock.advance(10)
        self.assertEqual(h.events(run)[-1].data["error"]["kind"], "agent_timeout")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timer_starts_when_the_turn_does(self) -> None:
        """Time spent queued behind another turn does not count against the run."""
        h = Harness(self, Script(delta_delay=2.0), timeoutSeconds=15)
        first, second = h.start(), h.start()
        h.clock.pump([1.0] * 40)
        self.assertEqual(self.successResultOf(first.wait()).stop_reason, "stop")
        self.assertEqual(self.successResultOf(second.wait()).stop_reason, "stop")

    def test_finished_run_leaves_no_timer(self) -> None:
        h = Harness(self)
        h.events(h.start())
        self.assertEqual(h.clock.getDelayedCalls(), [])


class ShutdownTests(SynchronousTestCase):
    def test_grace_then_cancel(self) -> None:
        h = Harness(self, Script(hang=True))
        hung, queued = h.start(), h.start("queued")
        done = h.runner.shutdown(5)
        h.clock.advance(4)
        self.assertNoResult(done)
        h.clock.advance(1)
        self.successResultOf(done)
        for run in (hung, queued):
            result = self.successResultOf(run.wait())
            assert result.error is not None
            self.assertEqual(result.error.kind, "shutdown")
        self.assertEqual(h.transcript()[-1]["stopReason"], "aborted")
        self.assertEqual(len(h.transcript()), 2, "the queued turn never began")

    def test_runs_finish_within_grace(self) -> None:
        h = Harness(self, Script(delta_delay=1.0))
        run = h.start()
        done = h.runner.shutdown(10)
        h.clock.pump([1.0] * 5)
        self.successResultOf(done)
        self.assertEqual(self.successResultOf(run.wait()).stop_reason, "stop")
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_no_new_runs_after_shutdown(self) -> None:
        h = Harness(self)
        self.successResultOf(h.runner.shutdown(10))
        run = h.start()
        self.assertEqual(h.events(run)[-1].data["error"]["kind"], "shutdown")
        self.assertEqual(h.provider.requests, [])
        self.assertEqual(h.runner.active, {})


class UsageTests(SynchronousTestCase):
    def test_usage_recorded(self) -> None:
        h = Harness(self, Script(usage=Usage(100, 5), stop_reason="length"))
        h.events(h.start())
        self.assertEqual(h.transcript()[-1]["usage"], {"input": 100, "output": 5, "total": 105})
        self.assertEqual(h.transcript()[-1]["stopReason"], "length")


class FallbackCancelTests(SynchronousTestCase):
    def test_cancel_while_the_primary_is_pending_tries_no_fallback(self) -> None:
        clock = Clock()
        primary = ScriptedProvider(Script(accept_delay=5.0), name="a", clock=clock)
        fallback = ScriptedProvider(name="b", clock=clock)
        config = parse_config(
            {"agents": {"defaults": {"model": {"primary": "a/m", "fallbacks": ["b/m"]}}}},
            {"OPENCLAW_STATE_DIR": self.mktemp()},
        )
        store = DiskSessionStore(config.state_dir)
        runner = AgentRunner(
            Roster.from_config(config), Providers.of([primary, fallback]), store, clock
        )
        run = runner.start(RunRequest("main", KEY, "hi"))
        clock.advance(1)
        run.cancel()
        result = self.successResultOf(run.wait())
        assert result.error is not None
        self.assertEqual(result.error.kind, "aborted")
        self.assertEqual(fallback.requests, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_fallback_after_refusal_gets_the_history(self) -> None:
        clock = Clock()
        primary = ScriptedProvider(
            Script(refuse=ProviderError("unavailable", "down")), name="a", clock=clock
        )
        fallback = ScriptedProvider(name="b", clock=clock)
        config = parse_config(
            {"agents": {"defaults": {"model": {"primary": "a/m", "fallbacks": ["b/m"]}}}},
            {"OPENCLAW_STATE_DIR": self.mktemp()},
        )
        runner = AgentRunner(
            Roster.from_config(config),
            Providers.of([primary, fallback]),
            DiskSessionStore(config.state_dir),
            clock,
        )
        for text in ("one", "two"):
            self.assertEqual(
                self.successResultOf(
                    runner.start(RunRequest("main", KEY, text)).wait()
                ).stop_reason,
                "stop",
            )
        self.assertEqual(len(fallback.requests[1].messages), 3)
        self.assertEqual(fallback.requests[1].model, "m")


class BrokenStoreTests(SynchronousTestCase):
    def test_store_failures_end_the_run_cleanly(self) -> None:
        """A store that cannot read or write: an internal_error event, the lane moves on."""
        h = Harness(self)

        def broken(*args: object) -> None:
            raise OSError("disk on fire")

        h.store.history = broken  # type: ignore[method-assign]
        run = h.start()
        self.assertEqual(h.events(run)[-1].data["error"]["kind"], "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        h.store.history = lambda *a: succeed([])  # type: ignore[method-assign]
        h.store.append = broken  # type: ignore[method-assign]
        run = h.start()
        events = h.events(run)
        self.assertEqual(events[-1].data["error"]["kind"], "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(h.runner.lanes), 0)  # type: ignore[arg-type]
        self.assertEqual(h.runner.active, {})


class CumulativeTextTests(SynchronousTestCase):
    def test_each_event_sees_the_text_up_to_itself_without_copying_it(self) -> None:

        parts = ["a", "b"]
        first, second = TextSoFar(parts, 1), TextSoFar(parts, 2)
        parts.append("c")
        self.assertEqual((str(first), str(second)), ("a", "ab"))
        self.assertEqual(str(TextSoFar(parts, 3)), "abc")


class KeepTextTests(SynchronousTestCase):
    def test_a_run_that_keeps_nothing_holds_no_answer(self) -> None:
        h = Harness(self)
        run = h.start(persist=False, keep_text=False)
        assistant = [e for e in h.events(run) if e.stream == "assistant"]
        self.assertEqual([e.text for e in assistant], ["Hello", " from", " the", " script."])
        self.assertEqual(
            [e.to_json()["data"] for e in assistant][1], {"delta": " from", "text": " from"}
        )
        result = self.successResultOf(run.wait())
        self.assertEqual((result.text, result.stop_reason), ("", "stop"))

    def test_a_persisted_run_always_keeps_its_answer(self) -> None:
        h = Harness(self)
        run = h.start(keep_text=False)
        self.assertEqual(h.events(run)[-2].text, "Hello from the script.")
        self.assertEqual(self.successResultOf(run.wait()).text, "Hello from the script.")
        self.assertEqual(h.transcript()[-1]["text"], "Hello from the script.")
