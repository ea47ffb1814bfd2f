"""The gateway's text log lines are Twisted's, however many share a second."""

from __future__ import annotations

import io

from twisted.logger import LogLevel, textFileLogObserver
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.tap import log_observer


def event(when: float, text: str = "run {run_id} ok", **fields: object) -> dict[str, object]:
    return {
        "log_time": when,
        "log_level": LogLevel.info,
        "log_namespace": "openclaw_twisted.agents.runner",
        "log_format": text,
        **fields,
    }


class TextLinesTests(SynchronousTestCase):
    def test_the_same_text_as_twisteds_observer(self) -> None:
        ours, theirs = io.StringIO(), io.StringIO()
        mine, twisted = log_observer("text", ours), textFileLogObserver(theirs)
        # Two events in one second, one in the next, a multi-line one and one with no time.
        for e in (
            event(1_700_000_000.1, run_id="a"),
            event(1_700_000_000.9, run_id="b"),
            event(1_700_000_001.0, run_id="c"),
            event(1_700_000_002.5, "two\nlines"),
            event(None, "no time"),  # type: ignore[arg-type]
        ):
            mine(dict(e))
            twisted(dict(e))
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertEqual(len(ours.getvalue().splitlines()), 6)
        self.assertIn("run b ok", ours.getvalue())
