"""A run whose gateway stopped saying it is alive is reported lost, not waited for forever."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from openclaw_twisted.testing import Script

from ..ws.helpers import open_session
from .gateways import TOKEN, pair


class LostGatewayTests(TestCase):
    timeout = 30

    async def test_a_dead_gateways_run_is_lost_to_wait_and_to_a_repeat(self) -> None:
        _, a, b = await pair(self, Script(hang=True))
        on_a = await open_session(self, a.ws_url, TOKEN)
        on_b = await open_session(self, b.ws_url, TOKEN)
        params = {"sessionKey": "agent:main:doomed", "message": "wait", "idempotencyKey": "k1"}
        sent = on_a.send("agent", params)
        accepted = await on_a.res(sent)
        run_id = accepted["payload"]["runId"]
        while not a.provider.streams:
            await deferLater(reactor, 0.01, lambda: None)
        # Alive: the run is only still running.
        pending = await on_b.ok("agent.wait", {"runId": run_id, "timeoutMs": 50})
        self.assertEqual(pending["status"], "timeout")
        # A dies as a SIGKILL would leave it: no more heartbeats, its run never ends. (The
        # key's TTL would run out by itself in 15 s; deleting it is that, sooner.)
        cluster = a.gateway.cluster
        assert cluster is not None and cluster._heartbeat is not None
        cluster._heartbeat.stop()
        await cluster.redis.execute("DEL", cluster.heartbeat_prefix + cluster.gateway_id)
        waited = await on_b.ok("agent.wait", {"runId": run_id, "timeoutMs": 10_000})
        self.assertEqual(waited["status"], "error")
        self.assertEqual(waited["error"]["kind"], "unavailable")
        self.assertIn("stopped before the run ended", waited["error"]["message"])
        # A repeat of the request on B is told so at once, instead of waiting for the key.
        again = on_b.send("agent", params)
        self.assertEqual((await on_b.res(again))["payload"]["runId"], run_id)  # accepted
        final = await on_b.res(again)
        self.assertEqual(final["error"]["code"], "UNAVAILABLE", final)
        self.assertIn(run_id, final["error"]["message"])
        # (A is in fact alive: end its run, so the test leaves nothing running.)
        a.gateway.runner.active[run_id].cancel()
        await a.gateway.runner.shutdown(0)

    async def test_a_run_is_entered_with_its_gateways_heartbeat(self) -> None:
        _, a, _b = await pair(self)
        on_a = await open_session(self, a.ws_url, TOKEN)
        await on_a.ok("agent", {"sessionKey": "agent:main:quick", "message": "hi"})
        cluster = a.gateway.cluster
        assert cluster is not None
        ttl = await cluster.redis.execute("TTL", cluster.heartbeat_prefix + cluster.gateway_id)
        self.assertGreater(ttl, 0)
