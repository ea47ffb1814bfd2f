"""Observers of a long answer: merged deltas, bytes linear in the answer, nobody dropped."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.agents.runner import Run
from openclaw_twisted.testing import Script, ScriptedProvider

from .helpers import TOKEN, make_gateway, open_session, serve, until_end, ws_factory

DELTAS = 10_000
STEP = 0.001  # the model's pace on the clock: 10,000 deltas in 10 s
INTERVAL = 0.150  # ws.runs.BROADCAST_INTERVAL, as OpenClaw throttles its chat deltas


async def drain(run: Run) -> None:
    while await run.next_event() is not None:
        pass


class BroadcastTests(TestCase):
    timeout = 60

    async def test_three_observers_of_a_10000_delta_answer_keep_up(self) -> None:
        clock = Clock()
        provider = ScriptedProvider(Script(deltas=("ab",) * DELTAS, delta_delay=STEP), clock=clock)
        config = {
            "gateway": {"auth": {"token": TOKEN}},
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        gateway = make_gateway(self, config, providers=(provider,))
        factory = ws_factory(gateway)
        factory.clock = clock
        url = await serve(self, gateway)
        observers = [await open_session(self, url, client_id=f"o{i}") for i in range(3)]
        received = [0, 0, 0]
        for i, o in enumerate(observers):
            on_message = o.client.onMessage

            def counting(payload: bytes, binary: bool, i: int = i, on: Any = on_message) -> None:
                received[i] += len(payload)
                on(payload, binary)

            o.client.onMessage = counting  # type: ignore[method-assign]
        # A run nobody on WebSocket started (as over HTTP): every observer gets its events.
        run = gateway.runner.start(RunRequest("main", "agent:main:long", "go", persist=False))
        drained = ensureDeferred(drain(run))
        for n in range(DELTAS + 1):
            clock.advance(STEP)
            if n % 500 == 0:
                await deferLater(reactor, 0, lambda: None)  # the sockets move meanwhile
        await drained
        result = await run.wait()
        answer = "ab" * DELTAS
        self.assertEqual(result.text, answer)
        events = [[e["payload"] for e in await until_end(o)] for o in observers]
        for seen in events:
            assistant = [p["data"]["delta"] for p in seen if p["stream"] == "assistant"]
            self.assertEqual("".join(assistant), answer)
            # One merged event per interval of the model's 10 s, not one per delta.
            intervals = DELTAS * STEP / INTERVAL
            self.assertLessEqual(len(assistant), intervals + 2)
            self.assertGreaterEqual(len(assistant), intervals - 2)
        # Linear: a small multiple of the answer (it was ~100 MB each, and they were dropped).
        size = len(answer)
        for got in received:
            self.assertLess(got, 3 * size)
        self.assertEqual(len([c for c in factory.connections if c.authenticated]), 3)
        for conn in factory.connections:
            assert conn.outbox is not None
            self.assertFalse(conn.outbox.closed)
