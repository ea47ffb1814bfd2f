"""The ``openclaw-twisted`` console script: ``gateway`` (foreground server) and ``agent``."""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from . import tap


class GatewayOptions(tap.Options):
    synopsis = "openclaw-twisted gateway " + tap.Options.synopsis


class MainOptions(usage.Options):
    synopsis = "openclaw-twisted <command> [options]"
    subCommands = [
        ["gateway", None, GatewayOptions, "Run the gateway in the foreground."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required: gateway")


def run_gateway(options: tap.Options, reactor: Any) -> int:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    service = tap.makeService(options, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    options = MainOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"openclaw-twisted: {e}\n{options}\n")
        return 2
    from twisted.internet import reactor

    if options.subCommand == "gateway":
        try:
            return run_gateway(options.subOptions, reactor)
        except SystemExit as e:
            return int(e.code or 0)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
