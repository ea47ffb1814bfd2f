"""Tool turns in a session's history: read back from records, and always well paired."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.runner import MISSING_RESULT, _paired
from openclaw_twisted.agents.store import messages_from
from openclaw_twisted.providers.interface import Message, ToolCall

CALL = ToolCall("c1", "lookup", '{"q":1}')


class ToolHistoryTests(SynchronousTestCase):
    def test_records_replay_as_tool_turns(self) -> None:
        records = [
            {"type": "message", "role": "user", "text": "q"},
            {
                "type": "message",
                "role": "assistant",
                "text": "",
                "toolCalls": [{"id": "c1", "name": "lookup", "arguments": '{"q":1}'}],
            },
            {"type": "message", "role": "tool", "toolCallId": "c1", "text": "42", "isError": True},
            {"type": "message", "role": "assistant", "text": "It is 42."},
        ]
        self.assertEqual(
            messages_from(records, 10),
            [
                Message("user", "q"),
                Message("assistant", "", tool_calls=(CALL,)),
                Message.result("c1", "42", is_error=True),
                Message("assistant", "It is 42."),
            ],
        )

    def test_pairs_repaired(self) -> None:
        """A window that begins with a result loses it; a call left open is answered."""
        got = _paired(
            (
                Message.result("c0", "from before the window"),
                Message("user", "q"),
                Message("assistant", "", tool_calls=(CALL,)),
                Message("user", "never mind"),
            )
        )
        self.assertEqual(
            got,
            (
                Message("user", "q"),
                Message("assistant", "", tool_calls=(CALL,)),
                Message.result("c1", MISSING_RESULT, is_error=True),
                Message("user", "never mind"),
            ),
        )
        plain = (Message("user", "a"), Message("assistant", "b"))
        self.assertIs(_paired(plain), plain)
