"""A gateway process started as a user starts it: SIGKILL mid-turn loses nothing that was
answered; SIGTERM under load ends every stream properly within the grace period."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.gateway import DRAIN_SECONDS
from openclaw_twisted.testing import FakeUpstream, Reply, parse_sse

from ..support import GatewayProcess, child_env, spawn, twistd_args
from ..web.memory import TOKEN
from ..web.test_loopback import until
from ..ws.helpers import open_session

LISTENING = re.compile(rb"openclaw gateway listening on http://([\d.]+):(\d+)")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SESSIONS = 50
STREAMS = 100


class ProcessBase(TestCase):
    timeout = 60

    async def upstream(self, reply: Reply) -> FakeUpstream:
        server = await FakeUpstream.start(reactor)
        self.addCleanup(server.stop)
        server.default = reply
        return server

    def state_dir(self, server: FakeUpstream) -> str:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        config = server.gateway_config(token=TOKEN)
        with open(os.path.join(state, "openclaw.json"), "w") as f:
            json.dump(config, f)
        return state

    async def gateway(self, state: str, *options: str) -> tuple[GatewayProcess, str]:
        """``twistd -n openclaw`` on a free port; the process and its base URL."""
        args = twistd_args("--port", "tcp:0:interface=127.0.0.1", *options)
        proc = spawn(self, args, child_env(state))
        line = await proc.line_with(b"openclaw gateway listening on")
        m = LISTENING.search(line)
        assert m is not None, line
        return proc, f"http://127.0.0.1:{int(m.group(2))}"

    def client(self) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(Agent(reactor, pool=pool))


class CrashTests(ProcessBase):
    async def test_sigkill_mid_turn_loses_no_answered_turn(self) -> None:
        server = await self.upstream(Reply(deltas=("part ",) * 10, delay=0.02))
        state = self.state_dir(server)
        proc, url = await self.gateway(state)
        http = self.client()
        answered: dict[str, list[str]] = {f"s{i}": [] for i in range(SESSIONS)}
        killed = False

        async def converse(key: str) -> None:
            turn = 0
            while not killed:
                text = f"{key} turn {turn}"
                try:
                    r = await http.post(
                        url + "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": text}]},
                        headers={**AUTH, "x-openclaw-session-key": key},
                    )
                    body = json.loads(await r.content())
                except Exception:
                    return  # the gateway died under this request
                assert r.code == 200, body
                answered[key].append(text)
                turn += 1

        talks = [Deferred.fromCoroutine(converse(key)) for key in answered]

        # Every session has an answered turn and (with the next one sent at once) is mid-turn.
        def mid_turn() -> int:
            return len(server.requests) - sum(len(v) for v in answered.values())

        await until(lambda: all(answered.values()) and mid_turn() >= SESSIONS // 2, limit=30)
        in_flight = mid_turn()
        assert proc.transport is not None
        proc.transport.signalProcess("KILL")
        killed = True
        await proc.ended
        self.assertEqual(proc.signal, signal.SIGKILL)
        await gatherResults(talks)
        self.assertGreater(in_flight, 0)

        # Started again on the same state: every session loads and takes its next turn.
        server.default = Reply(deltas=("ok",))
        proc, url = await self.gateway(state)
        before = len(server.requests)

        async def again(key: str) -> None:
            r = await http.post(
                url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": f"{key} again"}]},
                headers={**AUTH, "x-openclaw-session-key": key},
            )
            body = await r.content()
            self.assertEqual(r.code, 200, body)

        await gatherResults([Deferred.fromCoroutine(again(key)) for key in answered])
        self.assertEqual(len(server.requests), before + SESSIONS)
        # What the provider was sent after the restart, by the message that asked.
        after = {r.json["messages"][-1]["content"]: r.json for r in server.requests[before:]}

        store = DiskSessionStore(state)
        for key, texts in answered.items():
            records = self.successResultOf(store.transcript("main", key))
            users = [r["text"] for r in records if r.get("role") == "user"]
            counts = Counter(users)
            self.assertEqual([t for t, n in counts.items() if n > 1], [], "duplicated turns")
            for text in texts:
                self.assertIn(text, counts, f"an answered turn of {key} was lost")
            self.assertEqual(users[-1], f"{key} again")
            # The history the provider saw after the restart holds every answered turn.
            sent = after[f"{key} again"]["messages"]
            seen = [m["content"] for m in sent if m["role"] == "user"]
            for text in texts:
                self.assertIn(text, seen)
            run_ids = [r["runId"] for r in records if r.get("role") == "assistant"]
            self.assertEqual(len(run_ids), len(set(run_ids)))


class GracefulStopTests(ProcessBase):
    async def test_sigterm_with_open_streams(self) -> None:
        grace = 1.0
        server = await self.upstream(Reply(deltas=("tick ",) * 1000, delay=0.05))
        state = self.state_dir(server)
        proc, url = await self.gateway(state, "--grace", str(grace))
        http = self.client()
        started: list[Deferred[None]] = []
        cut: list[str] = []

        async def stream(i: int) -> list[Any]:
            r = await http.post(
                url + "/v1/chat/completions",
                json={"stream": True, "messages": [{"role": "user", "content": f"n{i}"}]},
                headers=AUTH,
            )
            assert r.code == 200
            first: Deferred[None] = Deferred()
            started.append(first)
            body = bytearray()

            def got(data: bytes) -> None:
                body.extend(data)
                if b'"content"' in body and not first.called:
                    first.callback(None)

            try:
                await r.collect(got)
            except Exception as e:
                cut.append(repr(e)[:200])
            return parse_sse(bytes(body))

        streams = [Deferred.fromCoroutine(stream(i)) for i in range(STREAMS)]
        ws = [await open_session(self, url) for _ in range(3)]
        await until(lambda: len(started) == STREAMS, limit=30)
        await DeferredList(started)  # every stream has had text

        began = time.monotonic()
        proc.terminate()
        results = await gatherResults(streams)
        await proc.ended
        took = time.monotonic() - began

        self.assertEqual(cut, [], "responses not finished")
        for events in results:
            self.assertEqual(events[-1], "[DONE]")
            self.assertEqual(events[-2]["error"]["code"], "shutdown")
            self.assertIn("content", events[1]["choices"][0]["delta"])
        for session in ws:
            shutdown = await session.event("shutdown")
            self.assertEqual(shutdown["event"], "shutdown")
        self.assertLess(took, grace + DRAIN_SECONDS)  # about grace + 0.3 s here
        self.assertIn(b"openclaw gateway stopped", proc.out)
        self.assertEqual(proc.signal, signal.SIGTERM)
