"""``openclaw-twisted agent``: --local in a child process, and its error paths in-process."""

from __future__ import annotations

import io
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.cli import AgentOptions, agent_local

from .support import child_env, spawn

AGENT = ["-m", "openclaw_twisted.cli", "agent"]


def options(*argv: str) -> AgentOptions:
    o = AgentOptions()
    o.parseOptions(list(argv))
    return o


class LocalProcessTests(TestCase):
    async def test_echo_answer_and_the_session_continues(self) -> None:
        """Two ``agent --local`` calls: echo answers, one conversation in agent:main:main."""
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        first = spawn(self, [*AGENT, "--local", "--message", "hi"], child_env(state))
        self.assertEqual(await first.ended, 0, first.err)
        self.assertEqual(first.out, b"hi\n")
        second = spawn(self, [*AGENT, "--local", "-m", "and again"], child_env(state))
        self.assertEqual(await second.ended, 0, second.err)
        self.assertEqual(second.out, b"and again\n")
        self.assertEqual(second.err, b"")
        records = DiskSessionStore(state).transcript("main", "agent:main:main")
        self.assertEqual(
            [(r["role"], r["text"]) for r in records],
            [
                ("user", "hi"),
                ("assistant", "hi"),
                ("user", "and again"),
                ("assistant", "and again"),
            ],
        )
        with open(os.path.join(state, "agents", "main", "sessions", "sessions.json")) as f:
            self.assertEqual(list(json.load(f)), ["agent:main:main"])

    async def test_run_error_exits_non_zero(self) -> None:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        config = os.path.join(state, "openclaw.json")
        with open(config, "w") as f:
            json.dump({"agents": {"defaults": {"model": "nowhere/model"}}}, f)
        proc = spawn(self, [*AGENT, "--local", "-m", "hi", "--config", config], child_env(state))
        self.assertEqual(await proc.ended, 1)
        self.assertEqual(proc.out, b"")
        lines = proc.err.decode().splitlines()
        self.assertEqual(len(lines), 1, proc.err)
        self.assertTrue(lines[0].startswith("openclaw-twisted agent: misconfigured: "), lines[0])
        self.assertIn("misconfigured", lines[0])


#: ``agent --local`` with a model that sends one delta and then hangs (echo patched).
HANGING = r"""
import sys
from twisted.internet.defer import Deferred, succeed
from openclaw_twisted.providers import echo
from openclaw_twisted.providers.interface import TextDelta

class Hang:
    sent = False
    def next(self):
        if self.sent:
            return Deferred()
        self.sent = True
        return succeed(TextDelta("partial answer"))
    def cancel(self):
        sys.stderr.write("stream cancelled\n")

echo.EchoProvider.open = lambda self, request: succeed(Hang())
from openclaw_twisted.cli import main
sys.exit(main(["agent", "--local", "-m", "hi"]))
"""


class InterruptTests(TestCase):
    async def test_ctrl_c_keeps_the_turn_as_aborted(self) -> None:
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        proc = spawn(self, ["-c", HANGING], child_env(state))
        await proc.line_with(b"partial answer")
        assert proc.transport is not None
        proc.transport.signalProcess("INT")
        self.assertEqual(await proc.ended, 130)  # as over WebSocket: one exit-code table
        self.assertEqual(proc.out, b"partial answer\n")
        self.assertEqual(
            proc.err.decode().splitlines(),
            ["stream cancelled", "openclaw-twisted agent: interrupted"],
        )
        records = DiskSessionStore(state).transcript("main", "agent:main:main")
        self.assertEqual(
            [(r["text"], r.get("stopReason")) for r in records],
            [("hi", None), ("partial answer", "aborted")],
        )


class LocalTests(TestCase):
    """The same code in-process (fast), for the paths that need no second process."""

    def setUp(self) -> None:
        self.state = os.path.abspath(self.mktemp())
        self.env = {"OPENCLAW_STATE_DIR": self.state, "HOME": self.state}
        self.out, self.err = io.StringIO(), io.StringIO()

    def local(self, *argv: str) -> Deferred[int]:
        return Deferred.fromCoroutine(
            agent_local(reactor, options(*argv), self.out, self.err, self.env)
        )

    def config(self, data: object) -> str:
        os.makedirs(self.state, exist_ok=True)
        path = os.path.join(self.state, "openclaw.json")
        with open(path, "w") as f:
            json.dump(data, f)
        return path

    async def test_streams_deltas(self) -> None:
        self.assertEqual(await self.local("--local", "-m", "one two  three"), 0)
        self.assertEqual(self.out.getvalue(), "one two  three\n")

    async def test_session_key_names_the_agent(self) -> None:
        path = self.config({"agents": {"list": [{"id": "main"}, {"id": "beta"}]}})
        code = await self.local("-m", "yo", "--config", path, "--session-key", "agent:beta:chat")
        self.assertEqual(code, 0, self.err.getvalue())
        store = DiskSessionStore(self.state)
        self.assertEqual(len(store.transcript("beta", "agent:beta:chat")), 2)
        self.assertEqual(store.sessions("main"), [])

    async def test_agent_option_and_default_key(self) -> None:
        path = self.config({"agents": {"list": [{"id": "main"}, {"id": "beta"}]}})
        self.assertEqual(await self.local("-m", "yo", "--config", path, "--agent", " Beta "), 0)
        self.assertEqual(
            [r["key"] for r in DiskSessionStore(self.state).sessions("beta")], ["agent:beta:main"]
        )

    async def test_unknown_agent(self) -> None:
        self.assertEqual(await self.local("-m", "yo", "--agent", "nobody"), 2)
        self.assertEqual(
            self.err.getvalue(),
            "openclaw-twisted agent: unknown agent 'nobody' (configured: main)\n",
        )
        self.assertFalse(os.path.exists(os.path.join(self.state, "agents")))

    async def test_bad_config(self) -> None:
        path = self.config({"agents": {"defaults": {"historyLimit": "many"}}})
        self.assertEqual(await self.local("-m", "yo", "--config", path), 2)
        self.assertIn("agents.defaults.historyLimit", self.err.getvalue())
        self.assertEqual(self.err.getvalue().count("\n"), 1)

    def test_message_required(self) -> None:
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError):
            options("--local")
        with self.assertRaises(UsageError):
            options("--local", "-m", "  ")
