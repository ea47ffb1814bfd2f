"""Run floods on loopback: caps per connection and per client, the upstream cap, the backlog."""

from __future__ import annotations

import json
import select
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config, tap
from openclaw_twisted.testing import FakeUpstream, Reply, Script, ScriptedProvider

from ..support import http_client, listen
from ..ws.helpers import TOKEN, Session, make_gateway, open_session, serve

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def scripted(limits: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "auth": {"token": TOKEN},
            "limits": limits,
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
        },
        "agents": {"defaults": {"model": "scripted/m"}},
        **extra,
    }


def own(i: int) -> dict[str, Any]:
    """A run in a session of its own (runs on one session key wait for each other)."""
    return {"message": f"message {i}", "sessionKey": f"agent:main:s{i}"}


async def aborted(s: Session, run_id: str) -> None:
    """Abort a ``chat.send`` run and wait until it has ended."""
    await s.ok("chat.abort", {"runId": run_id})
    while True:
        event = (await s.event("chat"))["payload"]
        if event["runId"] == run_id and event["state"] == "aborted":
            return


class RunCapTests(TestCase):
    timeout = 30

    async def start(self, limits: dict[str, Any]) -> str:
        self.provider = ScriptedProvider(Script(hang=True))
        self.gateway = make_gateway(self, scripted(limits), providers=(self.provider,))
        self.addCleanup(lambda: self.gateway.shutdown(0))
        return await serve(self, self.gateway)

    async def test_one_connection_cannot_start_more_runs_than_its_cap(self) -> None:
        url = await self.start({"maxRunsPerConnection": 3})
        s = await open_session(self, url)
        started = [await s.ok("chat.send", own(i)) for i in range(3)]
        refused = await s.call("chat.send", own(3))
        self.assertFalse(refused["ok"])
        error = refused["error"]
        self.assertEqual(error["code"], "RATE_LIMITED")
        self.assertIn("3 runs in flight", error["message"])
        self.assertIn("gateway.limits.maxRunsPerConnection", error["message"])
        self.assertEqual(
            error["details"],
            {"scope": "connection", "limit": 3, "configKey": "gateway.limits.maxRunsPerConnection"},
        )
        agent = await s.call("agent", own(4))
        self.assertEqual(agent["error"]["code"], "RATE_LIMITED")
        self.assertEqual(len(self.provider.requests), 3)
        # Once a run ends there is room again.
        await aborted(s, started[0]["runId"])
        self.assertEqual((await s.ok("chat.send", own(5)))["status"], "started")
        # An idempotent repeat starts nothing, so it is not refused.
        await aborted(s, started[1]["runId"])
        again = await s.ok("chat.send", {**own(6), "idempotencyKey": "k"})
        self.assertEqual(again["status"], "started")
        repeat = await s.ok("chat.send", {**own(6), "idempotencyKey": "k"})
        self.assertEqual((repeat["runId"], repeat["status"]), (again["runId"], "in_flight"))

    async def test_one_client_address_is_capped_over_connections_and_http(self) -> None:
        url = await self.start({"maxRunsPerClient": 3})
        a = await open_session(self, url, client_id="a")
        b = await open_session(self, url, client_id="b")
        await a.ok("chat.send", own(1))
        await a.ok("agent", own(2))
        await b.ok("chat.send", own(3))
        refused = await b.call("chat.send", own(4))
        self.assertEqual(refused["error"]["code"], "RATE_LIMITED")
        self.assertEqual(refused["error"]["details"]["scope"], "client")
        self.assertIn("gateway.limits.maxRunsPerClient", refused["error"]["message"])
        http = http_client(self)
        response = await http.post(
            url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "5"}]},
            headers=AUTH,
        )
        body = json.loads(await response.content())
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertIsNone(response.headers.getRawHeaders("x-should-retry"))
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        self.assertEqual(body["error"]["code"], "too_many_runs")
        self.assertIn("3 runs in flight", body["error"]["message"])
        self.assertIn("gateway.limits.maxRunsPerClient", body["error"]["message"])
        self.assertEqual(len(self.provider.requests), 3)

    async def test_chat_runs_end_with_their_connection(self) -> None:
        url = await self.start({})
        s = await open_session(self, url)
        runs = [(await s.ok("chat.send", own(i)))["runId"] for i in range(3)]
        agent = await s.call("agent", own(3))
        agent_run = self.gateway.runner.active[agent["payload"]["runId"]]
        active = [self.gateway.runner.active[r] for r in runs]
        s.client.sendClose()
        await s.client.closed
        for run in active:
            result = await run.wait()
            self.assertEqual(result.stop_reason, "aborted")
        self.assertTrue(all(stream.cancelled for stream in self.provider.streams[:3]))
        # An ``agent`` run is reached again with agent.wait or its idempotencyKey.
        self.assertIsNone(agent_run.result)
        self.assertEqual(list(self.gateway.runner.active), [agent_run.run_id])
        self.assertEqual(self.gateway.limits.in_flight("127.0.0.1"), 1)


class UpstreamCapTests(TestCase):
    timeout = 30

    async def start(self, limits: dict[str, Any]) -> str:
        # The model server answers on a Clock: a request waits there until the test advances it.
        self.clock = Clock()
        self.upstream = await FakeUpstream.start(reactor, self.clock)
        self.addCleanup(self.upstream.stop)
        self.upstream.default = Reply(accept_delay=1.0)
        data = self.upstream.gateway_config(token=TOKEN, api_key=None)
        data["gateway"]["limits"] = limits
        config = parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()})
        self.gateway = Gateway(config, reactor)
        self.addCleanup(lambda: self.gateway.shutdown(0))
        self.http = http_client(self)
        return await listen(self, self.gateway) + "/v1/chat/completions"

    def post(self, url: str, text: str) -> Any:
        body = {"messages": [{"role": "user", "content": text}]}
        return self.http.post(url, json=body, headers=AUTH)

    def queued(self, n: int) -> Deferred[None]:
        """Fires once ``n`` runs wait for a provider connection."""
        gate = self.gateway.providers.gate
        assert gate is not None
        d: Deferred[None] = Deferred()
        acquire = gate.acquire

        def counting() -> Deferred[None]:
            slot = acquire()
            if gate.queued >= n and not d.called:
                d.callback(None)
            return slot

        gate.acquire = counting  # type: ignore[method-assign]
        return d

    def open_upstream(self) -> int:
        return sum(1 for r in self.upstream.requests if not r.completed)

    async def test_runs_past_the_cap_wait_for_a_provider_connection(self) -> None:
        url = await self.start({"maxUpstreamConnections": 2})
        three_wait = self.queued(3)
        posts = [self.post(url, f"m{i}") for i in range(5)]
        await self.upstream.request(1)
        await three_wait
        self.assertEqual((len(self.upstream.requests), self.open_upstream()), (2, 2))
        # A waiting run gets a connection as soon as a running one is done with its own.
        self.clock.advance(1)
        await self.upstream.request(3)
        self.assertEqual((len(self.upstream.requests), self.open_upstream()), (4, 2))
        self.clock.advance(1)
        await self.upstream.request(4)
        self.assertEqual(self.open_upstream(), 1)
        self.clock.advance(1)
        responses = [await p for p in posts]
        self.assertEqual([r.code for r in responses], [200] * 5)
        gate = self.gateway.providers.gate
        assert gate is not None
        self.assertEqual((gate.active, gate.queued), (0, 0))

    async def test_past_the_waiting_room_a_run_is_refused_at_once(self) -> None:
        url = await self.start({"maxUpstreamConnections": 1, "maxUpstreamWaiting": 0})
        holding = self.post(url, "holds the only connection")
        await self.upstream.request(0)
        response = await self.post(url, "refused")
        body = json.loads(await response.content())
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
        self.assertEqual(body["error"]["code"], "gateway_overloaded")
        self.assertIn("gateway.limits.maxUpstreamConnections", body["error"]["message"])
        self.assertEqual(len(self.upstream.requests), 1)
        self.clock.advance(1)
        self.assertEqual((await holding).code, 200)


class BacklogTests(TestCase):
    timeout = 30

    async def test_many_simultaneous_connects_are_all_queued_for_accept(self) -> None:
        env = {"OPENCLAW_STATE_DIR": self.mktemp(), "OPENCLAW_GATEWAY_TOKEN": "t"}
        _, description = tap.resolve({"port": "0"}, env)
        self.assertTrue(description.endswith(":backlog=1024"), description)
        port = await serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        # All connect before the reactor accepts any: only the kernel's accept queue holds
        # them, so a backlog of 50 completes about 51 handshakes and leaves the rest waiting.
        for _ in range(300):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(address)
            clients.append(c)
        pending = set(clients)
        connected = 0
        while pending:
            _, writable, _ = select.select([], list(pending), [], 0.5)
            if not writable:
                break
            for c in writable:
                pending.discard(c)
                connected += c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        self.assertEqual(connected, 300)
