"""Slow WebSocket clients: the requester's run waits for it; an observer is cut off."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.testing import Script, ScriptedProvider
from openclaw_twisted.ws.server import GatewayWebSocket

from .helpers import TOKEN, make_gateway, open_session, serve, ws_factory

KiB = 1024


def server_side(gateway: Any, client_id: str) -> GatewayWebSocket:
    factory = ws_factory(gateway)
    return next(c for c in factory.connections if c.client.get("id") == client_id)


def paused(conn: GatewayWebSocket) -> Deferred[None]:
    """Fires when the socket first pushes back (its buffer is full)."""
    outbox = conn.outbox
    assert outbox is not None
    d: Deferred[None] = Deferred()
    original = outbox.pauseProducing

    def pause() -> None:
        original()
        if not d.called:
            d.callback(None)

    outbox.pauseProducing = pause  # type: ignore[method-assign]
    return d


class BackpressureTests(TestCase):
    timeout = 30

    async def test_requester_that_stops_reading_pauses_its_run(self) -> None:
        deltas = ("x" * KiB,) * 300  # events carry the cumulative text: ~45 MB in all
        provider = ScriptedProvider(Script(deltas=deltas))
        config = {
            "gateway": {"auth": {"token": TOKEN}},
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        gateway = make_gateway(self, config, providers=(provider,))
        session = await open_session(self, await serve(self, gateway))
        conn = server_side(gateway, "test")
        pushed_back = paused(conn)
        session.client.transport.pauseProducing()
        req = session.send("agent", {"message": "long"})
        await pushed_back
        # The run stopped pulling from the model: only a bounded number of deltas ahead.
        stream = provider.streams[0]
        sent_at_pause = stream.sent
        self.assertLess(sent_at_pause, len(deltas))
        run = next(iter(gateway.runner.active.values()))
        self.assertIsNone(run.result)
        assert conn.outbox is not None
        self.assertEqual(conn.outbox.peak, 0)  # nothing queued beside the socket
        session.client.transport.resumeProducing()
        await session.res(req)  # accepted
        final = await session.res(req)
        self.assertTrue(final["ok"], final)
        self.assertEqual(len(final["payload"]["result"]["payloads"][0]["text"]), 300 * KiB)
        deltas_seen = [e for e in session.events if e["payload"]["stream"] == "assistant"]
        self.assertEqual(len(deltas_seen), 300)
        self.assertEqual(conn.outbox.peak, 0)

    async def test_observer_that_stops_reading_is_disconnected(self) -> None:
        answer = 64 * KiB
        provider = ScriptedProvider(Script(deltas=("x" * (8 * KiB),) * 8))
        config = {
            "gateway": {"auth": {"token": TOKEN}},
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        gateway = make_gateway(self, config, providers=(provider,))
        factory = ws_factory(gateway)
        limit = 256 * KiB
        factory.max_buffered_bytes = limit
        url = await serve(self, gateway)
        driver = await open_session(self, url)
        observer = await open_session(self, url, client_id="observer")
        conn = server_side(gateway, "observer")
        observer.client.transport.pauseProducing()
        runs = 0
        outbox = conn.outbox
        assert outbox is not None
        while not outbox.closed:
            runs += 1
            # Merged deltas are small per run: the kernel's socket buffers take many runs.
            self.assertLess(runs, 500, "the observer was never disconnected")
            run = gateway.runner.start(RunRequest("main", f"agent:main:r{runs}", "go"))
            while await run.next_event() is not None:
                pass
            self.assertIsNone((await run.wait()).error)
        # Bounded: what waited never went past the limit by more than one event frame
        # (the largest carries the answer twice: as its delta and as its text).
        self.assertLessEqual(outbox.peak, limit + 2 * answer + KiB)
        self.assertEqual(outbox.buffered, 0)
        observer.client.transport.resumeProducing()
        code = await observer.client.closed
        self.assertEqual(code, 1006)  # dropped: no close frame could get through
        self.assertNotIn(conn, factory.connections)
        # The driver is unaffected.
        self.assertTrue((await driver.call("health"))["ok"])
