"""The ``openclaw-twisted`` console script: ``gateway`` (foreground server) and ``agent``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.python import usage

from . import tap
from ._exit import Exit

PROG = "openclaw-twisted agent"


def version() -> str:
    """The installed distribution's version (this checkout's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("openclaw-twisted")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _print_version(options: usage.Options) -> None:
    """Display the version of openclaw-twisted (and of Twisted) and exit."""
    from twisted import __version__ as twisted_version

    sys.stdout.write(f"openclaw-twisted {version()} (Twisted {twisted_version})\n")
    raise SystemExit(0)


class GatewayOptions(tap.Options):
    opt_version = _print_version

    def getSynopsis(self) -> str:
        return f"Usage: openclaw-twisted gateway {tap.Options.synopsis}"


class AgentOptions(usage.Options):
    """``openclaw-twisted agent``: one agent turn, printed as it streams."""

    synopsis = (
        "--message TEXT [--agent ID] [--session-key KEY] "
        "[--url ws://...] [--token T] [--local] [--config PATH]"
    )
    optParameters = [
        ["message", "m", None, "What to say to the agent (required)."],
        ["agent", "a", None, "Agent id (default: the configured default agent)."],
        [
            "session-key",
            "s",
            None,
            "Session key (default: agent:<agentId>:main, so calls continue one conversation).",
        ],
        ["url", "u", None, "The gateway's WebSocket URL (default: ws://127.0.0.1:<port>)."],
        ["token", "t", None, "Gateway token or password (default: from the config)."],
        ["config", "c", None, "Path of openclaw.json (same resolution as the gateway)."],
    ]
    optFlags = [["local", "l", "Run the agent in this process, without a gateway."]]
    opt_version = _print_version

    def getSynopsis(self) -> str:
        return f"Usage: openclaw-twisted agent {self.synopsis}"

    def postOptions(self) -> None:
        if not (self["message"] or "").strip():
            raise usage.UsageError("--message TEXT is required")


class MainOptions(usage.Options):
    synopsis = "Usage: openclaw-twisted <command> [options]"
    subCommands = [
        ["gateway", None, GatewayOptions, "Run the gateway in the foreground."],
        ["agent", None, AgentOptions, "Send one message to an agent and print the answer."],
    ]

    opt_version = _print_version

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required: gateway or agent")


def run_gateway(options: tap.Options, reactor: Any) -> int:
    """The gateway in the foreground, as ``twistd -n openclaw`` runs it; the exit status."""
    from twisted.logger import globalLogBeginner

    observer = tap.log_observer(options["log-format"], sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    service = tap.makeService(options, reactor)
    try:
        # Listening happens here, before the reactor runs: a taken port ends the start.
        service.privilegedStartService()
    except SystemExit as e:
        return int(e.code or 0)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return int(getattr(service, "exit_code", Exit.OK))


async def agent_local(
    reactor: Any,
    options: AgentOptions,
    stdout: IO[str],
    stderr: IO[str],
    environ: Mapping[str, str] = os.environ,
) -> int:
    """One turn in this process (the gateway's own runner and disk sessions, no port)."""
    from .agents.events import RunRequest, RunResult, TextDelta, ToolStarted, tool_note
    from .agents.roster import UnknownAgent
    from .agents.store import session_key_error
    from .config import ConfigError, load_config
    from .gateway import Gateway

    try:
        config = load_config(options["config"], environ)
    except ConfigError as e:
        stderr.write(f"{PROG}: config error: {e}\n")
        return Exit.USAGE
    gateway = Gateway(config, reactor)
    edge = gateway.edge
    try:
        key = (options["session-key"] or "").strip()
        if (problem := session_key_error(key, "--session-key")) is not None:
            stderr.write(f"{PROG}: {problem}\n")
            return 2
        try:
            route = edge.roster.route("cli", session_key=key, agent=options["agent"])
        except UnknownAgent as e:
            known = ", ".join(e.known)
            stderr.write(f"{PROG}: unknown agent {e.agent_id!r} (configured: {known})\n")
            return Exit.USAGE
        run = edge.runner.start(RunRequest(route.agent_id, route.session_key, options["message"]))
        # Why the turn was cancelled from here, if it was: Ctrl-C or a closed stdout.
        cancelled: list[Exit] = []

        # Ctrl-C: the turn is cancelled and kept in the transcript as aborted; the reactor
        # stops once it has ended (its transcript is written on the reactor's thread pool).
        def interrupted() -> Deferred[RunResult]:
            cancelled.append(Exit.INTERRUPTED)
            run.cancel()
            return run.wait()

        def write(text: str) -> bool:
            if Exit.OUTPUT_CLOSED in cancelled:
                return False
            try:
                stdout.write(text)
                stdout.flush()
            except (OSError, ValueError):
                # Nobody reads the answer any more (a closed pipe): stop the model too.
                cancelled.append(Exit.OUTPUT_CLOSED)
                run.cancel()
                return False
            return True

        trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        wrote = False
        while (event := await run.next_event()) is not None:
            if isinstance(event, TextDelta):
                wrote = write(event.delta) or wrote
            elif isinstance(event, ToolStarted):
                # On stderr: stdout carries the answer alone (it may be piped on).
                stderr.write(tool_note(event.call.name, event.call.arguments) + "\n")
        reactor.removeSystemEventTrigger(trigger)
        result = await run.wait()
        if wrote:
            write("\n")
        if cancelled:
            if cancelled[0] == Exit.INTERRUPTED:
                stderr.write(f"{PROG}: interrupted\n")
            return cancelled[0]
        if result.error is not None:
            err = result.error
            stderr.write(f"{PROG}: {err.kind}: {err.message}\n")
            return Exit.RUN_FAILED
        return Exit.OK
    finally:
        await gateway.shutdown(0)


async def agent_remote(
    reactor: Any, options: AgentOptions, stdout: IO[str], stderr: IO[str]
) -> int:
    """One turn through a running gateway, over the WebSocket protocol."""
    from .ws.client import run_agent

    return await run_agent(reactor, options, stdout, stderr)


def run_agent_command(options: AgentOptions, reactor: Any) -> int:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    # stdout is the answer; problems worth a line go to stderr.
    errors = LogLevelFilterPredicate(defaultLogLevel=LogLevel.error)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [errors])],
        redirectStandardIO=False,
    )
    command = agent_local if options["local"] else agent_remote
    codes: list[int] = []

    def done(result: Any) -> None:
        if isinstance(result, int):
            codes.append(result)
        else:
            sys.stderr.write(f"{PROG}: internal error: {result.getErrorMessage()}\n")
            codes.append(Exit.RUN_FAILED)
        with contextlib.suppress(ReactorNotRunning):
            reactor.stop()

    def go() -> None:
        Deferred.fromCoroutine(command(reactor, options, sys.stdout, sys.stderr)).addBoth(done)

    reactor.callWhenRunning(go)
    reactor.run()
    code = codes[0] if codes else Exit.RUN_FAILED
    if code == Exit.OUTPUT_CLOSED:
        # What is still buffered for the closed pipe would fail again at exit, with a
        # traceback-like "Exception ignored" message: send it nowhere instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; the exit status is one of L{Exit}."""
    options = MainOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except tap.ConfigUsageError as e:
        sys.stderr.write(f"openclaw-twisted {options.subCommand}: {e}\n")
        return Exit.USAGE
    except usage.UsageError as e:
        shown = getattr(options, "subOptions", None) or options
        sys.stderr.write(f"{shown}\nopenclaw-twisted: {e}\n")
        return Exit.USAGE
    from twisted.internet import reactor

    if options.subCommand == "gateway":
        return run_gateway(options.subOptions, reactor)
    if options.subCommand == "agent":
        return run_agent_command(options.subOptions, reactor)
    return Exit.USAGE


if __name__ == "__main__":
    raise SystemExit(main())
