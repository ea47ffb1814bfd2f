"""One structured log line per finished run, at info or warning, with no secret in it."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, eventAsJSON, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.agents.runner import AgentRunner, Run
from openclaw_twisted.agents.store import MemorySessionStore
from openclaw_twisted.providers.interface import ModelRequest, ProviderError
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import FakeUpstream, Reply, Script, ScriptedProvider

from ..support import http_client, listen

KEY = "agent:main:logged"
FIELDS = {
    "run_id",
    "agent_id",
    "session_key",
    "model",
    "outcome",
    "stop_reason",
    "upstream_status",
    "duration_ms",
    "tokens",
    "error",
}


class Harness:
    """A runner on a Clock whose run log goes to ``events`` (an injected Logger)."""

    def __init__(self, script: Any, **defaults: Any) -> None:
        self.clock = Clock()
        self.provider = ScriptedProvider(script, clock=self.clock)
        config = parse_config(
            {"agents": {"defaults": {"model": "scripted/m", **defaults}}},
            {"OPENCLAW_STATE_DIR": "unused"},
        )
        self.events: list[dict[str, Any]] = []
        self.runner = AgentRunner(
            Roster.from_config(config),
            Providers.of([self.provider]),
            MemorySessionStore(),
            self.clock,
            log=Logger(observer=self.events.append),
        )

    def start(self, message: str = "the user's secret plan", key: str = KEY) -> Run:
        return self.runner.start(RunRequest("main", key, message))

    def line(self) -> dict[str, Any]:
        """The one log event so far, checked to be JSON as a log shipper would read it."""
        assert len(self.events) == 1, [formatEvent(e) for e in self.events]
        event = self.events[0]
        shipped = json.loads(eventAsJSON(event))
        assert set(shipped) >= FIELDS, set(shipped)
        return event


class RunLogTests(SynchronousTestCase):
    def fields(self, event: dict[str, Any]) -> dict[str, Any]:
        return {k: event[k] for k in FIELDS - {"run_id"}}

    def test_success_is_one_info_line(self) -> None:
        h = Harness(Script(deltas=("Hello", " there"), delta_delay=0.5))
        run = h.start()
        self.assertEqual(h.events, [])  # nothing while it runs
        h.clock.advance(0.5)
        h.clock.advance(0.5)
        h.clock.advance(0.5)
        self.successResultOf(run.wait())
        event = h.line()
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["run_id"], run.run_id)
        self.assertEqual(
            self.fields(event),
            {
                "agent_id": "main",
                "session_key": KEY,
                "model": "scripted/m",
                "outcome": "ok",
                "stop_reason": "stop",
                "upstream_status": None,
                "duration_ms": 1500,
                "tokens": {"input": 7, "output": 4, "total": 11},
                "error": None,
            },
        )
        self.assertEqual(
            formatEvent(event),
            f"run {run.run_id} ok (stop): agent main, session {KEY}, model scripted/m, "
            "1500 ms, tokens 7 in / 4 out",
        )
        self.assertNotIn("secret plan", eventAsJSON(event))
        self.assertNotIn("Hello", eventAsJSON(event))

    def test_provider_failure_names_the_last_model_asked(self) -> None:
        def refuse(request: ModelRequest) -> Script:
            return Script(refuse=ProviderError("upstream_error", "HTTP 500 from m2", status=500))

        h = Harness(refuse, model={"primary": "scripted/m1", "fallbacks": ["scripted/m2"]})
        run = h.start()
        self.assertIsNotNone(self.successResultOf(run.wait()).error)
        event = h.line()
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(
            self.fields(event),
            {
                "agent_id": "main",
                "session_key": KEY,
                "model": "scripted/m2",
                "outcome": "upstream_error",
                "stop_reason": "error",
                "upstream_status": 500,
                "duration_ms": 0,
                "tokens": None,
                "error": "HTTP 500 from m2",
            },
        )
        self.assertEqual(
            formatEvent(event),
            f"run {run.run_id} failed: upstream_error (upstream status 500): HTTP 500 from m2; "
            f"agent main, session {KEY}, model scripted/m2, 0 ms, tokens unknown",
        )

    def test_braces_in_a_value_are_shown_as_they_are(self) -> None:
        def refuse(request: ModelRequest) -> Script:
            return Script(refuse=ProviderError("upstream_error", "bad {json} {0} }{", status=400))

        h = Harness(refuse)
        run = h.start(key="agent:main:{odd}")
        self.successResultOf(run.wait())
        event = h.line()
        self.assertEqual(event["error"], "bad {json} {0} }{")
        self.assertIn(
            ": bad {json} {0} }{; agent main, session agent:main:{odd}, ", formatEvent(event)
        )

    def test_a_refusal_that_stops_the_fallbacks_names_its_model(self) -> None:
        def by_model(request: ModelRequest) -> Script:
            if request.model == "m1":
                return Script(refuse=ProviderError("unavailable", "connection refused"))
            return Script(refuse=ProviderError("auth", "HTTP 401", status=401))

        h = Harness(
            by_model, model={"primary": "scripted/m1", "fallbacks": ["scripted/m2", "scripted/m3"]}
        )
        self.successResultOf(h.start().wait())
        event = h.line()
        self.assertEqual((event["model"], event["outcome"]), ("scripted/m2", "auth"))

    def test_cancelled_run(self) -> None:
        h = Harness(Script(deltas=("part",), hang=True))
        run = h.start()
        h.clock.advance(2)
        run.cancel()
        self.successResultOf(run.wait())
        event = h.line()
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(
            (event["outcome"], event["model"], event["duration_ms"], event["tokens"]),
            ("aborted", "scripted/m", 2000, None),
        )

    def test_cancelled_while_queued_never_reached_a_model(self) -> None:
        h = Harness(Script(hang=True))
        first = h.start()
        second = h.start()
        second.cancel()
        event = h.line()
        self.assertEqual((event["run_id"], event["outcome"]), (second.run_id, "aborted"))
        self.assertIsNone(event["model"])
        self.assertIn("no model", formatEvent(event))
        first.cancel()
        self.assertEqual([e["outcome"] for e in h.events], ["aborted", "aborted"])

    def test_timeout(self) -> None:
        h = Harness(Script(hang=True), timeoutSeconds=5)
        run = h.start()
        h.clock.advance(5)
        self.successResultOf(run.wait())
        event = h.line()
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(
            (event["outcome"], event["duration_ms"], event["error"]),
            ("agent_timeout", 5000, "The agent run took longer than 5s."),
        )

    def test_shutdown(self) -> None:
        h = Harness(Script(hang=True))
        run = h.start()
        h.runner.shutdown(1)
        h.clock.advance(1)
        self.successResultOf(run.wait())
        self.assertEqual(h.line()["outcome"], "shutdown")
        h.events.clear()
        h.start()  # refused at once: still one line
        self.assertEqual(h.line()["outcome"], "shutdown")


class NoSecretsTests(TestCase):
    """Through the real HTTP edge and a real upstream that echoes its key in a 401."""

    timeout = 10

    async def test_no_credential_in_the_run_log(self) -> None:
        upstream = await FakeUpstream.start(reactor)
        self.addCleanup(upstream.stop)
        key = "sk-live-do-not-log-0123456789"
        upstream.script(Reply(status=401, error_message=f"Incorrect API key provided: {key}"))
        token = "gateway-token-do-not-log"
        data = upstream.gateway_config(token=token, api_key=key)
        gateway = Gateway(parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()}), reactor)
        self.addCleanup(lambda: gateway.shutdown(0))
        events: list[dict[str, Any]] = []
        gateway.runner.log = Logger(observer=events.append)
        url = await listen(self, gateway) + "/v1/chat/completions"
        r = await http_client(self).post(
            url,
            json={"model": "openclaw", "messages": [{"role": "user", "content": "my secret"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        self.assertEqual(r.code, 502)
        await r.content()
        (event,) = events
        self.assertEqual((event["outcome"], event["upstream_status"]), ("auth", 401))
        text = formatEvent(event) + eventAsJSON(event)
        for secret in (key, token, "my secret"):
            self.assertNotIn(secret, text)
