"""Each WS method on a real socket, run events in order, chat, abort and idempotency."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.providers.interface import ProviderError
from openclaw_twisted.testing import Script, ScriptedProvider
from openclaw_twisted.ws import methods

from ..support import http_client
from .helpers import TOKEN, Session, make_gateway, open_session, serve, until_end

SCRIPTED = {
    "gateway": {"auth": {"token": TOKEN}},
    "agents": {
        "defaults": {"model": "scripted/model"},
        "list": [{"id": "main", "default": True}, {"id": "beta", "name": "Beta"}],
    },
}


class MethodTests(TestCase):
    timeout = 5

    async def start(
        self,
        script: Script | None = None,
        config: dict[str, Any] | None = None,
        clock: Any = None,
    ) -> Session:
        self.provider = ScriptedProvider(script or Script(), clock=clock)
        self.gateway = make_gateway(
            self, config or SCRIPTED, providers=(self.provider,), clock=clock
        )
        self.url = await serve(self, self.gateway)
        return await open_session(self, self.url)

    async def test_read_only_methods(self) -> None:
        s = await self.start()
        health = await s.ok("health")
        self.assertEqual((health["ok"], health["status"], health["ready"]), (True, "live", True))
        status = await s.ok("status")
        self.assertEqual(status["protocol"], 3)
        self.assertEqual(status["connections"], 1)
        self.assertEqual(status["activeRuns"], 0)
        self.assertEqual(status["agents"], ["main", "beta"])
        agents = await s.ok("agents.list")
        self.assertEqual(agents["defaultId"], "main")
        self.assertEqual(
            agents["agents"],
            [
                {"id": "main", "name": "main", "model": "scripted/model"},
                {"id": "beta", "name": "Beta", "model": "scripted/model"},
            ],
        )
        models = await s.ok("models.list")
        self.assertEqual(
            models["models"], [{"id": "scripted/model", "name": "model", "provider": "scripted"}]
        )
        self.assertEqual(await s.ok("sessions.list"), {"count": 0, "sessions": []})

    async def test_bad_requests_answer_invalid_request_and_keep_the_connection(self) -> None:
        s = await self.start()
        cases: list[tuple[str, Any]] = [
            ("nope.method", {}),
            ("health", ["not", "an", "object"]),
            ("agent", {}),
            ("agent", {"message": "  "}),
            ("agent", {"message": 5}),
            ("agent", {"message": "hi", "agentId": "ghost"}),
            ("chat.send", {"message": "hi", "sessionKey": "agent:ghost:x"}),
            ("chat.history", {}),
            ("chat.history", {"sessionKey": "k", "limit": 0}),
            ("chat.abort", {}),
            ("agent.wait", {"runId": "no-such-run"}),
            ("agent.wait", {"runId": "x", "timeoutMs": -1}),
            ("sessions.list", {"agentId": "ghost"}),
        ]
        for method, params in cases:
            frame = await s.call(method, params)
            self.assertFalse(frame["ok"], (method, params))
            self.assertEqual(frame["error"]["code"], "INVALID_REQUEST", (method, params))
        self.assertIn(
            "Unknown agent 'ghost'", (await s.call("agent", cases[5][1]))["error"]["message"]
        )
        # Frames that are not requests get an error too, and the connection stays.
        s.client.send_json({"type": "event", "event": "x"})
        self.assertEqual((await s.res(None))["error"]["code"], "INVALID_REQUEST")  # type: ignore[arg-type]
        s.client.sendMessage(b"{broken")
        self.assertEqual((await s.res(None))["error"]["code"], "INVALID_REQUEST")  # type: ignore[arg-type]
        self.assertTrue((await s.call("health"))["ok"])
        self.assertEqual(self.provider.requests, [])

    async def test_agent_accepted_events_then_final(self) -> None:
        s = await self.start()
        req = s.send("agent", {"message": "hi", "idempotencyKey": "k1"})
        accepted = await s.res(req)
        self.assertTrue(accepted["ok"])
        run_id = accepted["payload"]["runId"]
        self.assertEqual(accepted["payload"]["status"], "accepted")
        self.assertIsInstance(accepted["payload"]["acceptedAt"], int)
        self.assertEqual(s.events, [])
        final = await s.res(req)
        self.assertTrue(final["ok"], final)
        self.assertEqual(
            final["payload"],
            {
                "runId": run_id,
                "status": "ok",
                "summary": "completed",
                "result": {
                    "payloads": [{"text": "Hello from the script."}],
                    "meta": {
                        "usage": {"input": 7, "output": 4, "total": 11},
                        "stopReason": "stop",
                        "agentId": "main",
                        "sessionKey": "agent:main:main",
                    },
                },
            },
        )
        # Every run event arrived before the final reply, in order, with increasing seq.
        self.assertEqual([e["event"] for e in s.events], ["agent"] * 6)
        seqs = [e["seq"] for e in s.events]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(len(set(seqs)), 6)
        payloads = [e["payload"] for e in s.events]
        self.assertEqual({p["runId"] for p in payloads}, {run_id})
        self.assertEqual([p["seq"] for p in payloads], [1, 2, 3, 4, 5, 6])
        self.assertEqual(payloads[0]["data"]["phase"], "start")
        self.assertEqual(
            [p["data"]["delta"] for p in payloads[1:5]], ["Hello", " from", " the", " script."]
        )
        self.assertEqual(payloads[4]["data"]["text"], "Hello from the script.")
        self.assertEqual(payloads[5]["data"]["phase"], "end")

        # The same idempotencyKey returns the same run, without running the model again.
        s.events.clear()
        again = s.send("agent", {"message": "hi", "idempotencyKey": "k1"})
        self.assertEqual((await s.res(again))["payload"]["runId"], run_id)
        self.assertEqual((await s.res(again))["payload"], final["payload"])
        self.assertEqual(len(self.provider.requests), 1)
        self.assertEqual(s.events, [])
        # agent.wait on a finished run.
        waited = await s.ok("agent.wait", {"runId": run_id})
        self.assertEqual((waited["status"], waited["stopReason"]), ("ok", "stop"))

    async def test_agent_error_reply(self) -> None:
        s = await self.start(Script(refuse=ProviderError("unavailable", "connection refused")))
        req = s.send("agent", {"message": "hi", "agentId": "Beta"})
        accepted = await s.res(req)
        self.assertTrue(accepted["ok"])
        final = await s.res(req)
        self.assertFalse(final["ok"])
        self.assertEqual(final["error"]["code"], "UNAVAILABLE")
        self.assertEqual(
            final["error"]["details"],
            {"kind": "unavailable", "runId": accepted["payload"]["runId"]},
        )
        self.assertEqual([e["payload"]["data"]["phase"] for e in s.events], ["error"])
        self.assertEqual(s.events[0]["payload"]["sessionKey"], "agent:beta:main")

    async def test_chat_conversation_and_history(self) -> None:
        s = await self.start()
        key = "agent:beta:conversation"
        sent = await s.ok("chat.send", {"sessionKey": key, "message": "first"})
        self.assertEqual(sent["status"], "started")
        states = []
        while True:
            event = await s.event("chat")
            states.append(event["payload"]["state"])
            self.assertEqual(event["payload"]["runId"], sent["runId"])
            self.assertEqual(event["payload"]["sessionKey"], key)
            if event["payload"]["state"] != "delta":
                break
        self.assertEqual(states, ["delta"] * 4 + ["final"])
        final = event["payload"]
        self.assertEqual(
            final["message"]["content"], [{"type": "text", "text": "Hello from the script."}]
        )
        self.assertEqual(final["stopReason"], "stop")
        await s.ok("chat.send", {"sessionKey": key, "message": "second"})
        while (await s.event("chat"))["payload"]["state"] != "final":
            pass
        # The second turn was sent the first one as history.
        self.assertEqual(
            [(m.role, m.text) for m in self.provider.requests[1].messages],
            [("user", "first"), ("assistant", "Hello from the script."), ("user", "second")],
        )
        self.assertEqual(self.provider.requests[1].system.split("\n")[0][:11], "You are Bet")
        history = await s.ok("chat.history", {"sessionKey": key})
        self.assertEqual(history["agentId"], "beta")
        self.assertEqual(
            [(m["role"], m["content"][0]["text"]) for m in history["messages"]],
            [
                ("user", "first"),
                ("assistant", "Hello from the script."),
                ("user", "second"),
                ("assistant", "Hello from the script."),
            ],
        )
        last = await s.ok("chat.history", {"sessionKey": key, "limit": 1})
        self.assertEqual(len(last["messages"]), 1)
        sessions = await s.ok("sessions.list", {"agentId": "beta"})
        self.assertEqual([r["key"] for r in sessions["sessions"]], [key])
        self.assertEqual(sessions["sessions"][0]["agentId"], "beta")
        # Chat events keep this connection's seq increasing.
        seqs = [e["seq"] for e in s.events]
        self.assertEqual(seqs, sorted(set(seqs)))

    async def test_runs_through_the_runner_share_the_session(self) -> None:
        s = await self.start()
        key = "agent:main:shared"
        # A turn from another edge (HTTP uses the same runner) on the same key...
        run = self.gateway.runner.start(RunRequest("main", key, "from elsewhere"))
        await run.wait()
        history = await s.ok("chat.history", {"sessionKey": key})
        self.assertEqual(history["messages"][0]["content"][0]["text"], "from elsewhere")
        # ...and a WS turn is what the next runner turn sees as history.
        await s.ok("chat.send", {"sessionKey": key, "message": "from ws"})
        while (await s.event("chat"))["payload"]["state"] != "final":
            pass
        texts = [m.text for m in self.successResultOf(self.gateway.store.history("main", key, 50))]
        self.assertEqual(texts[2], "from ws")

    async def test_chat_abort_cancels_the_provider_stream(self) -> None:
        s = await self.start(Script(hang=True))
        key = "agent:main:abort"
        sent = await s.ok("chat.send", {"sessionKey": key, "message": "wait"})
        self.assertEqual(len(self.provider.streams), 1)
        stream = self.provider.streams[0]
        self.assertFalse(stream.cancelled)
        aborted = await s.ok("chat.abort", {"sessionKey": key})
        self.assertEqual(aborted, {"ok": True, "aborted": True, "runIds": [sent["runId"]]})
        self.assertTrue(stream.cancelled)
        event = await s.event("chat")
        self.assertEqual(event["payload"]["state"], "aborted")
        self.assertEqual(event["payload"]["errorKind"], "aborted")
        waited = await s.ok("agent.wait", {"runId": sent["runId"]})
        self.assertEqual(waited["status"], "error")
        self.assertEqual(waited["error"]["kind"], "aborted")
        history = await s.ok("chat.history", {"sessionKey": key})
        self.assertEqual(history["messages"][-1]["stopReason"], "aborted")
        # Nothing left to abort.
        self.assertEqual((await s.ok("chat.abort", {"runId": sent["runId"]}))["aborted"], False)

    async def test_agent_abort_gives_an_aborted_error(self) -> None:
        s = await self.start(Script(hang=True))
        req = s.send("agent", {"message": "wait", "sessionKey": "k"})
        run_id = (await s.res(req))["payload"]["runId"]
        await s.ok("chat.abort", {"runId": run_id})
        final = await s.res(req)
        self.assertEqual(final["error"]["code"], "ABORTED")
        self.assertTrue(self.provider.streams[0].cancelled)

    async def test_agent_wait_times_out_on_the_clock(self) -> None:
        clock = Clock()
        s = await self.start(Script(hang=True), clock=clock)
        sent = await s.ok("chat.send", {"message": "wait", "idempotencyKey": "c1"})
        self.assertEqual(
            await s.ok("chat.send", {"message": "wait", "idempotencyKey": "c1"}),
            {"runId": sent["runId"], "status": "in_flight"},
        )
        req = s.send("agent.wait", {"runId": sent["runId"], "timeoutMs": 5000})
        await s.ok("health")  # the wait is registered on the clock by now
        clock.advance(5)
        waited = (await s.res(req))["payload"]
        self.assertEqual((waited["runId"], waited["status"]), (sent["runId"], "timeout"))
        self.assertEqual(len(self.provider.requests), 1)
        await s.ok("chat.abort", {"runId": sent["runId"]})

    async def test_other_clients_get_every_run_event_once(self) -> None:
        s = await self.start()
        observer = await open_session(self, self.url, client_id="observer")
        req = s.send("agent", {"message": "hi"})
        run_id = (await s.res(req))["payload"]["runId"]
        await s.res(req)
        seen = await until_end(observer)
        self.assertEqual({e["payload"]["runId"] for e in seen}, {run_id})
        payloads = [e["payload"] for e in seen]
        self.assertEqual(payloads[0]["data"]["phase"], "start")
        # The first delta goes out at once; the ones after it within 150 ms are merged.
        # Observers get deltas only (the cumulative text would make their bytes quadratic).
        assistant = [p["data"] for p in payloads if p["stream"] == "assistant"]
        self.assertEqual(assistant[0], {"delta": "Hello"})
        self.assertEqual("".join(d["delta"] for d in assistant), "Hello from the script.")
        self.assertTrue(all(set(d) == {"delta"} for d in assistant))
        run_seqs = [p["seq"] for p in payloads]
        self.assertEqual((run_seqs[0], run_seqs[-1]), (1, 6))
        self.assertEqual(run_seqs, sorted(set(run_seqs)))
        self.assertEqual([e["seq"] for e in seen], list(range(1, len(seen) + 1)))
        # The requester got its run's events once (each delta), not a second time as an observer.
        self.assertEqual(len(s.events), 6)
        # Runs started elsewhere (HTTP, CLI --local) reach WS clients too.
        run = self.gateway.runner.start(RunRequest("main", "agent:main:http", "x"))
        await run.wait()
        event = await observer.event("agent")
        self.assertEqual(event["payload"]["runId"], run.run_id)
        self.assertEqual(event["seq"], len(seen) + 1)

    async def test_observers_get_the_whole_answer_of_runs_that_keep_none(self) -> None:
        await self.start()
        observer = await open_session(self, self.url, client_id="observer")
        request = RunRequest("main", "agent:main:openai:x", "x", persist=False, keep_text=False)
        run = self.gateway.runner.start(request)
        result = await run.wait()
        self.assertEqual(result.text, "")  # the run itself kept nothing
        seen = [e["payload"]["data"] for e in await until_end(observer)]
        assistant = [d for d in seen if "delta" in d]
        self.assertEqual(assistant[0]["delta"], "Hello")
        self.assertEqual("".join(d["delta"] for d in assistant), "Hello from the script.")
        self.assertEqual(self.gateway._ws_factory.registry._watches, {})  # forgotten at the end

    async def test_in_flight_run_answers_before_shutdown_close(self) -> None:
        s = await self.start(Script(hang=True))
        req = s.send("agent", {"message": "wait"})
        await s.res(req)
        await self.gateway.shutdown(0)
        self.assertEqual((await s.event("shutdown"))["event"], "shutdown")
        final = await s.res(req)
        self.assertEqual(final["error"]["code"], "UNAVAILABLE")
        self.assertEqual(final["error"]["details"]["kind"], "shutdown")
        self.assertEqual(await s.client.closed, 1001)

    async def test_chat_error_event(self) -> None:
        s = await self.start(Script(refuse=ProviderError("rate_limited", "slow down", status=429)))
        sent = await s.ok("chat.send", {"message": "hi"})
        event = (await s.event("chat"))["payload"]
        self.assertEqual(event["runId"], sent["runId"])
        self.assertEqual(
            (event["state"], event["errorKind"], event["errorMessage"]),
            ("error", "rate_limited", "slow down"),
        )
        self.assertNotIn("message", event)

    async def test_agent_timeout_code(self) -> None:
        clock = Clock()
        config = {**SCRIPTED, "agents": {"defaults": {"model": "scripted/m", "timeoutSeconds": 5}}}
        s = await self.start(Script(hang=True), config=config, clock=clock)
        req = s.send("agent", {"message": "hi"})
        await s.res(req)
        clock.advance(5)
        final = await s.res(req)
        self.assertEqual(final["error"]["code"], "AGENT_TIMEOUT")
        self.assertEqual(final["error"]["details"]["kind"], "agent_timeout")
        self.assertTrue(self.provider.streams[0].cancelled)

    async def test_run_outlives_its_requester(self) -> None:
        clock = Clock()
        s = await self.start(Script(delta_delay=1.0), clock=clock)
        req = s.send("agent", {"message": "hi", "sessionKey": "agent:main:left"})
        run_id = (await s.res(req))["payload"]["runId"]
        s.client.sendClose()
        await s.client.closed
        run = self.gateway.runner.active[run_id]
        for _ in range(5):
            clock.advance(1)
        result = await run.wait()
        self.assertEqual((result.text, result.error), ("Hello from the script.", None))
        other = await open_session(self, self.url)
        history = await other.ok("chat.history", {"sessionKey": "agent:main:left"})
        self.assertEqual(history["messages"][-1]["content"][0]["text"], "Hello from the script.")
        self.assertEqual((await other.ok("agent.wait", {"runId": run_id}))["status"], "ok")

    async def test_runs_refused_while_stopping(self) -> None:
        s = await self.start()
        self.gateway.runner.closing = True
        frame = await s.call("chat.send", {"message": "hi"})
        self.assertEqual(frame["error"]["code"], "UNAVAILABLE")
        self.assertEqual(self.provider.requests, [])


class ModelsListTests(SynchronousTestCase):
    def test_configured_models_then_agent_models(self) -> None:
        config = {
            "agents": {"defaults": {"model": {"primary": "local/a", "fallbacks": ["other/b"]}}},
            "models": {
                "providers": {
                    "local": {
                        "baseUrl": "http://127.0.0.1:9/v1",
                        "api": "openai-completions",
                        "models": [{"id": "a", "name": "Model A", "contextWindow": 8192}],
                    }
                }
            },
        }
        gateway = make_gateway(self, config)
        self.assertEqual(
            methods.models_list(gateway.edge, {})["models"],
            [
                {"id": "echo/echo", "name": "echo", "provider": "echo"},
                {"id": "local/a", "name": "Model A", "provider": "local", "contextWindow": 8192},
                {"id": "other/b", "name": "b", "provider": "other"},
            ],
        )


class SharedSessionTests(TestCase):
    """One session key, two edges: WS ``chat.send`` and HTTP ``/v1/chat/completions``."""

    timeout = 10

    async def test_ws_and_http_continue_one_conversation(self) -> None:
        provider = ScriptedProvider(
            lambda request: Script(deltas=(f"re:{request.messages[-1].text}",))
        )
        config = {
            "gateway": {
                "auth": {"token": TOKEN},
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"defaults": {"model": "scripted/model"}},
        }
        gateway = make_gateway(self, config, providers=(provider,))
        url = await serve(self, gateway)
        s = await open_session(self, url)
        http = http_client(self)
        key = "agent:main:shared"

        await s.ok("chat.send", {"sessionKey": key, "message": "one (ws)"})
        while (await s.event("chat"))["payload"]["state"] != "final":
            pass
        r = await http.post(
            url + "/v1/chat/completions",
            json={"model": "openclaw", "messages": [{"role": "user", "content": "two (http)"}]},
            headers={"Authorization": f"Bearer {TOKEN}", "x-openclaw-session-key": key},
        )
        body = await r.json()
        self.assertEqual(r.code, 200, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "re:two (http)")
        # HTTP saw the WS turn as history...
        self.assertEqual(
            [(m.role, m.text) for m in provider.requests[1].messages],
            [("user", "one (ws)"), ("assistant", "re:one (ws)"), ("user", "two (http)")],
        )
        # ...and WS sees the HTTP turn, and continues after it.
        history = await s.ok("chat.history", {"sessionKey": key})
        self.assertEqual(
            [m["content"][0]["text"] for m in history["messages"]],
            ["one (ws)", "re:one (ws)", "two (http)", "re:two (http)"],
        )
        await s.ok("chat.send", {"sessionKey": key, "message": "three (ws)"})
        while (await s.event("chat"))["payload"]["state"] != "final":
            pass
        self.assertEqual(len(provider.requests[2].messages), 5)
