"""``twistd openclaw``: command-line options and the service they describe."""

from __future__ import annotations

import functools
import os
import secrets
import sys
from collections.abc import Mapping
from typing import IO, Any

import attrs
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from ._exit import Exit
from .auth import is_loopback
from .config import Config, ConfigError, load_config
from .gateway import DEFAULT_GRACE_SECONDS, Gateway, GatewayService, StartError, UnsafeBind
from .limits import with_backlog

log = Logger()

LOG_FORMATS = ("text", "json")


class ConfigUsageError(usage.UsageError):
    """The config (or an option over it) cannot be used: one line naming the key."""


class Options(usage.Options):
    """The gateway's options, shared by ``twistd openclaw`` and ``openclaw-twisted gateway``."""

    synopsis = (
        "[--config PATH] [--port N|ENDPOINT] [--bind loopback|lan|HOST] [--token T] "
        "[--log-format text|json] [--workers N]"
    )
    optParameters = [
        [
            "config",
            "c",
            None,
            "Path of openclaw.json (default: $OPENCLAW_CONFIG_PATH, "
            "$OPENCLAW_STATE_DIR/openclaw.json, ~/.openclaw/openclaw.json).",
        ],
        [
            "port",
            "p",
            None,
            "Port number or Twisted endpoint string, e.g. "
            "tcp:0:interface=127.0.0.1 (default: gateway.port, 18789).",
        ],
        ["bind", "b", None, "loopback (127.0.0.1), lan (0.0.0.0) or a host address."],
        ["token", "t", None, "Gateway token (overrides gateway.auth.token)."],
        [
            "grace",
            None,
            str(DEFAULT_GRACE_SECONDS),
            "Seconds in-flight runs may take to finish on stop.",
            float,
        ],
        [
            "log-format",
            None,
            "text",
            "text (for people) or json (one JSON object a line, for log shippers).",
        ],
        [
            "workers",
            "w",
            "1",
            "Gateway processes sharing the port (default 1: this process serves alone).",
        ],
    ]

    #: The config with the command line applied, and the endpoint string (set by parsing).
    resolved: tuple[Config, str] | None = None

    def postOptions(self) -> None:
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(
                f"--log-format: expected text or json, got {self['log-format']!r}"
            )
        self["workers"] = _workers(self["workers"])
        self.resolved = _resolve_or_usage(self)
        if self["workers"] > 1:
            from twisted.internet import reactor

            from .workers import shareable

            if not shareable(serverFromString(reactor, self.resolved[1])):
                raise usage.UsageError(
                    "--workers: the workers can share a TCP port only "
                    f"(not {self['port']!r}); put TLS or a UNIX socket in front of them"
                )
        parent = getattr(self, "parent", None)
        if self["log-format"] == "json" and parent is not None and "logger" in parent:
            # Under twistd, its --logger (the name of a log observer factory) is the hook;
            # twistd's options come first on its command line, so its log file is known.
            global _twistd_log_file
            _twistd_log_file = parent.get("logfile") or ("-" if parent.get("nodaemon") else "")
            parent["logger"] = f"{__name__}.twistd_json_observer"


#: The most ``--workers`` accepted (a process each: more than the machine has cores helps
#: no one, and this catches a typo before it starts hundreds of processes).
MAX_WORKERS = 64


def _workers(value: Any) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise usage.UsageError(
            f"--workers: expected a number of processes 1..{MAX_WORKERS}, got {value!r}"
        )
    return n


def _resolve_or_usage(options: Mapping[str, Any]) -> tuple[Config, str]:
    try:
        config, endpoint = resolve(options, os.environ)
    except ConfigError as e:
        raise ConfigUsageError(f"config error: {e}") from None
    from twisted.internet import reactor

    try:
        serverFromString(reactor, endpoint)  # only parsed here: nothing listens yet
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigUsageError(f"--port: invalid endpoint {options.get('port')!r}: {e}") from None
    return config, endpoint


def resolve(options: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[Config, str]:
    """Apply the command line over the config: the config and a server endpoint string."""
    config = load_config(options.get("config"), environ)
    gw = config.gateway
    auth = gw.auth
    if options.get("token"):
        auth = attrs.evolve(auth, token=options["token"])
    bind = options.get("bind")
    host = {"loopback": "127.0.0.1", "lan": "0.0.0.0"}.get(bind or "", bind or gw.bind_host)
    port = options.get("port")
    if port is None or str(port).strip().isdigit():
        number = int(port) if port is not None else gw.port
        if not 0 <= number <= 65535:
            raise ConfigError(f"--port: expected a port number 0..65535, got {number}")
        endpoint = f"tcp:{number}:interface={_escape(host)}"
        # An endpoint string is checked once it listens, on the port's real address.
        if auth.mode == "none" and not (is_loopback(host) or host == "localhost"):
            raise ConfigError(
                f"gateway.auth.mode: 'none' is refused when binding {host} (not loopback); "
                "set a token or password, or bind loopback"
            )
    else:
        endpoint = str(port)
    if auth.mode == "token" and not auth.token:
        auth = attrs.evolve(auth, token=secrets.token_hex(24))
        log.info("generated gateway token (no token configured): {token}", token=auth.token)
    config = attrs.evolve(config, gateway=attrs.evolve(gw, auth=auth))
    return config, with_backlog(endpoint, gw.limits.listen_backlog)


def _escape(host: str) -> str:
    return host.replace(":", "\\:")


def makeService(options: Mapping[str, Any], reactor: Any = None) -> IService:
    """
    The gateway as ``twistd`` runs it: a L{GatewayService} (its port and its drain).

    A bad config is a L{usage.UsageError}; a port that cannot be had ends the start with
    one log line and exit status 3 (2 for auth ``none`` off loopback).
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    resolved = getattr(options, "resolved", None) or _resolve_or_usage(options)
    config, endpoint = resolved
    gateway = Gateway(config, reactor)
    grace = float(options.get("grace") or DEFAULT_GRACE_SECONDS)
    workers = int(options.get("workers") or 1)
    if workers > 1:
        return Process(_supervisor(gateway, options, endpoint, workers, grace, reactor), reactor)
    return Process(gateway.service(serverFromString(reactor, endpoint), grace=grace), reactor)


def _supervisor(
    gateway: Gateway,
    options: Mapping[str, Any],
    endpoint: str,
    workers: int,
    grace: float,
    reactor: Any,
) -> IService:
    """``--workers N``: this process listens and supervises; the workers serve."""
    from .gateway import announce, refuse_unsafe
    from .workers import Supervisor

    spec = {name: options.get(name) for name in ("config", "port", "bind", "grace", "log-format")}
    auth = gateway.config.gateway.auth
    if auth.mode == "token":
        # The same token for every worker, also when it was generated just now.
        spec["token"] = auth.token
    return Supervisor(
        reactor,
        serverFromString(reactor, endpoint),
        workers,
        spec,
        check=lambda port: refuse_unsafe(gateway, port),
        announce=lambda port: announce(gateway, port),
        grace=grace,
    )


class Process(MultiService):
    """The gateway service run as a process: a failed start ends it with one line, no hang."""

    def __init__(self, service: GatewayService | Any, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.gateway = service
        #: What the process should exit with once the reactor has stopped.
        self.exit_code = Exit.OK
        service.setServiceParent(self)
        service.listening.addErrback(self._failed_later)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartError as e:
            # Before the reactor runs (twistd, the CLI): nothing to stop yet, just exit.
            self._report(e)
            raise SystemExit(self.exit_code) from None

    def _failed_later(self, f: Failure) -> None:
        f.trap(StartError)
        assert isinstance(f.value, StartError)
        self._report(f.value)
        self.reactor.callWhenRunning(self.reactor.stop)

    def _report(self, error: StartError) -> None:
        self.exit_code = Exit.USAGE if isinstance(error, UnsafeBind) else Exit.UNAVAILABLE
        log.critical("openclaw gateway: {error}", error=str(error))


def log_observer(log_format: str, out: IO[str]) -> ILogObserver:
    """Log events as text lines, or as JSON objects one a line (``json``)."""
    if log_format == "json":
        return JSONLines(jsonFileLogObserver(out, recordSeparator=""))
    # Twisted's text lines (``textFileLogObserver``'s), with each second's timestamp formatted
    # once: at a line per run, formatting the time was a fifth of the line's cost.
    return FileLogObserver(out, lambda event: formatEventAsClassicLogText(event, _cached_time))


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    return formatTime(second)


def _cached_time(when: float | None) -> str:
    """``formatTime`` (RFC 3339, to the second), the same text for every event of one second."""
    return _second(int(when)) if when is not None else formatTime(when)


@implementer(ILogObserver)
@attrs.frozen
class JSONLines:
    """
    Twisted's JSON log format (the event's fields as they were logged), one object a line,
    with ``level`` and the rendered ``text`` added for shippers that look for them.
    """

    observer: ILogObserver

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        extra = {"level": getattr(level, "name", None), "text": formatEvent(event)}
        self.observer({**event, **extra})


#: Where ``twistd`` logs (``--logfile``; ``-`` is stdout), for L{twistd_json_observer}.
_twistd_log_file = "-"


def twistd_json_observer() -> ILogObserver:
    """JSON lines where twistd would write its text log (``--logfile``, stdout with ``-n``)."""
    from twisted.python.logfile import LogFile

    if _twistd_log_file == "-":
        return log_observer("json", sys.stdout)
    return log_observer("json", LogFile.fromFullPath(_twistd_log_file or "twistd.log"))
