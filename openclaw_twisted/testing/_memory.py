"""A whole gateway in memory: no port, no disk, its time on a Clock."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.task import Clock

from ..agents.store import MemorySessionStore
from ..providers.interface import IProvider

if TYPE_CHECKING:
    from treq.testing import StubTreq

    from ..gateway import Gateway


#: The token of the gateway L{memory_gateway} builds by default.
MEMORY_TOKEN = "test-token"


@attrs.frozen
class MemoryGateway:
    """A gateway in memory (L{memory_gateway}): no port, no disk, its time on ``clock``."""

    clock: Clock
    gateway: Gateway
    #: treq's API against ``gateway.resource()``; call ``http.flush()`` after a request.
    http: StubTreq
    store: MemorySessionStore
    #: The token (or password) a client presents; ``None`` with ``auth.mode: none``.
    token: str | None = MEMORY_TOKEN

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header a client of this gateway sends."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def memory_gateway(
    config: Mapping[str, Any] | None = None,
    *,
    providers: Iterable[IProvider] = (),
    state_dir: str | None = None,
) -> MemoryGateway:
    """
    A whole gateway for a synchronous test: HTTP requests go through treq's ``StubTreq``
    to ``gateway.resource()`` (``http://127.0.0.1/...``), sessions stay in memory, timers
    run on a ``Clock``.  ``config`` is an ``openclaw.json`` document (default: chat
    completions on); token auth uses L{MEMORY_TOKEN} unless the config names another
    credential.  ``providers`` replace the configured ones (name their models in
    ``config``, e.g. ``agents.defaults.model: "scripted/m"``; the built-in echo model
    answers otherwise).  Nothing is read from ``~/.openclaw``: the state dir (workspace
    files) is ``state_dir``, by default one that does not exist.
    """
    from treq.testing import StubTreq

    from ..config import parse_config
    from ..gateway import Gateway
    from ..providers.registry import Providers

    if config is None:
        config = {"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}}}
    if state_dir is None:
        state_dir = os.path.join(tempfile.gettempdir(), f"openclaw-memory-{uuid.uuid4().hex}")
    # A config that names no token gets the test token (as from OPENCLAW_GATEWAY_TOKEN).
    environ = {"OPENCLAW_STATE_DIR": state_dir, "OPENCLAW_GATEWAY_TOKEN": MEMORY_TOKEN}
    parsed = parse_config(config, environ)
    clock = Clock()
    store = MemorySessionStore()
    offered = tuple(providers)
    gateway = Gateway(
        parsed, clock, providers=Providers.of(offered) if offered else None, store=store
    )
    http = StubTreq(gateway.resource())
    return MemoryGateway(clock, gateway, http, store, parsed.gateway.auth.secret)
