"""A gateway process of ``--workers``: its options on stdin, its port shared with the others."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from typing import IO

from twisted.logger import Logger

from . import tap, workers
from ._exit import Exit

log = Logger()


def worker_main(stdin: IO[bytes], stdout: IO[str], environ: Mapping[str, str]) -> int:
    """A worker: the options from the supervisor on stdin (the real port among them)."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from .config import ConfigError

    got = json.loads(stdin.read())
    index, spec = int(got["index"]), got["options"]
    # Ctrl-C reaches the whole process group: the supervisor forwards it as SIGTERM, once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    observer = workers.WorkerLog(tap.log_observer(spec.get("log-format") or "text", stdout), index)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        config, _ = tap.resolve(spec, environ)
    except ConfigError as e:
        log.critical("openclaw gateway: config error: {error}", error=str(e))
        return Exit.USAGE
    from .gateway import Gateway

    grace = float(spec.get("grace") or 10.0)
    gateway = Gateway(config, reactor)
    service = tap.Process(
        gateway.service(
            workers.SharedPort(
                reactor, spec["family"], spec["host"], spec["port"], spec["backlog"]
            ),
            grace=grace,
            announce=False,
        ),
        reactor,
    )

    def ready(_: object) -> None:
        # The supervisor says "listening" once every worker can take connections.
        with contextlib.suppress(OSError):
            os.write(workers.READY_FD, b"listening\n")
            os.close(workers.READY_FD)

    service.gateway.listening.addCallback(ready)
    try:
        service.privilegedStartService()
    except SystemExit as e:
        return int(e.code or 0)
    service.startService()
    # A stop signalled to the whole process group (systemd, ``kill -- -PGID``) arrives
    # twice, from there and from the supervisor: the second must not cut the drain short.
    reactor.addSystemEventTrigger(
        "before", "shutdown", signal.signal, signal.SIGTERM, signal.SIG_IGN
    )
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return int(service.exit_code)


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.stdin.buffer, sys.stdout, os.environ))
