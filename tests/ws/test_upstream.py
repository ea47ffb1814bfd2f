"""WS runs against a real provider on loopback: abort closes the model's connection."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.testing import FakeUpstream, Reply

from ..support import listen
from .helpers import TOKEN, Session, open_session


class UpstreamTests(TestCase):
    timeout = 10

    async def start(self, *replies: Reply) -> Session:
        self.upstream = await FakeUpstream.start(reactor)
        self.addCleanup(self.upstream.stop)
        self.upstream.script(*replies)
        p = self.upstream.provider("fake", "openai-completions", models=["m"])
        data = {
            "gateway": {"auth": {"token": TOKEN}},
            "agents": {"defaults": {"model": "fake/m"}},
            "models": {
                "providers": {
                    "fake": {
                        "baseUrl": p.base_url,
                        "apiKey": p.api_key,
                        "api": p.api,
                        "models": [{"id": "m"}],
                    }
                }
            },
        }
        gateway = Gateway(parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()}), reactor)
        self.addCleanup(lambda: gateway.shutdown(0))
        return await open_session(self, await listen(self, gateway))

    async def test_chat_streams_from_the_provider(self) -> None:
        s = await self.start(Reply(deltas=("Bonjour", " le", " monde")))
        await s.ok("chat.send", {"sessionKey": "agent:main:up", "message": "hi"})
        deltas = []
        while (event := (await s.event("chat"))["payload"])["state"] == "delta":
            deltas.append(event["delta"])
        self.assertEqual(deltas, ["Bonjour", " le", " monde"])
        self.assertEqual(event["state"], "final")
        self.assertEqual(event["usage"], {"input": 11, "output": 3, "total": 14})
        self.assertEqual(self.upstream.requests[0].json["messages"][-1]["content"], "hi")

    async def test_chat_abort_closes_the_provider_connection(self) -> None:
        s = await self.start(Reply(deltas=("one", " two", " three"), stall_after=1))
        sent = await s.ok("chat.send", {"sessionKey": "agent:main:up", "message": "hi"})
        first = (await s.event("chat"))["payload"]
        self.assertEqual((first["state"], first["delta"]), ("delta", "one"))
        received = await self.upstream.request(0)
        self.assertFalse(received.disconnected.called)
        aborted = await s.ok("chat.abort", {"sessionKey": "agent:main:up"})
        self.assertEqual(aborted["runIds"], [sent["runId"]])
        await received.disconnected  # the model request was closed, not left streaming
        event = (await s.event("chat"))["payload"]
        self.assertEqual(event["state"], "aborted")
        self.assertEqual(event["message"]["content"][0]["text"], "one")
        history = await s.ok("chat.history", {"sessionKey": "agent:main:up"})
        self.assertEqual(
            [
                (m["role"], m["content"][0]["text"], m.get("stopReason"))
                for m in history["messages"]
            ],
            [("user", "hi", None), ("assistant", "one", "aborted")],
        )

    async def test_a_requester_that_stops_reading_pauses_the_provider_body(self) -> None:
        chunk = "x" * 4096
        s = await self.start(Reply(deltas=(chunk,) * 3000))  # 12 MB from the model
        s.client.transport.pauseProducing()
        s.send("chat.send", {"sessionKey": "agent:main:slow", "message": "hi"})
        # The WS socket fills, the run stops pulling, the provider stops reading, and the
        # model server is pushed back in turn.
        await self.upstream.paused
        received = self.upstream.requests[0]
        self.assertFalse(received.disconnected.called)
        s.client.transport.resumeProducing()
        deltas = 0
        while (event := (await s.event("chat"))["payload"])["state"] == "delta":
            deltas += 1
            if deltas == 1:
                # Enough: stop it; the upstream request is closed.
                s.send("chat.abort", {"sessionKey": "agent:main:slow"})
        self.assertEqual(event["state"], "aborted")
        self.assertLess(deltas, 3000)
        await received.disconnected
