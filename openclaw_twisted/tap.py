"""``twistd openclaw``: command-line options and the service they describe."""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from .auth import is_loopback
from .config import Config, ConfigError, load_config
from .gateway import DEFAULT_GRACE_SECONDS, Gateway
from .limits import with_backlog

log = Logger()


class Options(usage.Options):
    """The gateway's options, shared by ``twistd openclaw`` and ``openclaw-twisted gateway``."""

    synopsis = "[--config PATH] [--port N|ENDPOINT] [--bind loopback|lan|HOST] [--token T]"
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
    ]


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
    else:
        endpoint = str(port)
        m = re.search(r"interface=([^:]+)", endpoint)
        host = (
            m.group(1).replace("\\", "")
            if m
            else ("0.0.0.0" if endpoint.startswith("tcp") else host)
        )
    if auth.mode == "none" and not (is_loopback(host) or host == "localhost"):
        raise ConfigError(
            f"gateway.auth.mode: 'none' is refused when binding {host} (not loopback); "
            "set a token or password, or bind loopback"
        )
    if auth.mode == "token" and not auth.token:
        auth = attrs.evolve(auth, token=secrets.token_hex(24))
        log.info("generated gateway token (no token configured): {token}", token=auth.token)
    config = attrs.evolve(config, gateway=attrs.evolve(gw, auth=auth))
    return config, with_backlog(endpoint, gw.limits.listen_backlog)


def _escape(host: str) -> str:
    return host.replace(":", "\\:")


def makeService(options: Mapping[str, Any], reactor: Any = None) -> IService:
    """Build the gateway service; a bad config ends the process with one line, no traceback."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        config, endpoint_desc = resolve(options, os.environ)
        endpoint = serverFromString(reactor, endpoint_desc)
    except ConfigError as e:
        sys.stderr.write(f"openclaw: config error: {e}\n")
        raise SystemExit(2) from None
    except (ValueError, KeyError, TypeError) as e:
        sys.stderr.write(f"openclaw: --port: invalid endpoint {options.get('port')!r}: {e}\n")
        raise SystemExit(2) from None
    gateway = Gateway(config, reactor)
    return gateway.service(endpoint, grace=float(options.get("grace") or DEFAULT_GRACE_SECONDS))
