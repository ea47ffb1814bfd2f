"""The HTTP edge and an answer it cannot deliver: the run is cancelled, the session runs again."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.testing import FakeUpstream, Reply, Script, ScriptedProvider, parse_sse

from ..support import http_client, listen
from ..ws.helpers import open_session
from .memory import TOKEN, MemoryClient, make_gateway, post

#: More deltas than a run buffers for a reader that stopped pulling (EVENT_BUFFER is 16).
LONG = tuple(f" {i}" for i in range(40))
SESSION = {"x-openclaw-session-key": "agent:main:undeliverable"}


def chat(stream: bool, text: str = "hi") -> dict[str, Any]:
    return {"model": "openclaw", "stream": stream, "messages": [{"role": "user", "content": text}]}


class LoneSurrogateTests(TestCase):
    """A real model server on loopback sends ``"\\ud800"`` (legal JSON) mid-answer."""

    timeout = 10

    async def test_streamed_and_json_answers_carry_it_escaped(self) -> None:
        upstream = await FakeUpstream.start(reactor)
        self.addCleanup(upstream.stop)
        answer = ("a", "\ud800", *LONG)
        upstream.script(*(Reply(deltas=answer) for _ in range(2)), Reply(deltas=("next",)))
        data = upstream.gateway_config()
        gateway = Gateway(parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()}), reactor)
        self.addCleanup(lambda: gateway.shutdown(0))
        base = await listen(self, gateway)
        url = base + "/v1/chat/completions"
        # A WebSocket client watching (a control UI): it gets the HTTP run's events too.
        observer = await open_session(self, base)
        http = http_client(self)
        headers = {"Authorization": f"Bearer {TOKEN}", **SESSION}

        r = await http.post(url, json=chat(True), headers=headers)
        body = await r.content()
        self.assertEqual(r.code, 200)
        self.assertIn(b'"content":"\\ud800"', body)
        events = parse_sse(body)
        self.assertEqual(events[-1], "[DONE]")
        deltas = [e["choices"][0]["delta"].get("content") for e in events[1:-2]]
        self.assertEqual(deltas, list(answer))
        seen = []
        while (event := (await observer.event("agent"))["payload"])["data"].get("phase") != "end":
            seen.append(event["data"].get("delta"))
        # Observers get the deltas merged (at most one event per 150 ms): the same text.
        self.assertEqual("".join(d for d in seen if d), "".join(answer))

        r = await http.post(url, json=chat(False), headers=headers)
        body = await r.content()
        self.assertEqual(r.code, 200)
        self.assertIn(b"a\\ud800 0", body)
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"], "".join(answer))

        # The session is usable again, and its history (both answers) went to the model.
        r = await http.post(url, json=chat(False, "again"), headers=headers)
        self.assertEqual((await r.json())["choices"][0]["message"]["content"], "next")
        sent = (await upstream.request(2)).json["messages"]
        self.assertEqual([m["content"] for m in sent[-2:]], ["".join(answer), "again"])
        self.assertEqual(gateway.runner.active, {})


class BrokenTransport(MemoryClient):
    """A client connection whose transport raises once ``broken`` writes have gone through."""

    def __init__(self, gateway: Gateway, writes_before_breaking: int) -> None:
        super().__init__(gateway)
        self.left = writes_before_breaking
        write = self.transport.write

        def failing(data: bytes) -> None:
            if self.left <= 0:
                raise OSError("the transport refused the write")
            self.left -= 1
            write(data)

        self.transport.write = failing  # type: ignore[method-assign]


class UnwritableStreamTests(SynchronousTestCase):
    """An SSE answer the transport refuses: the run leaves the runner and frees its lane."""

    def setUp(self) -> None:
        self.provider = ScriptedProvider(Script(deltas=("first", *LONG)))
        self.gateway = make_gateway(self.mktemp(), self.provider)

    def check_cancelled_and_usable(self, client: MemoryClient) -> None:
        self.assertEqual(self.gateway.runner.active, {})
        self.assertTrue(self.provider.streams[0].cancelled)
        self.assertLess(self.provider.streams[0].sent, 1 + len(LONG))
        self.assertTrue(client.transport.disconnecting, "the connection was left open")
        self.flushLoggedErrors(OSError)
        r = post(self.gateway, chat(False, "again"), headers=SESSION)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["choices"][0]["message"]["content"], "first" + "".join(LONG))

    def test_first_write_fails(self) -> None:
        client = BrokenTransport(self.gateway, 0)
        client.request(body=chat(True), headers=SESSION)
        self.check_cancelled_and_usable(client)

    def test_write_fails_mid_answer(self) -> None:
        client = BrokenTransport(self.gateway, 3)
        client.request(body=chat(True), headers=SESSION)
        self.check_cancelled_and_usable(client)
