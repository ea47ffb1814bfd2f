"""``openclaw-twisted agent``: --local in a child process, and its error paths in-process."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from importlib.metadata import version
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

import twisted
from openclaw_twisted._exit import Exit
from openclaw_twisted.agents.runner import Run
from openclaw_twisted.agents.sessions import DiskSessionStore
from openclaw_twisted.cli import AgentOptions, agent_local
from openclaw_twisted.testing import Script, ScriptedProvider

from .support import REPO, GatewayProcess, child_env, spawn
from .ws.helpers import TOKEN, make_gateway, serve

CLI = ["-m", "openclaw_twisted.cli"]
AGENT = [*CLI, "agent"]


def spawn_with_closed_stdout(
    test: TestCase, args: list[str], env: dict[str, str]
) -> GatewayProcess:
    """``python <args>`` whose stdout is a pipe nobody reads (as ``| head -c1`` after a byte)."""
    read, write = os.pipe()
    os.close(read)
    proc = GatewayProcess()
    reactor.spawnProcess(
        proc,
        sys.executable,
        [sys.executable, *args],
        env=env,
        path=REPO,
        childFDs={0: "w", 1: write, 2: "r"},
    )
    os.close(write)

    async def stop() -> None:
        if not proc.ended.called:
            proc.terminate()
            await proc.ended

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return proc


def first_run(gateway: Any) -> Deferred[Run]:
    """Fires with the first run that emits an event, once the emitting call has returned."""
    d: Deferred[Run] = Deferred()

    def first(run: Run, event: object) -> None:
        if not d.called:
            reactor.callLater(0, lambda: None if d.called else d.callback(run))

    gateway.runner.listeners.append(first)
    return d


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
        records = self.successResultOf(
            DiskSessionStore(state).transcript("main", "agent:main:main")
        )
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
        records = self.successResultOf(
            DiskSessionStore(state).transcript("main", "agent:main:main")
        )
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
        self.assertEqual(len(self.successResultOf(store.transcript("beta", "agent:beta:chat"))), 2)
        self.assertEqual(self.successResultOf(store.sessions("main")), [])

    async def test_agent_option_and_default_key(self) -> None:
        path = self.config({"agents": {"list": [{"id": "main"}, {"id": "beta"}]}})
        self.assertEqual(await self.local("-m", "yo", "--config", path, "--agent", " Beta "), 0)
        self.assertEqual(
            [r["key"] for r in self.successResultOf(DiskSessionStore(self.state).sessions("beta"))],
            ["agent:beta:main"],
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


class CommandLineTests(TestCase):
    timeout = 30

    async def test_version_and_usage_lines(self) -> None:
        env = child_env(os.path.abspath(self.mktemp()))
        procs = [
            spawn(self, [*CLI, "--version"], env),
            spawn(self, [*CLI, "gateway", "--help"], env),
            spawn(self, [*CLI, "agent", "--help"], env),
        ]
        self.assertEqual(await gatherResults([p.ended for p in procs]), [0, 0, 0])
        own, gateway, agent = (p.out.decode() for p in procs)
        self.assertEqual(
            own, f"openclaw-twisted {version('openclaw-twisted')} (Twisted {twisted.__version__})\n"
        )
        self.assertTrue(
            gateway.startswith("Usage: openclaw-twisted gateway [--config PATH] [--port N|"),
            gateway,
        )
        self.assertTrue(agent.startswith("Usage: openclaw-twisted agent --message TEXT "), agent)
        for text in (gateway, agent):
            self.assertNotIn("<command>", text)
            self.assertNotIn("Twisted version", text)


class ExitCodeTests(TestCase):
    """The one exit-code table (README, CLI), for ``--local`` and over WebSocket alike."""

    timeout = 30

    def test_the_readme_lists_every_status(self) -> None:
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            cli = f.read().split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
        listed = [int(m) for m in re.findall(r"^\| (\d+) \|", cli, re.MULTILINE)]
        self.assertEqual(listed, sorted(int(e) for e in Exit))

    async def test_the_table_in_both_modes(self) -> None:
        gateway = make_gateway(
            self,
            {
                "gateway": {"auth": {"token": TOKEN}},
                "agents": {"list": [{"id": "main"}, {"id": "broken", "model": "nowhere/m"}]},
            },
        )
        url = (await serve(self, gateway)).replace("http://", "ws://")
        state = os.path.abspath(self.mktemp())
        os.makedirs(state)
        ws = [*AGENT, "--url", url, "-m", "hi"]
        # The rest of the table is covered in-process (tests.ws.test_client, LocalTests).
        cases: dict[str, tuple[list[str], int]] = {
            "ws run failed": ([*ws, "--token", TOKEN, "--agent", "broken"], 1),
            "ws unknown agent": ([*ws, "--token", TOKEN, "--agent", "ghost"], 2),
            "local unknown agent": ([*AGENT, "--local", "-m", "hi", "--agent", "ghost"], 2),
            "ws no gateway": ([*AGENT, "--url", "ws://127.0.0.1:1", "-m", "hi"], 3),
        }
        env = child_env(state)
        procs = {name: spawn(self, args, env) for name, (args, _) in cases.items()}
        codes = await gatherResults([p.ended for p in procs.values()])
        self.assertEqual(
            dict(zip(procs, codes, strict=True)), {name: code for name, (_, code) in cases.items()}
        )
        for name, proc in procs.items():
            err = proc.err.decode()
            self.assertEqual(err.count("\n"), 1, (name, err))
            self.assertNotIn("Traceback", err, name)


class ClosedOutputTests(TestCase):
    """``agent ... | head -c1``: stdout gone, the run is cancelled, exit 141, no traceback."""

    timeout = 30

    def state(self) -> str:
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        return d

    async def test_local(self) -> None:
        state = self.state()
        hanging = spawn_with_closed_stdout(self, ["-c", HANGING], child_env(state))
        echo = spawn_with_closed_stdout(
            self, [*AGENT, "--local", "-m", "hi"], child_env(self.state())
        )
        self.assertEqual(await gatherResults([hanging.ended, echo.ended]), [141, 141])
        self.assertEqual(echo.err, b"")
        # The model stream was cancelled, the turn kept as aborted.
        self.assertEqual(hanging.err, b"stream cancelled\n")
        records = self.successResultOf(
            DiskSessionStore(state).transcript("main", "agent:main:main")
        )
        self.assertEqual(
            [(r["role"], r.get("stopReason")) for r in records],
            [("user", None), ("assistant", "aborted")],
        )

    async def test_over_websocket(self) -> None:
        clock = Clock()
        provider = ScriptedProvider(Script(delta_delay=1.0), clock=clock)
        config = {
            "gateway": {"auth": {"token": TOKEN}},
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        gateway = make_gateway(self, config, providers=(provider,))
        url = (await serve(self, gateway)).replace("http://", "ws://")
        started = first_run(gateway)
        proc = spawn_with_closed_stdout(
            self,
            [*AGENT, "--url", url, "--token", TOKEN, "-m", "hi", "--agent", "main"],
            child_env(self.state()),
        )
        run = await started
        clock.advance(1)  # the first delta: its write fails, the CLI aborts the run
        self.assertEqual(await proc.ended, 141)
        self.assertEqual(proc.err, b"")
        result = await run.wait()
        self.assertEqual(result.error.kind if result.error else None, "aborted")
        self.assertTrue(provider.streams[0].cancelled)
