"""Gateways on a Redis that dies: fast 503s, no hangs, recovery; a gateway SIGKILLed mid-turn."""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from openclaw_twisted.cluster import RedisTranscripts
from openclaw_twisted.testing import FakeUpstream, Reply, Script

from ..redis_support import connect, start_redis
from ..support import GatewayProcess, child_env, http_client, spawn
from ..ws.helpers import open_session
from .gateways import TOKEN, chat, cluster_config, pair

ASK = {"messages": [{"role": "user", "content": "hi"}]}


class RedisGoneTests(TestCase):
    timeout = 30  # a request that hangs fails the test

    async def test_redis_killed_mid_load_fails_fast_with_503_then_recovers(self) -> None:
        server, a, b = await pair(self, Script(deltas=("a", "b", "c"), delta_delay=0.2))
        session = await open_session(self, b.ws_url, TOKEN)
        # A turn in flight on each gateway when Redis dies; its transcript cannot be written.
        in_flight = [
            Deferred.fromCoroutine(chat(self, at, {"user": f"u{i}", **ASK}))
            for i, at in enumerate((a, b))
        ]
        while len(a.provider.requests) + len(b.provider.requests) < 2:
            await _tick()
        server.kill()
        for status, body, headers in await gatherResults(in_flight):
            self.assertEqual(status, 503, body)
            self.assertEqual(body["error"]["code"], "session_store_unavailable")
            self.assertEqual(body["error"]["type"], "api_error")
            self.assertEqual(headers["retry-after"], "1")
            self.assertNotIn(str(server.port), body["error"]["message"])
        # New turns are refused at once on both, over HTTP and WebSocket alike.
        refused = await gatherResults(
            [
                Deferred.fromCoroutine(chat(self, at, {"user": "later", **ASK}))
                for at in (a, b, a, b)
            ]
        )
        self.assertEqual([r[0] for r in refused], [503] * 4)
        self.assertEqual(
            refused[0][1]["error"]["message"],
            "The session store is unavailable; try again in a moment.",
        )
        history = await session.call("chat.history", {"sessionKey": "agent:main:main"})
        self.assertEqual(history["error"]["code"], "UNAVAILABLE")
        sent = await session.ok("chat.send", {"sessionKey": "agent:main:k", "message": "x"})
        self.assertEqual(sent["status"], "started")
        ended = await session.event("chat")
        self.assertEqual(ended["payload"]["errorKind"], "session_store_unavailable")
        # A stateless request keeps nothing and needs no Redis.
        status, body, _ = await chat(self, a, ASK)
        self.assertEqual(status, 200, body)
        # Redis comes back: both gateways reconnect by themselves and serve the session.
        server.start()
        for at in (a, b):
            assert at.gateway.redis is not None
            await at.gateway.redis.when_connected()
        status, body, _ = await chat(self, a, {"user": "u0", **ASK})
        self.assertEqual(status, 200, body)
        status, body, _ = await chat(self, b, {"user": "u0", **ASK})
        self.assertEqual(status, 200, body)
        self.assertEqual(len(b.provider.requests[-1].messages), 3)

    async def test_a_shared_limiter_that_cannot_be_read_refuses_with_503(self) -> None:
        rate = {"maxAttempts": 3}
        server, a, _ = await pair(self, auth={"token": TOKEN, "rateLimit": rate})
        server.kill()
        status, body, _ = await chat(self, a, ASK)
        self.assertEqual(status, 503, body)
        self.assertEqual(body["error"]["code"], "session_store_unavailable")
        response = await http_client(self).get(
            a.url + "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.assertEqual(response.code, 503)
        await response.content()


async def _tick() -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.005, d.callback, None)
    await d


class GatewayCrashTests(TestCase):
    """Two gateway processes on one Redis; the one running a turn is SIGKILLed in it."""

    timeout = 60

    async def gateway(self, upstream: FakeUpstream, redis_url: str) -> tuple[GatewayProcess, str]:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        config: dict[str, Any] = cluster_config(redis_url)
        config["session"]["redis"]["leaseSeconds"] = 2
        config["agents"]["defaults"]["model"] = "fake/m"
        config["models"] = {"providers": {"fake": upstream.provider_config()}}
        with open(os.path.join(state, "openclaw.json"), "w") as f:
            json.dump(config, f)
        args = ["-m", "openclaw_twisted.cli", "gateway", "--port", "tcp:0:interface=127.0.0.1"]
        proc = spawn(self, args, child_env(state))
        line = await proc.line_with(b"openclaw gateway listening on")
        port = re.search(rb"127\.0\.0\.1:(\d+)", line)
        assert port is not None, line
        return proc, f"http://127.0.0.1:{int(port.group(1))}"

    async def post(self, url: str, content: str, **extra: Any) -> Any:
        return await http_client(self).post(
            url + "/v1/chat/completions",
            data=json.dumps(
                {
                    "model": "openclaw",
                    "user": "crash",
                    **extra,
                    "messages": [{"role": "user", "content": content}],
                }
            ).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )

    async def test_sigkill_mid_turn_loses_no_completed_turn_and_frees_the_session(self) -> None:
        redis = start_redis(self, appendonly=True)
        upstream = await FakeUpstream.start(reactor)
        self.addCleanup(upstream.stop)
        upstream.script(
            Reply(deltas=["one"]),
            Reply(deltas=["two"]),
            Reply(deltas=["thr", "ee"], stall_after=1),  # the turn A is killed in
            Reply(deltas=["four"]),
        )
        (a, url_a), (_, url_b) = await gatherResults(
            [
                Deferred.fromCoroutine(self.gateway(upstream, redis.url)),
                Deferred.fromCoroutine(self.gateway(upstream, redis.url)),
            ]
        )
        for n, at in (("1", url_a), ("2", url_b)):
            response = await self.post(at, f"turn {n}")
            self.assertEqual(response.code, 200, await response.text())
            await response.content()
        # Turn 3 on A streams its first token, and A dies holding the session's lease.
        first: Deferred[None] = Deferred()
        response = await self.post(url_a, "turn 3", stream=True)
        body = treq.collect(response, lambda data: first.called or first.callback(None))
        body.addErrback(lambda _: None)
        await first
        assert a.transport is not None
        a.transport.signalProcess("KILL")
        await a.ended
        self.assertEqual(a.signal, signal.SIGKILL)
        # B serves the session once the lease (2 s) has run out.
        started = reactor.seconds()
        response = await self.post(url_b, "turn 4")
        self.assertEqual(response.code, 200, await response.text())
        answer = json.loads(await response.content())
        self.assertEqual(answer["choices"][0]["message"]["content"], "four")
        self.assertLess(reactor.seconds() - started, 2 + 5)
        sent = [(m["role"], m["content"]) for m in upstream.requests[3].json["messages"]]
        self.assertEqual(
            sent[1:],  # after the system prompt; the killed turn never completed
            [
                ("user", "turn 1"),
                ("assistant", "one"),
                ("user", "turn 2"),
                ("assistant", "two"),
                ("user", "turn 4"),
            ],
        )
        client = await connect(self, redis)
        records = await RedisTranscripts(client).records("main", "agent:main:openai-user:crash")
        self.assertEqual(
            [r["text"] for r in records], ["turn 1", "one", "turn 2", "two", "turn 4", "four"]
        )
