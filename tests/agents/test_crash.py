"""SIGKILL in the middle of a turn: every completed turn survives, transcripts still load."""

from __future__ import annotations

import json
import os
import signal

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.testing import FakeUpstream, Reply

from ..support import GatewayProcess, child_env, spawn

KEY = "agent:main:main"

#: A process that runs turn after turn on one session (big deltas, a few ms apart, so the
#: kill lands mid-turn) and prints ``done <n> <runId>`` after each turn's final event.
CHILD = r"""
import sys
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.agents.runner import AgentRunner
from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.config import parse_config
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import Script, ScriptedProvider

state, label = sys.argv[1], sys.argv[2]
config = parse_config(
    {"agents": {"defaults": {"model": "scripted/m"}}}, {"OPENCLAW_STATE_DIR": state}
)
provider = ScriptedProvider(Script(deltas=("x" * 4000,) * 8, delta_delay=0.002), clock=reactor)
store = DiskSessionStore(state)
runner = AgentRunner(Roster.from_config(config), Providers.of([provider]), store, reactor)

async def main():
    n = 0
    while True:
        run = runner.start(RunRequest("main", "agent:main:main", f"{label} {n}"))
        while await run.next_event() is not None:
            pass
        result = await run.wait()
        sys.stdout.write(f"done {n} {result.run_id} {len(provider.requests[-1].messages)}\n")
        sys.stdout.flush()
        n += 1

task.react(lambda r: Deferred.fromCoroutine(main()))
"""


class CrashTests(TestCase):
    timeout = 60

    async def killed_mid_turn(self, state: str, label: str, turns: int) -> list[list[str]]:
        proc = spawn(self, ["-c", CHILD, state, label], child_env(state))
        await proc.line_with(f"done {turns} ".encode())
        assert proc.transport is not None
        proc.transport.signalProcess("KILL")
        await proc.ended
        self.assertEqual(proc.signal, signal.SIGKILL)
        return [line.split() for line in proc.out.decode().splitlines()]

    async def test_sigkill_loses_no_completed_turn(self) -> None:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        first = await self.killed_mid_turn(state, "first", 5)
        second = await self.killed_mid_turn(state, "second", 3)
        # The restarted process continued the conversation: its first turn saw the history.
        self.assertGreater(int(second[0][3]), 2 * len(first))

        store = DiskSessionStore(state)
        records = self.successResultOf(store.transcript("main", "agent:main:main"))
        done = [line[2] for line in first + second]
        assistant = {r["runId"]: r for r in records if r["role"] == "assistant"}
        for run_id in done:
            self.assertIn(run_id, assistant, "a completed turn was lost")
            self.assertEqual(assistant[run_id]["stopReason"], "stop")
            self.assertEqual(len(assistant[run_id]["text"]), 8 * 4000)
        labels = [r["text"].split()[0] for r in records if r["role"] == "user"]
        self.assertEqual(labels, sorted(labels))  # every "first" turn before every "second"
        self.assertEqual(labels[: len(first)], ["first"] * len(first))
        # The session still takes turns after the crashes, and they read back.
        store.append("main", "agent:main:main", [{"type": "message", "role": "user", "text": "ok"}])
        again = self.successResultOf(DiskSessionStore(state).transcript("main", "agent:main:main"))
        self.assertEqual(again[-1]["text"], "ok")
        self.assertEqual(len(again), len(records) + 1)


class CLICrashTests(TestCase):
    """``agent --local`` against a model server on loopback, killed in the middle of a turn."""

    timeout = 60

    async def setup(self) -> tuple[FakeUpstream, str]:
        server = await FakeUpstream.start(reactor)
        self.addCleanup(server.stop)
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        with open(os.path.join(state, "openclaw.json"), "w") as f:
            json.dump(
                {
                    "agents": {"defaults": {"model": "fake/m"}},
                    "models": {
                        "providers": {
                            "fake": {
                                "baseUrl": server.base_url + "/v1",
                                "api": "openai-completions",
                                "apiKey": "sk-test",
                                "models": [{"id": "m"}],
                            }
                        }
                    },
                },
                f,
            )
        return server, state

    def agent(self, state: str, message: str) -> GatewayProcess:
        args = ["-m", "openclaw_twisted.cli", "agent", "--local", "-m", message]
        return spawn(self, args, child_env(state))

    async def test_sigkill_mid_turn_then_start_again(self) -> None:
        server, state = await self.setup()
        server.script(
            Reply(deltas=["Hel", "lo", " there."]),
            Reply(deltas=["one", " two", " three"], stall_after=1),
            Reply(deltas=["Again."]),
        )
        first = self.agent(state, "hi")
        self.assertEqual(await first.ended, 0, first.err)
        self.assertEqual(first.out, b"Hello there.\n")

        # The second turn's first token is printed while the model is still answering
        # (it never finishes): the answer streams. Then the process is killed mid-turn.
        second = self.agent(state, "count")
        await second.line_with(b"one")
        self.assertNotIn(b"two", second.out)
        assert second.transport is not None
        second.transport.signalProcess("KILL")
        await second.ended
        self.assertEqual(second.signal, signal.SIGKILL)

        # Started again: the completed turn was on disk and is sent as history.
        third = self.agent(state, "again")
        self.assertEqual(await third.ended, 0, third.err)
        self.assertEqual(third.out, b"Again.\n")
        sent = [(m["role"], m["content"]) for m in server.requests[2].json["messages"]]
        self.assertEqual(
            sent[1:],  # after the system prompt; the killed turn never completed
            [("user", "hi"), ("assistant", "Hello there."), ("user", "again")],
        )
        records = self.successResultOf(DiskSessionStore(state).transcript("main", KEY))
        self.assertEqual([r["text"] for r in records], ["hi", "Hello there.", "again", "Again."])
