"""Typed run events: what the runner emits, and the one mapping to CONTRACT §5.3's JSON."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.events import (
    RunEnded,
    RunError,
    RunFailed,
    RunStarted,
    TextDelta,
    TextSoFar,
    ToolCallDelta,
    ToolResult,
    ToolStarted,
    to_json,
)
from openclaw_twisted.providers.interface import ProviderError, ToolCall, Usage
from openclaw_twisted.testing import Script

from .test_runner import KEY, Harness


class TypedEventTests(SynchronousTestCase):
    def test_a_run_emits_started_deltas_ended(self) -> None:
        h = Harness(self, Script(deltas=("a", "b")))
        h.clock.advance(2)
        events = h.events(h.start())
        self.assertEqual([type(e) for e in events], [RunStarted, TextDelta, TextDelta, RunEnded])
        started, first, second, ended = events
        assert isinstance(started, RunStarted) and isinstance(ended, RunEnded)
        assert isinstance(first, TextDelta) and isinstance(second, TextDelta)
        self.assertEqual((started.model, started.started_at), ("scripted/m", 2000))
        self.assertEqual((first.delta, second.delta, second.text), ("a", "b", "ab"))
        self.assertEqual((ended.stop_reason, ended.usage), ("stop", Usage(7, 4)))
        self.assertEqual({e.run_id for e in events}, {started.run_id})
        self.assertEqual({e.session_key for e in events}, {KEY})

    def test_a_failed_run_ends_with_its_error(self) -> None:
        h = Harness(self, Script(refuse=ProviderError("auth", "bad key")))
        events = h.events(h.start())
        self.assertEqual([type(e) for e in events], [RunFailed])
        failed = events[0]
        assert isinstance(failed, RunFailed)
        self.assertEqual((failed.error.kind, failed.error.message), ("auth", "bad key"))

    def test_to_json_is_the_contract_shape(self) -> None:
        head = ("r1", 3, 1700, "agent:main:main")
        envelope = {"runId": "r1", "seq": 3, "ts": 1700, "sessionKey": "agent:main:main"}
        parts = ["Hel", "lo"]
        cases = [
            (
                RunStarted(*head, 1600, "p/m"),
                "lifecycle",
                {"phase": "start", "startedAt": 1600, "model": "p/m"},
            ),
            (
                TextDelta(*head, "lo", TextSoFar(parts, 2)),
                "assistant",
                {"delta": "lo", "text": "Hello"},
            ),
            (
                RunEnded(*head, "length", Usage(1, 2)),
                "lifecycle",
                {
                    "phase": "end",
                    "stopReason": "length",
                    "usage": {"input": 1, "output": 2, "total": 3},
                },
            ),
            (
                RunFailed(*head, RunError("aborted", "The run was cancelled.", 499)),
                "lifecycle",
                {
                    "phase": "error",
                    "error": {"kind": "aborted", "message": "The run was cancelled."},
                },
            ),
        ]
        for event, stream, data in cases:
            self.assertEqual(to_json(event), {**envelope, "stream": stream, "data": data})
            self.assertEqual(event.to_json(), to_json(event))


class ToolEventTests(SynchronousTestCase):
    def test_tool_events_json(self) -> None:
        head = ("r1", 3, 1700, "agent:main:main")
        envelope = {"runId": "r1", "seq": 3, "ts": 1700, "sessionKey": "agent:main:main"}
        call = ToolCall("c1", "read", '{"path":"a.txt"}')
        cases = [
            (
                ToolCallDelta(*head, 0, "c1", "lookup", '{"q"'),
                {
                    "phase": "delta",
                    "index": 0,
                    "toolCallId": "c1",
                    "name": "lookup",
                    "argsDelta": '{"q"',
                },
            ),
            (
                ToolCallDelta(*head, 1, None, None, ":1}"),
                {"phase": "delta", "index": 1, "argsDelta": ":1}"},
            ),
            (
                ToolStarted(*head, call),
                {"phase": "start", "name": "read", "toolCallId": "c1", "args": '{"path":"a.txt"}'},
            ),
            (
                ToolResult(*head, call, "hello", False),
                {
                    "phase": "result",
                    "name": "read",
                    "toolCallId": "c1",
                    "isError": False,
                    "result": "hello",
                },
            ),
        ]
        for event, data in cases:
            self.assertEqual(to_json(event), {**envelope, "stream": "tool", "data": data})
        ended = RunEnded(*head, "tool_calls", Usage(1, 2), (call,))
        self.assertEqual(
            to_json(ended)["data"]["toolCalls"],
            [{"id": "c1", "name": "read", "arguments": '{"path":"a.txt"}'}],
        )
        self.assertNotIn("toolCalls", to_json(RunEnded(*head, "stop", Usage()))["data"])

    def test_a_client_tool_call_ends_the_run(self) -> None:
        call = ToolCall("c1", "lookup", '{"q":1}')
        h = Harness(self, Script(deltas=("Let me look.",), tool_calls=(call,)))
        events = h.events(h.start())
        self.assertEqual(
            [type(e) for e in events], [RunStarted, TextDelta, ToolCallDelta, RunEnded]
        )
        delta, ended = events[2], events[3]
        assert isinstance(delta, ToolCallDelta) and isinstance(ended, RunEnded)
        self.assertEqual((delta.index, delta.id, delta.name), (0, "c1", "lookup"))
        self.assertEqual((ended.stop_reason, ended.tool_calls), ("tool_calls", (call,)))
