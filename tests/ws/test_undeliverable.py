"""A WS event that cannot be delivered cancels its run: the session's next turn still runs."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.testing import FakeUpstream, Reply, Script, ScriptedProvider

from ..support import listen
from .helpers import TOKEN, Session, make_gateway, open_session, ws_factory

#: More deltas than a run buffers for a reader that stopped pulling (EVENT_BUFFER is 16).
LONG = tuple(f" {i}" for i in range(40))
KEY = "agent:main:surrogate"


async def chat_until_end(s: Session, req_id: str) -> tuple[list[str], dict[str, Any]]:
    """The deltas of a ``chat.send`` and its last chat event, or the request's error reply."""
    deltas: list[str] = []
    while True:
        frame = await s.client.frames.get()
        if frame is None:
            raise AssertionError("connection closed during the run")
        if frame["type"] == "res":
            assert frame["id"] == req_id and frame["ok"], f"chat.send failed: {frame}"
            continue
        if frame["event"] != "chat":
            s.events.append(frame)
            continue
        payload = frame["payload"]
        if payload["state"] != "delta":
            return deltas, payload
        deltas.append(payload["delta"])


class LoneSurrogateTests(TestCase):
    """A real model server sends ``"\\ud800"`` (legal JSON) in the middle of an answer."""

    timeout = 10

    async def start(self, *replies: Reply) -> str:
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
        self.gateway = Gateway(parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()}), reactor)
        self.addCleanup(lambda: self.gateway.shutdown(0))
        return await listen(self, self.gateway)

    async def test_chat_send_delivers_it_and_the_next_chat_send_runs(self) -> None:
        url = await self.start(Reply(deltas=("a", "\ud800", *LONG)), Reply(deltas=("next",)))
        observer = await open_session(self, url, client_id="observer")
        s = await open_session(self, url)
        deltas, end = await chat_until_end(
            s, s.send("chat.send", {"sessionKey": KEY, "message": "hi"})
        )
        self.assertEqual(end["state"], "final", end)
        self.assertEqual(deltas, ["a", "\ud800", *LONG])
        self.assertEqual(end["message"]["content"][0]["text"], "a\ud800" + "".join(LONG))
        # Other clients got it too (the broadcast encodes each event once, by the same encoder).
        seen = []
        while (event := (await observer.event("agent"))["payload"])["data"].get("phase") != "end":
            seen.append(event["data"].get("delta"))
        # Observers get the deltas merged (at most one event per 150 ms): the same text.
        self.assertEqual("".join(d for d in seen if d), "a\ud800" + "".join(LONG))
        self.assertEqual(self.gateway.runner.active, {})
        deltas, end = await chat_until_end(
            s, s.send("chat.send", {"sessionKey": KEY, "message": "again"})
        )
        self.assertEqual((deltas, end["state"]), (["next"], "final"))
        history = await s.ok("chat.history", {"sessionKey": KEY})
        texts = [m["content"][0]["text"] for m in history["messages"]]
        self.assertEqual(texts, ["hi", "a\ud800" + "".join(LONG), "again", "next"])

    async def test_agent_answers_with_it(self) -> None:
        url = await self.start(Reply(deltas=("\ud800", *LONG)), Reply(deltas=("next",)))
        s = await open_session(self, url)
        req = s.send("agent", {"sessionKey": KEY, "message": "hi"})
        self.assertTrue((await s.res(req))["ok"])
        final = await s.res(req)
        self.assertTrue(final["ok"], final)
        self.assertEqual(
            final["payload"]["result"]["payloads"][0]["text"], "\ud800" + "".join(LONG)
        )
        again = await s.call("agent", {"sessionKey": KEY, "message": "again"})
        self.assertTrue(again["ok"])
        final = await s.res(again["id"])
        self.assertEqual(final["payload"]["result"]["payloads"][0]["text"], "next")


class UnsendableFrameTests(TestCase):
    """A frame the connection cannot write (its transport raises): the run is cancelled."""

    timeout = 10

    async def start(self) -> Session:
        self.provider = ScriptedProvider(Script(deltas=("first", *LONG)))
        config = {
            "gateway": {"auth": {"token": TOKEN}},
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        self.gateway = make_gateway(self, config, providers=(self.provider,))
        self.addCleanup(lambda: self.gateway.shutdown(0))
        s = await open_session(self, await listen(self, self.gateway))
        (conn,) = ws_factory(self.gateway).connections
        send = conn.sendMessage

        def broken_once(data: bytes, *args: Any, **kwargs: Any) -> None:
            # The first delta's frame meets a transport that fails; later frames go through.
            if b'"first"' in data and not self.broke:
                self.broke = True
                raise OSError("the transport refused the write")
            send(data, *args, **kwargs)

        self.broke = False
        conn.sendMessage = broken_once  # type: ignore[method-assign]
        return s

    async def test_chat_send_run_is_cancelled_and_the_session_runs_again(self) -> None:
        s = await self.start()
        deltas, end = await chat_until_end(
            s, s.send("chat.send", {"sessionKey": KEY, "message": "hi"})
        )
        self.assertTrue(self.broke)
        self.assertNotIn("first", deltas)
        self.assertEqual((end["state"], end["errorKind"]), ("error", "internal_error"), end)
        self.assertEqual(self.gateway.runner.active, {})
        self.assertTrue(self.provider.streams[0].cancelled)
        self.assertLess(len(deltas), len(LONG))
        self.flushLoggedErrors(OSError)
        deltas, end = await chat_until_end(
            s, s.send("chat.send", {"sessionKey": KEY, "message": "again"})
        )
        self.assertEqual(end["state"], "final")
        self.assertEqual("".join(deltas), "first" + "".join(LONG))

    async def test_agent_run_is_cancelled_with_an_internal_error(self) -> None:
        s = await self.start()
        req = s.send("agent", {"sessionKey": KEY, "message": "hi"})
        self.assertTrue((await s.res(req))["ok"])
        final = await s.res(req)
        self.assertFalse(final["ok"])
        self.assertEqual(final["error"]["code"], "INTERNAL")
        self.assertEqual(final["error"]["details"]["kind"], "internal_error")
        self.assertEqual(self.gateway.runner.active, {})
        self.assertTrue(self.provider.streams[0].cancelled)
        self.flushLoggedErrors(OSError)
        again = await s.call("agent", {"sessionKey": KEY, "message": "again"})
        final = await s.res(again["id"])
        self.assertTrue(final["ok"], final)
