"""Agent runs against real HTTP providers on loopback: events, usage, fallbacks, timeout, cancel."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.events import RunEvent, RunRequest
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.agents.runner import AgentRunner, Run
from openclaw_twisted.agents.store import MemorySessionStore
from openclaw_twisted.config import parse_config
from openclaw_twisted.providers.interface import Usage
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import FakeUpstream, Reply
from tests.providers.test_http_providers import closed_port
from tests.support import http_client

KEY = "sk-runner-test-key"


def provider_entry(server_url: str, api: str) -> dict[str, Any]:
    base = server_url + ("/v1" if api == "openai-completions" else "")
    return {"baseUrl": base, "api": api, "apiKey": KEY, "models": [{"id": "m1"}]}


class RunnerTests(TestCase):
    async def upstream(self, *replies: Reply) -> FakeUpstream:
        server = await FakeUpstream.start(reactor)
        self.addCleanup(server.stop)
        server.script(*replies)
        return server

    def runner(
        self,
        providers: dict[str, Any],
        model: Any,
        clock: IReactorTime | None = None,
        timeout: float = 60,
    ) -> AgentRunner:
        config = parse_config(
            {
                "agents": {"defaults": {"model": model, "timeoutSeconds": timeout}},
                "models": {"providers": providers},
            },
            {"OPENCLAW_STATE_DIR": self.mktemp()},
        )
        return AgentRunner(
            Roster.from_config(config),
            Providers.from_config(config, http_client(self), reactor),
            MemorySessionStore(),
            clock or reactor,
        )

    async def events(self, run: Run) -> list[RunEvent]:
        out = []
        while (event := await run.next_event()) is not None:
            out.append(event)
        return out

    async def check_api(self, api: str) -> None:
        server = await self.upstream(Reply(deltas=["Hi", " there"], usage=Usage(20, 2)))
        runner = self.runner({"up": provider_entry(server.base_url, api)}, "up/m1")
        run = runner.start(RunRequest("main", "agent:main:main", "hello"))
        events = await self.events(run)
        self.assertEqual(events[0].data["phase"], "start")
        self.assertEqual(events[0].data["model"], "up/m1")
        self.assertEqual(
            [e.to_json()["data"] for e in events[1:3]],
            [{"delta": "Hi", "text": "Hi"}, {"delta": " there", "text": "Hi there"}],
        )
        self.assertEqual(
            events[3].data,
            {
                "phase": "end",
                "stopReason": "stop",
                "usage": {"input": 20, "output": 2, "total": 22},
            },
        )
        # The second turn carries the first as history.
        run = runner.start(RunRequest("main", "agent:main:main", "again"))
        await self.events(run)
        body = server.requests[1].json
        texts = [m["content"] for m in body["messages"] if m["role"] != "system"]
        self.assertEqual(texts, ["hello", "Hi there", "again"])

    async def test_openai_end_to_end(self) -> None:
        await self.check_api("openai-completions")

    async def test_anthropic_end_to_end(self) -> None:
        await self.check_api("anthropic-messages")

    async def test_fallback_after_refused_and_5xx(self) -> None:
        port = await closed_port()
        server = await self.upstream(Reply(status=502), Reply(deltas=["ok"]))
        providers = {
            "down": provider_entry(f"http://127.0.0.1:{port}", "openai-completions"),
            "flaky": provider_entry(server.base_url, "anthropic-messages"),
            "good": provider_entry(server.base_url, "openai-completions"),
        }
        model = {"primary": "down/m1", "fallbacks": ["flaky/m1", "good/m1"]}
        run = self.runner(providers, model).start(RunRequest("main", "k", "hi"))
        events = await self.events(run)
        self.assertEqual(events[0].data["model"], "good/m1")
        self.assertEqual(events[1].data["delta"], "ok")
        self.assertEqual(
            [r.path for r in server.requests], ["/v1/messages", "/v1/chat/completions"]
        )

    async def test_no_fallback_after_auth_error(self) -> None:
        server = await self.upstream(Reply(status=401, error_message="bad key"))
        providers = {
            "a": provider_entry(server.base_url, "openai-completions"),
            "b": provider_entry(server.base_url, "openai-completions"),
        }
        run = self.runner(providers, {"primary": "a/m1", "fallbacks": ["b/m1"]}).start(
            RunRequest("main", "k", "hi")
        )
        events = await self.events(run)
        self.assertEqual([e.data["phase"] for e in events], ["error"])
        self.assertEqual(events[0].data["error"]["kind"], "auth")
        self.assertIn("bad key", events[0].data["error"]["message"])
        self.assertNotIn(KEY, events[0].data["error"]["message"])
        self.assertEqual(len(server.requests), 1)

    async def test_rate_limited_everywhere(self) -> None:
        server = await self.upstream(
            Reply(status=429, retry_after="3"), Reply(status=429, retry_after="9")
        )
        providers = {
            "a": provider_entry(server.base_url, "openai-completions"),
            "b": provider_entry(server.base_url, "anthropic-messages"),
        }
        run = self.runner(providers, {"primary": "a/m1", "fallbacks": ["b/m1"]}).start(
            RunRequest("main", "k", "hi")
        )
        result = await run.wait()
        assert result.error is not None
        self.assertEqual((result.error.kind, result.error.retry_after), ("rate_limited", "9"))

    async def test_never_a_first_byte_times_out(self) -> None:
        """The per-run timeout (on a Clock) aborts the silent upstream request."""
        clock = Clock()
        server = await self.upstream(Reply(hang=True))
        runner = self.runner(
            {"up": provider_entry(server.base_url, "openai-completions")}, "up/m1", clock, 30
        )
        run = runner.start(RunRequest("main", "k", "hi"))
        received = await server.request(0)
        clock.advance(29)
        self.assertIsNone(run.result)
        clock.advance(1)
        result = await run.wait()
        assert result.error is not None
        self.assertEqual(result.error.kind, "agent_timeout")
        await received.disconnected

    async def test_stalled_stream_times_out(self) -> None:
        clock = Clock()
        server = await self.upstream(Reply(deltas=["a", "b"], stall_after=1))
        runner = self.runner(
            {"up": provider_entry(server.base_url, "anthropic-messages")}, "up/m1", clock, 30
        )
        run = runner.start(RunRequest("main", "k", "hi"))
        events = [await run.next_event(), await run.next_event()]
        self.assertEqual(events[1].data["delta"], "a")  # type: ignore[union-attr]
        clock.advance(30)
        result = await run.wait()
        self.assertEqual((result.stop_reason, result.text), ("aborted", "a"))
        await server.requests[0].disconnected

    async def test_cancel_mid_stream_closes_upstream(self) -> None:
        server = await self.upstream(Reply(deltas=["a", "b", "c"], stall_after=2))
        runner = self.runner({"up": provider_entry(server.base_url, "openai-completions")}, "up/m1")
        run = runner.start(RunRequest("main", "k", "hi"))
        for _ in range(3):
            await run.next_event()
        run.cancel()
        result = await run.wait()
        self.assertEqual(result.stop_reason, "aborted")
        await server.requests[0].disconnected

    async def test_backpressure_reaches_upstream(self) -> None:
        """Nobody pulls the run's events: the provider body is paused, the upstream stalls."""
        server = await self.upstream(Reply(forever=True))
        runner = self.runner({"up": provider_entry(server.base_url, "anthropic-messages")}, "up/m1")
        run = runner.start(RunRequest("main", "k", "hi"))
        received = await server.paused
        sent = received.chunks_sent
        # Everything the upstream wrote is in socket buffers or the small queues: reading it
        # all takes about as many events as were sent, and then the upstream writes again.
        pulled = 0
        while received.chunks_sent == sent and pulled < 10 * sent:
            await run.next_event()
            pulled += 1
        self.assertGreater(received.chunks_sent, sent)
        run.cancel()
        await received.disconnected
