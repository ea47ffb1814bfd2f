"""What the edges (HTTP, WebSocket, the CLI's local mode) may use of a gateway, and no more."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from .agents.roster import Roster
from .agents.runner import AgentRunner
from .agents.store import ISessionStore
from .auth import Authenticator, ClientAddress, forwarded_for
from .config import ChatCompletionsConfig, MetricsConfig, ProviderConfig, ResponsesConfig
from .limits import RunLimits
from .web.origin import BrowserPolicy

if TYPE_CHECKING:
    from .cluster._idempotency import IIdempotencyKeys
    from .cluster._runs import ClusterRuns
    from .metrics import Metrics


@attrs.frozen
class Edge:
    """
    The narrow face of one gateway that its edges are built on (the composition root,
    ``Gateway``, builds it): every edge speaks to the agents through it, never to the
    providers, and none of them knows the gateway.
    """

    #: Timestamps, timers and deadlines (the gateway's reactor; a ``Clock`` in tests).
    clock: IReactorTime
    #: When the gateway was built (``clock`` time): uptime counts from here.
    started_at: float
    #: Checks a client's credential, and locks out an address that keeps guessing.
    auth: Authenticator
    #: The client's address: the socket peer, or the forwarded one behind a trusted proxy.
    client_address: ClientAddress
    #: The agents, and which one (and which session) a request is for.
    roster: Roster
    #: Starts runs; knows the runs in flight, their observers, and whether it takes new ones.
    runner: AgentRunner
    #: The sessions, read side (``sessions``, ``transcript``): the runner writes them.
    store: ISessionStore
    #: The caps on runs in flight per connection and per client address.
    limits: RunLimits
    #: Which browsers may drive the gateway (the ``Host`` on loopback, a WebSocket ``Origin``).
    browser: BrowserPolicy
    #: ``(provider, model id)`` of every model the providers serve (``models.list``).
    models: Callable[[], Sequence[tuple[str, str]]]
    #: The configured providers (the models' display names and context windows).
    providers: tuple[ProviderConfig, ...] = ()
    #: ``gateway.http.endpoints.chatCompletions``.
    chat_completions: ChatCompletionsConfig = ChatCompletionsConfig()
    #: ``gateway.http.endpoints.responses``.
    responses: ResponsesConfig = ResponsesConfig()
    #: Whether a stateless HTTP request's session is kept anyway.
    persist_ephemeral: bool = False
    #: What the edges count (requests, open streams); ``None`` while metrics are off.
    metrics: Metrics | None = None
    #: ``gateway.metrics``: whether ``GET /metrics`` is served, and its auth.
    metrics_config: MetricsConfig = MetricsConfig()
    #: The runs of every gateway on one Redis (``session.store: "redis"``), else ``None``.
    cluster: ClusterRuns | None = None
    #: Which run each WebSocket ``idempotencyKey`` started, on every gateway of one Redis
    #: (``None``: the connections' own registry is the only memory).
    idempotency: IIdempotencyKeys | None = None
    #: Whether a shared session store answers (Redis is connected); ``None``: it is local.
    store_up: Callable[[], bool] | None = None

    @property
    def ready(self) -> bool:
        """Whether new runs are taken (false once the gateway has begun to stop)."""
        return self.runner.ready

    @property
    def not_ready(self) -> str | None:
        """
        Why a balancer should send this gateway nothing new (``/readyz``, ``health``), or
        ``None``: it is shutting down, or its shared session store is unreachable.
        """
        if not self.runner.ready:
            return "shutting down"
        if self.store_up is not None and not self.store_up():
            return "session store unavailable"
        return None

    def client_ip(self, request: IRequest) -> str:
        """The IP of the client that sent ``request`` (the forwarded one behind a trusted proxy)."""
        peer = request.getClientAddress()
        host = getattr(peer, "host", "") or ""
        forwarded = forwarded_for(request.requestHeaders.getRawHeaders(b"x-forwarded-for"))
        return self.client_address.resolve(host, forwarded)

    def now_ms(self) -> int:
        """The clock's time in whole milliseconds (the protocol's timestamps)."""
        return int(self.clock.seconds() * 1000)
