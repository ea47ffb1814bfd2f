"""``openclaw-twisted agent --local`` against real HTTP providers: it streams as it comes."""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.testing import FakeUpstream, Reply
from tests.support import child_env, spawn

AGENT = ["-m", "openclaw_twisted.cli", "agent", "--local"]


class LocalAgentUpstreamTests(TestCase):
    async def check(self, api: str) -> None:
        clock = Clock()
        server = await FakeUpstream.start(reactor, clock)
        self.addCleanup(server.stop)
        server.script(Reply(deltas=["Hel", "lo ", "there"], delay=1))
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        config = os.path.join(state, "openclaw.json")
        base = server.base_url + ("/v1" if api == "openai-completions" else "")
        with open(config, "w") as f:
            json.dump(
                {
                    "agents": {"defaults": {"model": "up/m1"}},
                    "models": {
                        "providers": {
                            "up": {
                                "baseUrl": base,
                                "api": api,
                                "apiKey": "${UP_KEY}",
                                "models": [{"id": "m1"}],
                            }
                        }
                    },
                },
                f,
            )
        env = child_env(state, UP_KEY="sk-cli-key")
        proc = spawn(self, [*AGENT, "-m", "hi", "--config", config], env)
        received = await server.request(0)
        if api == "openai-completions":
            self.assertEqual(received.headers["authorization"], "Bearer sk-cli-key")
        else:
            self.assertEqual(received.headers["x-api-key"], "sk-cli-key")
        # One event per clock step: the first delta is printed before the next is even sent.
        head = 1 if api == "openai-completions" else 3
        for _ in range(head + 1):
            clock.advance(1)
        self.assertEqual(received.chunks_sent, head + 1)
        await proc.line_with(b"Hel")
        self.assertNotIn(b"lo", proc.out)
        while not received.completed:
            clock.advance(1)
        self.assertEqual(await proc.ended, 0, proc.err)
        self.assertEqual(proc.out, b"Hello there\n")
        records = self.successResultOf(
            DiskSessionStore(state).transcript("main", "agent:main:main")
        )
        self.assertEqual(records[-1]["text"], "Hello there")
        self.assertEqual(records[-1]["usage"], {"input": 11, "output": 3, "total": 14})

    async def test_openai(self) -> None:
        await self.check("openai-completions")

    async def test_anthropic(self) -> None:
        await self.check("anthropic-messages")
