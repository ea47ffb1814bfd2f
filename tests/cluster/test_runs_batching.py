"""A run's registry entry and events reach Redis in as few commands as the batching allows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.events import (
    RunEnded,
    RunFailed,
    RunStarted,
    TextDelta,
    TextSoFar,
    ToolStarted,
)
from openclaw_twisted.agents.runner import RunError
from openclaw_twisted.cluster._runs import CHANNEL, PUBLISH_INTERVAL, ClusterRuns
from openclaw_twisted.providers.interface import ToolCall, Usage


@attrs.define
class Recording:
    """An IRedis that answers every command at once and keeps what it was sent."""

    commands: list[tuple[str, list[str], list[Any]]] = attrs.Factory(list)

    def execute(self, *args: Any) -> Deferred[Any]:
        self.commands.append(("execute", [], list(args)))
        return succeed(None)

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Deferred[Any]:
        self.commands.append(("eval", list(keys), list(args)))
        return succeed(0)

    def close(self) -> Deferred[None]:
        return succeed(None)


class Bus:
    def unsubscribe(self, channel: str, receiver: Any) -> Deferred[None]:
        return succeed(None)


@attrs.define
class FakeRun:
    run_id: str = "r1"
    session_key: str = "agent:main:main"

    def wait(self) -> Deferred[Any]:
        return Deferred()


def entry(args: list[Any]) -> dict[str, Any]:
    return dict(json.loads(args[0]))


def published(args: list[Any]) -> list[dict[str, Any]]:
    """The event payloads a script call publishes, in order."""
    messages = [json.loads(m) for m in args[2:]]
    assert all(m["t"] == "event" and m["gw"] == "gw-a" for m in messages)
    return [m["p"] for m in messages]


class BatchingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = Recording()
        self.runs = ClusterRuns(self.redis, None, self.clock, gateway_id="gw-a")  # type: ignore[arg-type]
        self.run = FakeRun()
        parts: list[str] = []
        self.seq = 0

        def delta(text: str) -> TextDelta:
            parts.append(text)
            return TextDelta(
                "r1", self.next(), 0, self.run.session_key, text, TextSoFar(parts, len(parts))
            )

        self.delta = delta

    def next(self) -> int:
        self.seq += 1
        return self.seq

    def started(self) -> RunStarted:
        return RunStarted("r1", self.next(), 0, self.run.session_key, 0, "p/m")

    def test_a_short_run_is_two_commands_its_events_with_its_end(self) -> None:
        self.runs._started(self.run)  # type: ignore[arg-type]
        for event in (self.started(), self.delta("a"), self.delta("b"), self.delta("c")):
            self.runs.observe(self.run, event)  # type: ignore[arg-type]
        end = RunEnded("r1", self.next(), 0, self.run.session_key, "stop", Usage())
        self.runs.observe(self.run, end)  # type: ignore[arg-type]
        self.assertEqual(len(self.redis.commands), 2)
        (_, keys, first), (_, _, last) = self.redis.commands
        self.assertEqual(keys, ["openclaw:run:r1", CHANNEL, "openclaw:gateway:gw-a"])
        self.assertEqual(entry(first)["sessionKey"], self.run.session_key)
        self.assertEqual(published(first), [])
        self.assertEqual(entry(last)["outcome"], {"stopReason": "stop"})
        self.assertIn("endedAt", entry(last))
        events = published(last)
        self.assertEqual([e["stream"] for e in events], ["lifecycle", "assistant", "lifecycle"])
        self.assertEqual(events[1]["data"], {"delta": "abc"})
        self.assertEqual(events[1]["seq"], 4)
        # Nothing is left to fire later.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_long_run_publishes_once_an_interval_in_order(self) -> None:
        self.runs._started(self.run)  # type: ignore[arg-type]
        self.runs.observe(self.run, self.started())  # type: ignore[arg-type]
        self.runs.observe(self.run, self.delta("a"))  # type: ignore[arg-type]
        self.assertEqual(len(self.redis.commands), 1)
        self.clock.advance(PUBLISH_INTERVAL)
        self.assertEqual(len(self.redis.commands), 2)
        self.assertEqual(
            [e["stream"] for e in published(self.redis.commands[1][2])], ["lifecycle", "assistant"]
        )
        # A tool's event splits the deltas around it, in order.
        for event in (
            self.delta("b"),
            ToolStarted("r1", self.next(), 0, self.run.session_key, ToolCall("c1", "read")),
            self.delta("c"),
        ):
            self.runs.observe(self.run, event)  # type: ignore[arg-type]
        self.clock.advance(PUBLISH_INTERVAL)
        events = published(self.redis.commands[2][2])
        self.assertEqual([e["stream"] for e in events], ["assistant", "tool", "assistant"])
        self.assertEqual([events[0]["data"], events[2]["data"]], [{"delta": "b"}, {"delta": "c"}])
        self.clock.advance(PUBLISH_INTERVAL)
        self.assertEqual(len(self.redis.commands), 3)  # nothing new, nothing sent

    def test_a_failed_run_is_entered_with_its_error(self) -> None:
        self.runs._started(self.run)  # type: ignore[arg-type]
        error = RunError("provider_unavailable", "down")
        self.runs.observe(self.run, RunFailed("r1", self.next(), 0, self.run.session_key, error))  # type: ignore[arg-type]
        last = self.redis.commands[-1][2]
        self.assertEqual(entry(last)["outcome"], {"error": error.to_json()})
        self.assertEqual([e["data"]["phase"] for e in published(last)], ["error"])

    def test_detaching_sends_what_is_held_and_leaves_no_timer(self) -> None:
        self.runs.bus = Bus()  # type: ignore[assignment]
        self.runs._started(self.run)  # type: ignore[arg-type]
        self.runs.observe(self.run, self.started())  # type: ignore[arg-type]
        self.runs.detach()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(
            [e["data"]["phase"] for e in published(self.redis.commands[-1][2])], ["start"]
        )
        # A late event of that run is not published (it is no longer this gateway's to send).
        self.runs.observe(self.run, self.delta("x"))  # type: ignore[arg-type]
        self.assertEqual(len(self.redis.commands), 2)
