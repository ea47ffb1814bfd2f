"""``idempotencyKey`` across two gateways on one Redis: one run per key, wherever it lands."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from openclaw_twisted.cluster._idempotency import (
    LONG_KEY_CHARS,
    Claim,
    RedisIdempotencyKeys,
    _held_by,
)
from openclaw_twisted.testing import Script
from openclaw_twisted.ws.handlers import start_run
from openclaw_twisted.ws.methods import MethodError
from openclaw_twisted.ws.runs import RunRegistry

from ..redis_support import connect, start_redis
from ..ws.helpers import make_gateway, open_session
from .gateways import TOKEN, pair


async def _tick() -> None:
    await deferLater(reactor, 0.005, lambda: None)


class ClaimTests(SynchronousTestCase):
    def test_a_claim_begins_with_what_the_scripts_compare(self) -> None:
        claim = Claim("run-1", 5, "main", "agent:main:main", 9, {"stopReason": "stop"})
        self.assertTrue(claim.to_json().startswith(_held_by("run-1")))
        self.assertFalse(claim.to_json().startswith(_held_by("run-")))
        self.assertEqual(Claim.from_json(claim.to_json()), claim)

    def test_names_keep_kinds_apart_and_hash_long_keys(self) -> None:
        keys = RedisIdempotencyKeys(None, None, reactor)  # type: ignore[arg-type]
        self.assertEqual(keys.name("agent", "k:1"), 'openclaw:idem:agent:"k:1"')
        self.assertNotEqual(keys.name("agent", "k"), keys.name("chat", "k"))
        long = keys.name("chat", "x" * 10_000)
        self.assertLess(len(long), len("openclaw:idem:chat:") + LONG_KEY_CHARS)
        self.assertNotEqual(long, keys.name("chat", "x" * 10_001))
        self.assertTrue(keys.name("chat", "\ud800").isascii())

    def test_a_file_store_gateway_keeps_keys_in_its_own_registry(self) -> None:
        edge = make_gateway(self).edge
        self.assertIsNone(edge.idempotency)
        self.assertIsNone(edge.store_up)
        self.assertIsNone(edge.not_ready)


class HeldKeys:
    """Claims answered when the test says (an IIdempotencyKeys that records releases)."""

    def __init__(self) -> None:
        self.pending: list[tuple[Deferred[Claim], Claim]] = []
        self.released: list[tuple[str, str, str]] = []

    def claim(
        self, kind: str, key: str, run_id: str, accepted_at: int, agent_id: str, session_key: str
    ) -> Deferred[Claim]:
        d: Deferred[Claim] = Deferred()
        self.pending.append((d, Claim(run_id, accepted_at, agent_id, session_key)))
        return d

    def release(self, kind: str, key: str, run_id: str) -> Deferred[None]:
        self.released.append((kind, key, run_id))
        return Deferred()


class Conn:
    """The little of a WebSocket connection ``start_run`` uses."""

    client_ip = "127.0.0.1"

    def __init__(self, registry: RunRegistry[Any]) -> None:
        self.registry = registry

    def runs_in_flight(self) -> int:
        return 0

    def hold(self, run: Any, kind: str) -> None:
        pass


class ClosedWhileClaimingTests(SynchronousTestCase):
    def test_no_run_starts_for_a_connection_gone_before_its_claim_came_back(self) -> None:
        gateway = make_gateway(self, clock=Clock())
        keys = HeldKeys()
        edge = attrs.evolve(gateway.edge, idempotency=keys)
        registry: RunRegistry[Any] = RunRegistry(edge.clock, edge.now_ms)
        conn = Conn(registry)
        registry.connections.add(conn)
        params = {"message": "hi", "idempotencyKey": "k"}
        d = ensureDeferred(start_run(edge, conn, "chat", params))  # type: ignore[arg-type]
        [(claimed, mine)] = keys.pending
        registry.connections.discard(conn)  # the client went away meanwhile
        claimed.callback(mine)
        self.assertEqual(self.failureResultOf(d, MethodError).value.code, "UNAVAILABLE")
        self.assertEqual(keys.released, [("chat", "k", mine.run_id)])
        self.assertEqual(gateway.runner.active, {})


class RedisClaimTests(TestCase):
    timeout = 30

    async def test_racing_claims_leave_one_winner(self) -> None:
        server = start_redis(self)
        clients = [await connect(self, server) for _ in range(4)]
        keys = [RedisIdempotencyKeys(c, None, reactor) for c in clients]  # type: ignore[arg-type]
        for round in range(20):
            claims = await gatherResults(
                [
                    k.claim("agent", f"key-{round}", f"run-{i}", i, "main", "agent:main:main")
                    for i, k in enumerate(keys)
                ]
            )
            won = [c.run_id for i, c in enumerate(claims) if c.run_id == f"run-{i}"]
            self.assertEqual(len(won), 1, claims)
            self.assertEqual({c.run_id for c in claims}, set(won))
            self.assertEqual({c.accepted_at for c in claims}, {int(won[0][4:])})

    async def test_only_the_holder_ends_or_releases_a_claim(self) -> None:
        server = start_redis(self)
        client = await connect(self, server)
        keys = RedisIdempotencyKeys(client, None, reactor)  # type: ignore[arg-type]
        mine = await keys.claim("chat", "k", "run-a", 1, "main", "s")
        await keys.release("chat", "k", "run-b")
        await keys.ended("chat", "k", Claim("run-b", 2, "main", "s", 3, {"stopReason": "x"}))
        self.assertEqual(await keys.holder("chat", "k"), mine)
        ended = Claim("run-a", 1, "main", "s", 4, {"stopReason": "stop"})
        await keys.ended("chat", "k", ended)
        self.assertEqual(await keys.holder("chat", "k"), ended)
        ttl = await client.execute("TTL", keys.name("chat", "k"))
        self.assertGreater(int(ttl), 3500)
        await keys.release("chat", "k", "run-a")
        self.assertIsNone(await keys.holder("chat", "k"))


class AcrossGatewaysTests(TestCase):
    timeout = 30

    async def test_agent_repeat_on_the_other_gateway_while_it_runs(self) -> None:
        _, a, b = await pair(self, Script(deltas=("slow", " answer"), delta_delay=0.4))
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        params = {"message": "hi", "idempotencyKey": "retry-1"}
        first = on_a.send("agent", params)
        accepted = (await on_a.res(first))["payload"]
        again = on_b.send("agent", params)
        repeated = await on_b.res(again)
        # Same run, same acceptedAt; it was still running when B answered.
        self.assertEqual(repeated["payload"], accepted)
        self.assertIn(accepted["runId"], a.gateway.runner.active)
        final = await on_a.res(first)
        self.assertTrue(final["ok"], final)
        self.assertEqual(final["payload"]["result"]["payloads"], [{"text": "slow answer"}])
        # B's second reply is A's final one, whole (text, usage, meta).
        self.assertEqual((await on_b.res(again))["payload"], final["payload"])
        self.assertEqual(len(a.provider.requests), 1)
        self.assertEqual(b.provider.requests, [])

    async def test_agent_repeat_after_the_end_answers_at_once(self) -> None:
        _, a, b = await pair(self)
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        params = {"message": "hi", "idempotencyKey": "done-1", "sessionKey": "agent:main:x"}
        first = on_a.send("agent", params)
        accepted = await on_a.res(first)
        final = await on_a.res(first)
        self.assertTrue(final["ok"], final)
        again = on_b.send("agent", params)
        self.assertEqual((await on_b.res(again))["payload"], accepted["payload"])
        self.assertEqual((await on_b.res(again))["payload"], final["payload"])
        self.assertEqual(final["payload"]["result"]["meta"]["sessionKey"], "agent:main:x")
        self.assertEqual(b.provider.requests, [])
        # Another key is another run, wherever it lands.
        other = on_b.send("agent", {**params, "idempotencyKey": "done-2"})
        run_id = (await on_b.res(other))["payload"]["runId"]
        self.assertNotEqual(run_id, accepted["payload"]["runId"])
        self.assertTrue((await on_b.res(other))["ok"])
        self.assertEqual(len(b.provider.requests), 1)

    async def test_an_aborted_run_is_the_repeats_error_too(self) -> None:
        _, a, b = await pair(self, Script(hang=True))
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        params = {"message": "wait", "idempotencyKey": "hang-1"}
        first = on_a.send("agent", params)
        run_id = (await on_a.res(first))["payload"]["runId"]
        again = on_b.send("agent", params)
        self.assertEqual((await on_b.res(again))["payload"]["runId"], run_id)
        await on_b.ok("chat.abort", {"runId": run_id})
        for reply in (await on_a.res(first), await on_b.res(again)):
            self.assertFalse(reply["ok"], reply)
            self.assertEqual(reply["error"]["code"], "ABORTED")
            self.assertEqual(reply["error"]["details"]["runId"], run_id)
        self.assertEqual(b.provider.requests, [])

    async def test_chat_send_repeat_on_the_other_gateway(self) -> None:
        _, a, b = await pair(self, Script(hang=True))
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        params = {"message": "wait", "sessionKey": "agent:main:c", "idempotencyKey": "c-1"}
        sent = await on_a.ok("chat.send", params)
        self.assertEqual(sent["status"], "started")
        self.assertEqual(
            await on_b.ok("chat.send", params), {"runId": sent["runId"], "status": "in_flight"}
        )
        while not a.provider.requests:  # the run reached its model (a slow machine may lag)
            await _tick()
        await on_a.ok("chat.abort", {"runId": sent["runId"]})
        claim = None
        while claim is None or claim.outcome is None:  # the end is shared as the run ends
            assert b.gateway.idempotency is not None
            claim = await b.gateway.idempotency.holder("chat", "c-1")
            await _tick()
        self.assertEqual(
            await on_b.ok("chat.send", params), {"runId": sent["runId"], "status": "ok"}
        )
        self.assertEqual(b.provider.requests, [])
        self.assertEqual(len(a.provider.requests), 1)

    async def test_concurrent_first_requests_start_one_run(self) -> None:
        _, a, b = await pair(self)
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        keys = [f"race-{i}" for i in range(10)]
        sent: list[tuple[Any, str]] = []
        for key in keys:
            for session in (on_a, on_b):
                params = {"message": "go", "sessionKey": f"agent:main:{key}", "idempotencyKey": key}
                sent.append((session, session.send("agent", params)))
        replies = [await session.res(req) for session, req in sent]
        for i in range(0, len(replies), 2):
            one, other = replies[i]["payload"], replies[i + 1]["payload"]
            self.assertEqual(one["runId"], other["runId"])
            self.assertEqual(one["acceptedAt"], other["acceptedAt"])
        finals = [await session.res(req) for session, req in sent]
        self.assertTrue(all(f["ok"] for f in finals), finals)
        # Exactly one model call per key over both gateways.
        self.assertEqual(len(a.provider.requests) + len(b.provider.requests), len(keys))

    async def test_a_refused_request_leaves_the_key_for_a_retry(self) -> None:
        _, a, b = await pair(self, Script(hang=True), limits={"maxRunsPerConnection": 1})
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        await on_a.ok("chat.send", {"message": "busy", "sessionKey": "agent:main:busy"})
        params = {"message": "x", "sessionKey": "agent:main:r", "idempotencyKey": "r-1"}
        refused = await on_a.call("chat.send", params)
        self.assertEqual(refused["error"]["code"], "RATE_LIMITED")
        retried = await on_b.ok("chat.send", params)
        self.assertEqual(retried["status"], "started")
        # A repeat is a repeat even where the client is at its cap: no new run is asked for.
        self.assertEqual(
            await on_a.ok("chat.send", params), {"runId": retried["runId"], "status": "in_flight"}
        )
        while not b.provider.requests:
            await _tick()
        self.assertEqual(len(a.provider.requests), 1)
        # Both runs end before the test does (nothing of theirs is left on the reactor).
        for session, key in ((on_a, "agent:main:busy"), (on_b, "agent:main:r")):
            await session.ok("chat.abort", {"sessionKey": key})
            while (await session.event("chat"))["payload"]["state"] != "aborted":
                pass

    async def test_redis_down_is_unavailable_and_starts_nothing(self) -> None:
        server, _, b = await pair(self)
        on_b = await open_session(self, b.ws_url, TOKEN)
        server.kill()
        params = {"message": "x", "sessionKey": "agent:main:d", "idempotencyKey": "d-1"}
        for method in ("agent", "chat.send"):
            reply = await on_b.call(method, params)
            self.assertFalse(reply["ok"], reply)
            self.assertEqual(reply["error"]["code"], "UNAVAILABLE")
            self.assertEqual(
                reply["error"]["message"],
                "The session store is unavailable; try again in a moment.",
            )
        self.assertEqual(b.provider.requests, [])
        self.assertEqual(b.gateway.runner.active, {})
        # Back: the key was never claimed, so the request runs now.
        server.start()
        assert b.gateway.redis is not None
        await b.gateway.redis.when_connected()
        req = on_b.send("agent", params)
        self.assertEqual((await on_b.res(req))["payload"]["status"], "accepted")
        self.assertTrue((await on_b.res(req))["ok"])
        self.assertEqual(len(b.provider.requests), 1)
