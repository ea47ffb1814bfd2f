"""The ``exec`` tool: a shell command as a child process of the reactor, bounded and killable."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ._args import Args
from .interface import ITool, ToolContext, ToolError, ToolResult
from .paths import resolve

EXEC_TIMEOUT_SECONDS = 60.0
EXEC_MAX_OUTPUT_BYTES = 64 * 1024
#: The only variables a command inherits from the gateway's environment: none of them a
#: secret (API keys, OPENCLAW_GATEWAY_TOKEN, ... stay behind).
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")

# Run the shell as the leader of a new session (so of a new process group): killing the
# group then takes everything the command started, not just the shell. Twisted's
# spawnProcess has no preexec hook, so a launcher does it: util-linux's setsid(1) where
# there is one (fast), else a two-line Python trampoline (about 50 ms more per command).
_SETSID_PATHS = ("/usr/bin/setsid", "/bin/setsid")
_SETSID_PY = "import os,sys;os.setsid();os.execv(sys.argv[1],sys.argv[1:])"


@functools.cache
def _launcher() -> tuple[str, ...]:
    for path in _SETSID_PATHS:
        if os.access(path, os.X_OK):
            return (path,)
    if sys.executable:
        return (sys.executable, "-I", "-S", "-c", _SETSID_PY)
    return ()


def clean_env(environ: Mapping[str, str], cwd: str) -> dict[str, str]:
    """The environment for a command: the few harmless variables above, locale, and ``PWD``."""
    env = {k: v for k, v in environ.items() if k in PASSED_ENV or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    env["PWD"] = cwd
    return env


class CappedOutput:
    """The interleaved stdout+stderr of a command, keeping its first and last bytes.

    Both ends are kept because a command's first lines say what it is doing and its last
    lines say how it failed; the middle of a flood is dropped as it arrives.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap // 2 - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            keep = self.cap - self.cap // 2
            if len(self._tail) > keep:
                del self._tail[: len(self._tail) - keep]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self._head) + bytes(self._tail)).decode("utf-8", errors="replace")
        omitted = self.total - len(self._head) - len(self._tail)
        return (
            self._head.decode("utf-8", errors="replace")
            + f"\n[... {omitted} bytes of output omitted ...]\n"
            + self._tail.decode("utf-8", errors="replace")
        )


class ExecProtocol(ProcessProtocol):
    """One running command: collects output, enforces the timeout, kills its process group.

    ``result`` fires with the ``ToolResult`` when the process has ended; cancelling it kills
    the group at once. ``ended`` fires when the process is gone (after a kill too).
    """

    def __init__(self, clock: IReactorTime, timeout: float, cap: int, shown_cwd: str) -> None:
        self.clock = clock
        self.timeout = timeout
        self.output = CappedOutput(cap)
        self.shown_cwd = shown_cwd
        self.started = clock.seconds()
        self.timed_out = False
        self.result: Deferred[ToolResult] = Deferred(lambda d: self.kill())
        self.ended: Deferred[None] = Deferred()
        self._timer: IDelayedCall | None = None
        self._gone = False
        self.pid: int | None = None
        #: Whether the command leads its own process group (the setsid trampoline ran it).
        self.own_group = True

    def connectionMade(self) -> None:
        # Nothing is ever written to the command: closing stdin makes readers see EOF
        # instead of waiting for the timeout.
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.closeStdin()
        self._timer = self.clock.callLater(self.timeout, self._time_out)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output.add(data)

    def _time_out(self) -> None:
        self._timer = None
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        """SIGKILL the command's process group (the shell and whatever it started)."""
        if self._gone or self.pid is None:
            return
        if not self._kill_group():
            # Not a group leader yet (killed before the trampoline's setsid): the pid alone.
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)

    def _kill_group(self) -> bool:
        if self.pid is None or not self.own_group:
            return False
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            return False
        return True

    def processExited(self, reason: Failure) -> None:
        # The shell is gone; whatever it left running in the background goes with it (and
        # with those, the pipes they still hold open, so the call ends now, not at timeout).
        self._kill_group()

    def processEnded(self, reason: Failure) -> None:
        self._gone = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.result.called:
            self.result.callback(self._build(reason))
        self.ended.callback(None)

    def _build(self, reason: Failure) -> ToolResult:
        code: int | None = None
        sig: int | None = None
        if reason.check(ProcessDone):
            code = 0
        elif isinstance(reason.value, ProcessTerminated):
            code = reason.value.exitCode
            sig = reason.value.signal
        text = self.output.text() or "(no output)"
        if self.timed_out:
            text += f"\n\n[timed out after {self.timeout:g}s; the command was killed]"
        elif sig is not None:
            text += f"\n\n[killed by signal {sig}]"
        elif code:
            text += f"\n\n[exit code {code}]"
        return ToolResult(
            text,
            is_error=self.timed_out or code != 0,
            details={
                "exitCode": code,
                "signal": sig,
                "timedOut": self.timed_out,
                "truncated": self.output.truncated,
                "outputBytes": self.output.total,
                "durationMs": round((self.clock.seconds() - self.started) * 1000),
                "cwd": self.shown_cwd,
            },
        )


@implementer(ITool)
@attrs.frozen
class ExecTool:
    """``exec``: run a shell command in the workspace, with a timeout and an output cap.

    Not a sandbox: the command runs as the gateway's user and can reach whatever that user
    can. What it gets is a working directory in the workspace, an environment without the
    gateway's secrets, no stdin, and a kill (of its whole process group) on timeout or when
    the call is cancelled.
    """

    timeout_seconds: float = EXEC_TIMEOUT_SECONDS
    max_output_bytes: int = EXEC_MAX_OUTPUT_BYTES
    #: Where the pass-through variables come from; ``None``: the gateway's ``os.environ``.
    environ: Mapping[str, str] | None = None
    shell: tuple[str, ...] = ("/bin/sh", "-c")

    name = "exec"
    description = (
        "Run a shell command in the agent's workspace and return its combined output "
        "and exit code. Commands get no input and are killed when they time out."
    )

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The shell command to run."},
                "workdir": {
                    "type": "string",
                    "description": "The directory to run it in, relative to the workspace.",
                },
                "timeout": {
                    "type": "number",
                    "description": f"Seconds to allow (at most {self.timeout_seconds:g}).",
                },
            },
            "required": ["command"],
        }

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        a = Args(self.name, args, {"command": ("cmd",), "workdir": ("cwd",), "timeout": ()})
        command = a.string("command", required=True)
        if not command.strip():
            raise ToolError("exec: the command is empty")
        if "\x00" in command:
            raise ToolError("exec: the command contains a NUL byte")
        workdir = a.string("workdir", default=".") or "."
        timeout = a.number("timeout", lo=0) or self.timeout_seconds
        if timeout > self.timeout_seconds:
            raise ToolError(f"exec: timeout must be at most {self.timeout_seconds:g} seconds")
        reactor = context.process_reactor
        if reactor is None:
            raise ToolError("exec: this gateway cannot start processes for this run")

        def where() -> tuple[str, str]:
            r = resolve(context.workspace, workdir, self.name)
            if not os.path.isdir(r.real):
                raise ToolError(f"exec: the workdir {r.shown!r} is not a directory")
            return r.real, r.shown

        return context.run_in_thread(where).addCallback(
            lambda cwd: self._spawn(reactor, context, command, timeout, *cwd)
        )

    def _spawn(
        self,
        reactor: IReactorProcess,
        context: ToolContext,
        command: str,
        timeout: float,
        cwd: str,
        shown: str,
    ) -> Deferred[ToolResult]:
        protocol = ExecProtocol(context.clock, timeout, self.max_output_bytes, shown)
        # One stream, as a terminal shows it: stderr interleaved with stdout where it happened.
        argv = [*self.shell, "exec 2>&1\n" + command]
        launcher = _launcher()
        argv = [*launcher, *argv]
        protocol.own_group = bool(launcher)
        environ = os.environ if self.environ is None else self.environ
        try:
            reactor.spawnProcess(
                protocol, argv[0], argv, env=clean_env(environ, cwd), path=cwd, usePTY=False
            )
        except OSError as e:
            raise ToolError(f"exec: the command could not be started: {e.strerror or e}") from None
        return protocol.result
