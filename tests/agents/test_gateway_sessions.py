"""The Gateway keeps sessions on disk by default, and flushes them when it stops."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.agents.store import MemorySessionStore
from openclaw_twisted.config import parse_config
from openclaw_twisted.gateway import Gateway


class GatewaySessionsTests(TestCase):
    async def test_default_store_is_on_disk(self) -> None:
        state = os.path.abspath(self.mktemp())
        gateway = Gateway(parse_config({}, {"OPENCLAW_STATE_DIR": state}), reactor)
        self.assertIsInstance(gateway.store, DiskSessionStore)
        for text in ("one", "two"):
            result = await gateway.runner.start(RunRequest("main", "k", text)).wait()
            self.assertEqual(result.stop_reason, "stop")
        stateless = await gateway.runner.start(RunRequest("main", "s", "x", persist=False)).wait()
        self.assertEqual(stateless.text, "x")
        await gateway.shutdown(0)
        records = self.successResultOf(DiskSessionStore(state).transcript("main", "k"))
        self.assertEqual([r["text"] for r in records], ["one", "one", "two", "two"])
        with open(os.path.join(state, "agents", "main", "sessions", "sessions.json")) as f:
            index = json.load(f)
        self.assertEqual(list(index), ["k"], "the stateless session was not written")
        self.assertEqual(
            index["k"]["updatedAt"],
            self.successResultOf(gateway.store.sessions("main"))[0]["updatedAt"],
        )

    def test_injected_store(self) -> None:
        store = MemorySessionStore()
        config = parse_config({}, {"OPENCLAW_STATE_DIR": self.mktemp()})
        self.assertIs(Gateway(config, reactor, store=store).store, store)
