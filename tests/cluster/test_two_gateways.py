"""The core chat and WebSocket behaviour against two gateways sharing one Redis."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from openclaw_twisted.testing import Script, parse_sse

from ..support import http_client, ws_connect
from ..ws.helpers import Session, connect_frame, open_session, until_end
from .gateways import TOKEN, chat, pair


async def final(session: Session) -> dict[str, Any]:
    """The next ``chat`` event that ends a run the session started."""
    while True:
        event = await session.event("chat")
        if event["payload"]["state"] in ("final", "error", "aborted"):
            return event


class TwoGatewayTests(TestCase):
    timeout = 30

    async def test_a_stable_session_continues_on_the_other_gateway(self) -> None:
        _, a, b = await pair(self)
        status, first, _ = await chat(
            self, a, {"user": "ann", "messages": [{"role": "user", "content": "one"}]}
        )
        self.assertEqual(status, 200, first)
        status, second, _ = await chat(
            self, b, {"user": "ann", "messages": [{"role": "user", "content": "two"}]}
        )
        self.assertEqual(status, 200, second)
        # B's model was sent the turn A answered: the session is one, wherever it is served.
        asked = [(m.role, m.text) for m in b.provider.requests[-1].messages]
        answer = first["choices"][0]["message"]["content"]
        self.assertEqual(asked, [("user", "one"), ("assistant", answer), ("user", "two")])
        self.assertEqual(a.provider.requests[-1].messages[-1].text, "one")

    async def test_stateless_requests_are_served_by_both_and_kept_by_neither(self) -> None:
        _, a, b = await pair(self)
        for at in (a, b, a):
            status, body, _ = await chat(
                self, at, {"messages": [{"role": "user", "content": "alone"}]}
            )
            self.assertEqual(status, 200, body)
            self.assertEqual(len(at.provider.requests[-1].messages), 1)
        self.assertEqual(await a.gateway.store.sessions("main"), [])

    async def test_streaming_on_the_other_gateway_sees_the_history(self) -> None:
        _, a, b = await pair(self)
        await chat(self, a, {"user": "bo", "messages": [{"role": "user", "content": "x"}]})
        status, raw, headers = await chat(
            self,
            b,
            {"user": "bo", "stream": True, "messages": [{"role": "user", "content": "y"}]},
        )
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"))
        events = parse_sse(raw)
        self.assertEqual(events[-1], "[DONE]")
        text = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]
        )
        self.assertEqual(text, "Hello from the script.")
        self.assertEqual(len(b.provider.requests[-1].messages), 3)

    async def test_ws_chat_send_on_one_history_and_events_on_the_other(self) -> None:
        _, a, b = await pair(self)
        key = "agent:main:shared"
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        sent = await on_a.ok("chat.send", {"sessionKey": key, "message": "hello"})
        await final(on_a)
        # B's client observes A's run (its events crossed over the bus)...
        seen = await until_end(on_b, sent["runId"])
        self.assertEqual(seen[-1]["payload"]["data"]["phase"], "end")
        deltas = "".join(
            e["payload"]["data"]["delta"] for e in seen if e["payload"]["stream"] == "assistant"
        )
        self.assertEqual(deltas, "Hello from the script.")
        # ...and reads the turn from the shared store.
        history = await on_b.ok("chat.history", {"sessionKey": key})
        self.assertEqual(
            [(m["role"], m["runId"]) for m in history["messages"]],
            [("user", sent["runId"]), ("assistant", sent["runId"])],
        )
        listed = await on_b.ok("sessions.list", {})
        self.assertIn(key, [s["key"] for s in listed["sessions"]])
        waited = await on_b.ok("agent.wait", {"runId": sent["runId"]})
        self.assertEqual((waited["status"], waited["stopReason"]), ("ok", "stop"))

    async def test_chat_abort_and_agent_wait_from_the_other_gateway(self) -> None:
        _, a, b = await pair(self, Script(hang=True))
        key = "agent:main:long"
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        sent = await on_a.ok("chat.send", {"sessionKey": key, "message": "wait"})
        while not a.provider.streams:
            await deferLater(reactor, 0.01, lambda: None)
        pending = await on_b.ok("agent.wait", {"runId": sent["runId"], "timeoutMs": 50})
        self.assertEqual(pending["status"], "timeout")
        aborted = await on_b.ok("chat.abort", {"sessionKey": key})
        self.assertEqual(aborted, {"ok": True, "aborted": True, "runIds": [sent["runId"]]})
        event = await on_a.event("chat")
        self.assertEqual(event["payload"]["state"], "aborted")
        self.assertTrue(a.provider.streams[0].cancelled)
        waited = await on_b.ok("agent.wait", {"runId": sent["runId"]})
        self.assertEqual((waited["status"], waited["error"]["kind"]), ("error", "aborted"))
        nothing = await on_b.ok("chat.abort", {"sessionKey": key})
        self.assertEqual(nothing, {"ok": True, "aborted": False, "runIds": []})
        unknown = await on_b.call("agent.wait", {"runId": "no-such-run"})
        self.assertEqual(unknown["error"]["code"], "INVALID_REQUEST")

    async def test_sessions_kill_on_the_other_gateway(self) -> None:
        _, a, b = await pair(self, Script(hang=True))
        key = "agent:main:killme"
        on_a = await open_session(self, a.ws_url, TOKEN)
        sent = await on_a.ok("chat.send", {"sessionKey": key, "message": "wait"})
        while not a.provider.streams:
            await deferLater(reactor, 0.01, lambda: None)
        response = await http_client(self).post(
            f"{b.url}/sessions/{key}/kill", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.assertEqual(response.code, 200)
        body = json.loads(await response.content())
        self.assertEqual(body, {"ok": True, "killed": True, "runIds": [sent["runId"]]})
        self.assertEqual((await final(on_a))["payload"]["state"], "aborted")

    async def test_one_turn_of_a_session_at_a_time_over_both_gateways(self) -> None:
        _, a, b = await pair(self, Script(deltas=("slow", " answer"), delta_delay=0.05))
        key = "agent:main:lane"
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        first = await on_a.ok("chat.send", {"sessionKey": key, "message": "first"})
        while not a.provider.requests:
            await deferLater(reactor, 0.005, lambda: None)
        second = await on_b.ok("chat.send", {"sessionKey": key, "message": "second"})
        await final(on_b)
        # B's turn began only after A's was written: its model saw A's whole turn.
        asked = [(m.role, m.text) for m in b.provider.requests[0].messages]
        self.assertEqual(
            asked, [("user", "first"), ("assistant", "slow answer"), ("user", "second")]
        )
        history = await on_a.ok("chat.history", {"sessionKey": key})
        self.assertEqual(
            [m["runId"] for m in history["messages"]],
            [first["runId"], first["runId"], second["runId"], second["runId"]],
        )

    async def test_an_address_locked_out_on_one_is_locked_out_on_both(self) -> None:
        rate = {"maxAttempts": 2, "exemptLoopback": False}
        _, a, b = await pair(self, auth={"token": TOKEN, "rateLimit": rate})
        hi = {"messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            status, body, _ = await chat(self, a, hi, token="wrong")
            self.assertEqual(status, 401, body)
        status, body, headers = await chat(self, b, hi)
        self.assertEqual(status, 429, body)
        self.assertEqual(body["error"]["type"], "rate_limited")
        self.assertGreater(int(headers["retry-after"]), 0)
        status, _, _ = await chat(self, a, hi)
        self.assertEqual(status, 429)

        client = await ws_connect(self, b.ws_url)
        await client.frames.get()
        client.send_json(connect_frame(TOKEN))
        refused = await client.frames.get()
        self.assertEqual(refused["error"]["code"], "RATE_LIMITED")
        self.assertEqual(await client.closed, 1008)
