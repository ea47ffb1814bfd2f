"""The WS client behind ``openclaw-twisted agent``: in-process, and the CLI in child processes."""

from __future__ import annotations

import io
import os
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from openclaw_twisted.agents.runner import Run
from openclaw_twisted.providers.interface import ProviderError
from openclaw_twisted.testing import Script, ScriptedProvider
from openclaw_twisted.ws.client import AgentCommand, run_agent

from ..support import REPO, child_env, spawn
from .helpers import TOKEN, make_gateway, serve

LISTENING = re.compile(rb"openclaw gateway listening on http://([\d.]+):(\d+)")
SCRIPTED = {
    "gateway": {"auth": {"token": TOKEN}},
    "agents": {"defaults": {"model": "scripted/model"}, "list": [{"id": "main"}, {"id": "beta"}]},
}


class Writes(io.StringIO):
    """Records each write, to see the answer arrive piece by piece."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.first: Deferred[str] = Deferred()

    def write(self, s: str) -> int:
        self.writes.append(s)
        if not self.first.called:
            self.first.callback(s)
        return super().write(s)


class ClosedPipe(io.StringIO):
    """A stdout whose reader has gone: every write fails as on a closed pipe."""

    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class RunAgentTests(TestCase):
    timeout = 10

    async def start(self, script: Script | None = None, clock: Clock | None = None) -> str:
        self.provider = ScriptedProvider(script or Script(), clock=clock)
        self.gateway = make_gateway(self, SCRIPTED, providers=(self.provider,))
        return (await serve(self, self.gateway)).replace("http://", "ws://")

    def started(self) -> Deferred[Run]:
        """Fires with the first run that emits an event, once the emitting call has returned."""
        d: Deferred[Run] = Deferred()

        def first(run: Run, event: object) -> None:
            if not d.called:
                reactor.callLater(0, lambda: None if d.called else d.callback(run))

        self.gateway.runner.listeners.append(first)
        return d

    async def agent(self, **options: str) -> tuple[int, Writes, io.StringIO]:
        out, err = Writes(), io.StringIO()
        code = await run_agent(reactor, options, out, err, environ={})
        return code, out, err

    async def test_streams_the_answer(self) -> None:
        url = await self.start()
        code, out, err = await self.agent(
            message="hi", url=url, token=TOKEN, agent="beta", **{"session-key": "agent:beta:cli"}
        )
        self.assertEqual((code, err.getvalue()), (0, ""))
        self.assertEqual(out.writes, ["Hello", " from", " the", " script.", "\n"])
        self.assertEqual(self.provider.requests[0].messages[-1].text, "hi")
        texts = [
            m.text
            for m in self.successResultOf(self.gateway.store.history("beta", "agent:beta:cli", 10))
        ]
        self.assertEqual(texts, ["hi", "Hello from the script."])

    async def test_token_from_the_environment(self) -> None:
        url = await self.start()
        out, err = Writes(), io.StringIO()
        env = {"OPENCLAW_GATEWAY_TOKEN": TOKEN}
        code = await run_agent(reactor, {"message": "hi", "url": url}, out, err, environ=env)
        self.assertEqual((code, out.getvalue()), (0, "Hello from the script.\n"))

    async def test_bad_token_is_one_line_and_nonzero(self) -> None:
        url = await self.start()
        code, out, err = await self.agent(message="hi", url=url, token="wrong")
        self.assertEqual(code, 2)
        self.assertEqual(out.getvalue(), "")
        self.assertEqual(
            err.getvalue(),
            "openclaw-twisted agent: UNAUTHORIZED: the gateway refused the secret from --token\n",
        )

    async def test_no_token_says_where_one_comes_from(self) -> None:
        url = await self.start()
        code, out, err = await self.agent(message="hi", url=url)
        self.assertEqual((code, out.getvalue()), (2, ""))
        line = err.getvalue()
        self.assertEqual(line.count("\n"), 1, line)
        self.assertTrue(line.startswith("openclaw-twisted agent: UNAUTHORIZED: no token was sent"))
        for source in ("--token", "$OPENCLAW_GATEWAY_TOKEN", "gateway.auth.token"):
            self.assertIn(source, line)

    async def test_closed_output_aborts_the_run(self) -> None:
        """stdout gone (a closed pipe): the run is aborted on the gateway, exit 141, no noise."""
        clock = Clock()
        url = await self.start(Script(delta_delay=1.0), clock)
        out, err = ClosedPipe(), io.StringIO()
        d = run_agent(reactor, {"message": "hi", "url": url, "token": TOKEN}, out, err, {})
        run = await self.started()
        clock.advance(1)
        self.assertEqual(await d, 141)
        self.assertEqual(err.getvalue(), "")
        result = await run.wait()
        self.assertEqual(result.error.kind if result.error else None, "aborted")
        self.assertTrue(self.provider.streams[0].cancelled)

    async def test_provider_failure_mid_stream(self) -> None:
        url = await self.start(
            Script(fail=ProviderError("upstream_error", "model broke"), fail_after=2)
        )
        code, out, err = await self.agent(message="hi", url=url, token=TOKEN)
        self.assertEqual(code, 1)
        self.assertEqual(out.getvalue(), "Hello from\n")
        self.assertEqual(err.getvalue(), "openclaw-twisted agent: UNAVAILABLE: model broke\n")

    async def test_interrupt_before_accepted_aborts_the_run(self) -> None:
        url = await self.start(Script(hang=True))
        started = self.started()
        out, err = Writes(), io.StringIO()
        command = AgentCommand(reactor, {"message": "hi", "url": url, "token": TOKEN}, out, err, {})
        d = command.run()
        run = await started
        command.interrupt()
        self.assertEqual(await d, 130)
        self.assertEqual(
            (out.getvalue(), err.getvalue()), ("", "openclaw-twisted agent: interrupted\n")
        )
        result = await run.wait()
        self.assertEqual(result.error.kind if result.error else None, "aborted")
        self.assertTrue(self.provider.streams[0].cancelled)

    async def test_interrupt_mid_answer_aborts_the_run(self) -> None:
        clock = Clock()
        url = await self.start(Script(delta_delay=1.0), clock)
        out, err = Writes(), io.StringIO()
        command = AgentCommand(reactor, {"message": "hi", "url": url, "token": TOKEN}, out, err, {})
        d = command.run()
        await self.started()
        clock.advance(1)
        self.assertEqual(await out.first, "Hello")
        command.interrupt()
        self.assertEqual(await d, 130)
        self.assertEqual(out.getvalue(), "Hello\n")
        self.assertTrue(self.provider.streams[0].cancelled)
        texts = self.successResultOf(self.gateway.store.transcript("main", "agent:main:main"))
        self.assertEqual(texts[-1]["stopReason"], "aborted")

    async def test_interrupt_while_connecting(self) -> None:
        url = await self.start()
        out, err = Writes(), io.StringIO()
        command = AgentCommand(reactor, {"message": "hi", "url": url, "token": TOKEN}, out, err, {})
        d = command.run()
        command.interrupt()
        self.assertEqual(await d, 130)
        self.assertEqual(err.getvalue(), "openclaw-twisted agent: interrupted\n")
        self.assertEqual(self.provider.requests, [])

    async def test_unknown_agent(self) -> None:
        url = await self.start()
        code, _, err = await self.agent(message="hi", url=url, token=TOKEN, agent="ghost")
        self.assertEqual(code, 2)
        self.assertIn("INVALID_REQUEST: Unknown agent 'ghost'.", err.getvalue())

    async def test_nothing_listening(self) -> None:
        code, _, err = await self.agent(message="hi", url="ws://127.0.0.1:1", token=TOKEN)
        self.assertEqual(code, 3)
        self.assertIn("cannot connect to ws://127.0.0.1:1", err.getvalue())
        self.assertEqual(len(err.getvalue().splitlines()), 1)
        code, _, err = await self.agent(message="hi", url="http://nope", token=TOKEN)
        self.assertEqual(code, 2)
        self.assertIn("invalid --url", err.getvalue())


class CommandTests(TestCase):
    timeout = 30

    def _state(self) -> str:
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        return d

    async def test_agent_command_against_the_readme_gateway(self) -> None:
        state = self._state()
        config = os.path.join(REPO, "examples", "openclaw.json5")
        port_arg = ["--port", "tcp:0:interface=127.0.0.1"]
        gateway = spawn(
            self,
            ["-m", "openclaw_twisted.cli", "gateway", "--config", config, *port_arg],
            child_env(state),
        )
        m = LISTENING.search(await gateway.line_with(b"openclaw gateway listening on"))
        assert m is not None
        url = f"ws://127.0.0.1:{int(m.group(2))}"
        # The token comes from the same config file.
        agent = spawn(
            self,
            [
                "-m",
                "openclaw_twisted.cli",
                "agent",
                "--config",
                config,
                "--url",
                url,
                "--message",
                "hi there",
            ],
            child_env(state),
        )
        self.assertEqual(await agent.ended, 0, agent.err)
        self.assertEqual(agent.out, b"hi there\n")
        self.assertEqual(agent.err, b"")
        bad = spawn(
            self,
            [
                "-m",
                "openclaw_twisted.cli",
                "agent",
                "--url",
                url,
                "--token",
                "nope",
                "--message",
                "hi",
            ],
            child_env(state),
        )
        self.assertEqual(await bad.ended, 2)
        self.assertEqual(bad.out, b"")
        self.assertEqual(
            bad.err,
            b"openclaw-twisted agent: UNAUTHORIZED: the gateway refused the secret from --token\n",
        )

    async def test_agent_command_needs_a_message(self) -> None:
        proc = spawn(self, ["-m", "openclaw_twisted.cli", "agent"], child_env(self._state()))
        self.assertEqual(await proc.ended, 2)
        self.assertIn(b"--message", proc.err)
