"""``exec`` with real child processes: output, exit codes, a clean env, the output cap, and kills.

The timeouts run on a ``Clock`` (the test decides when time is up); the processes are real,
spawned by the real reactor, because a killed process group is what these tests are about.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from openclaw_twisted.tools import (
    ExecProtocol,
    ExecTool,
    ToolContext,
    ToolRegistry,
    ToolResult,
    runtime,
    thread_pool_runner,
)

ENV = {"PATH": os.environ.get("PATH", os.defpath), "HOME": "/nonexistent"}


class SpyReactor:
    """The real reactor's ``spawnProcess``, remembering each protocol and its first output."""

    def __init__(self) -> None:
        self.protocols: list[ExecProtocol] = []
        self.first_output: Deferred[bytes] = Deferred()

    def spawnProcess(self, protocol: ExecProtocol, *args: Any, **kwargs: Any) -> Any:
        self.protocols.append(protocol)
        original = protocol.childDataReceived

        def spy(fd: int, data: bytes) -> None:
            original(fd, data)
            if not self.first_output.called:
                self.first_output.callback(data)

        protocol.childDataReceived = spy  # type: ignore[method-assign]
        return reactor.spawnProcess(protocol, *args, **kwargs)  # type: ignore[attr-defined]


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def until_gone(pid: int, limit: float = 5.0) -> None:
    """Wait, without blocking the reactor, for a process that is not ours to disappear.

    A grandchild's death has no event to wait on (it is reaped by init, not by us), so
    this looks every 10 ms and fails after ``limit``.
    """
    waited = 0.0
    while not gone(pid):
        if waited >= limit:
            raise AssertionError(f"process {pid} still running after {limit}s")
        await deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
        waited += 0.01


class ExecTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.ws = os.path.realpath(self.mktemp())
        os.makedirs(os.path.join(self.ws, "sub"))
        self.clock = Clock()
        self.spy = SpyReactor()
        self.context = ToolContext(
            workspace=self.ws,
            clock=self.clock,
            run_in_thread=thread_pool_runner(reactor),  # type: ignore[arg-type]
            process_reactor=self.spy,  # type: ignore[arg-type]
        )

    def registry(self, **kwargs: Any) -> ToolRegistry:
        return ToolRegistry([ExecTool(environ=kwargs.pop("environ", ENV), **kwargs)])

    def reap_on_failure(self, pid: int) -> None:
        def kill() -> None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

        self.addCleanup(kill)

    async def run_command(self, command: str, **kwargs: Any) -> ToolResult:
        args = {"command": command, **kwargs.pop("args", {})}
        return await self.registry(**kwargs).invoke("exec", args, self.context)

    async def test_output_exit_code_and_cwd(self) -> None:
        result = await self.run_command("echo out; echo err >&2; pwd")
        self.assertFalse(result.is_error, result.content)
        self.assertEqual(result.content, f"out\nerr\n{self.ws}\n")
        self.assertEqual(result.details["exitCode"], 0)
        self.assertEqual(result.details["cwd"], ".")

    async def test_workdir_inside_the_workspace(self) -> None:
        result = await self.run_command("pwd", args={"workdir": "sub"})
        self.assertEqual(result.content, os.path.join(self.ws, "sub") + "\n")
        refused = await self.run_command("pwd", args={"workdir": "../.."})
        self.assertTrue(refused.is_error)
        self.assertIn("outside the agent's workspace", refused.content)
        self.assertEqual(self.spy.protocols[1:], [])

    async def test_nonzero_exit_is_an_error_result(self) -> None:
        result = await self.run_command("echo failing; exit 3")
        self.assertTrue(result.is_error)
        self.assertEqual(result.content, "failing\n\n\n[exit code 3]")
        self.assertEqual(result.details["exitCode"], 3)

    async def test_stdin_is_closed(self) -> None:
        result = await self.run_command("cat; echo after")
        self.assertEqual(result.content, "after\n")

    async def test_clean_environment(self) -> None:
        environ = {
            **ENV,
            "OPENCLAW_GATEWAY_TOKEN": "gateway-secret",
            "OPENAI_API_KEY": "sk-secret",
            "LC_ALL": "C",
        }
        result = await self.run_command("env", environ=environ)
        env = dict(line.split("=", 1) for line in result.content.splitlines() if "=" in line)
        self.assertNotIn("secret", result.content)
        self.assertEqual(env["PWD"], self.ws)
        self.assertEqual(env["PATH"], ENV["PATH"])
        self.assertEqual(env["LC_ALL"], "C")
        self.assertNotIn("OPENCLAW_GATEWAY_TOKEN", env)

    async def test_output_is_capped_keeping_both_ends(self) -> None:
        command = "echo FIRST; head -c 200000 /dev/zero | tr '\\0' x; echo; echo LAST"
        result = await self.run_command(command, max_output_bytes=1000)
        self.assertTrue(result.details["truncated"])
        self.assertEqual(result.details["outputBytes"], 6 + 200_000 + 1 + 5)
        self.assertLess(len(result.content), 1100)
        self.assertTrue(result.content.startswith("FIRST\nxxx"))
        self.assertTrue(result.content.endswith("xxx\nLAST\n"))
        self.assertIn("bytes of output omitted", result.content)

    async def test_timeout_kills_the_process_group(self) -> None:
        d = self.registry(timeout_seconds=30).invoke(
            "exec", {"command": "sleep 60 & echo $!; wait"}, self.context
        )
        grandchild = int(await self.spy.first_output)
        self.reap_on_failure(grandchild)
        protocol = self.spy.protocols[0]
        assert protocol.pid is not None
        self.reap_on_failure(protocol.pid)
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        result = await d
        self.assertTrue(result.is_error)
        self.assertTrue(result.details["timedOut"])
        self.assertIn("[timed out after 30s; the command was killed]", result.content)
        self.assertTrue(gone(protocol.pid))
        await until_gone(grandchild)

    async def test_model_may_ask_for_less_time_not_more(self) -> None:
        too_long = await self.run_command("true", args={"timeout": 100}, timeout_seconds=10)
        self.assertIn("timeout must be at most 10 seconds", too_long.content)
        d = self.registry(timeout_seconds=10).invoke(
            "exec", {"command": "echo go; sleep 60", "timeout": 2}, self.context
        )
        await self.spy.first_output
        self.clock.advance(2)
        self.assertTrue((await d).details["timedOut"])

    async def test_cancel_kills_the_process_group(self) -> None:
        d = self.registry().invoke("exec", {"command": "sleep 60 & echo $!; wait"}, self.context)
        grandchild = int(await self.spy.first_output)
        self.reap_on_failure(grandchild)
        protocol = self.spy.protocols[0]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        await protocol.ended
        await until_gone(grandchild)

    async def test_python_launcher_where_there_is_no_setsid_binary(self) -> None:
        """Without setsid(1), the Python trampoline makes the group: a cancel still kills all."""
        self.patch(
            runtime, "_launcher", lambda: (sys.executable, "-I", "-S", "-c", runtime._SETSID_PY)
        )
        await self.test_cancel_kills_the_process_group()

    async def test_the_runs_cancellation_hook_kills_it_too(self) -> None:
        d = self.registry().invoke("exec", {"command": "echo $$; sleep 60"}, self.context)
        shell = int(await self.spy.first_output)
        self.reap_on_failure(shell)
        self.context.cancellation.cancel()
        self.failureResultOf(d, CancelledError)
        await self.spy.protocols[0].ended
        self.assertTrue(gone(shell))

    async def test_background_leftovers_die_with_the_command(self) -> None:
        result = await self.run_command("sleep 60 >/dev/null 2>&1 & echo $!")
        self.assertFalse(result.is_error)
        leftover = int(result.content)
        self.reap_on_failure(leftover)
        await until_gone(leftover)

    async def test_leftovers_holding_the_output_open_do_not_hold_the_call(self) -> None:
        """``cmd &`` keeps the pipe open; the call still ends when the shell does."""
        result = await self.run_command("sleep 60 & echo $!")
        leftover = int(result.content)
        self.reap_on_failure(leftover)
        self.assertFalse(result.details["timedOut"])
        await until_gone(leftover)

    async def test_no_process_reactor_refuses(self) -> None:
        context = ToolContext(workspace=self.ws, clock=self.clock)
        result = await self.registry().invoke("exec", {"command": "true"}, context)
        self.assertEqual(result.content, "exec: this gateway cannot start processes for this run")

    async def test_argument_errors(self) -> None:
        self.assertIn(
            "'command' is required", (await self.run_command("", args={"command": None})).content
        )
        self.assertIn("the command is empty", (await self.run_command("  ")).content)
        self.assertEqual(self.spy.protocols, [])


if not sys.platform.startswith(("linux", "darwin")):  # pragma: no cover
    ExecTests.skip = "exec needs a POSIX shell and process groups"  # type: ignore[attr-defined]
