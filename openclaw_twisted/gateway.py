"""The Gateway: config, auth, agents, providers and sessions wired into one web resource."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import treq
from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorFromThreads,
    IReactorThreads,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS, IRequest
from twisted.web.resource import IResource
from zope.interface import implementer

from .agents.roster import Roster
from .agents.runner import AgentRunner
from .agents.sessions import DiskSessionStore
from .agents.store import ISessionStore
from .auth import Authenticator, ClientAddress, forwarded_for
from .config import Config
from .limits import GatedProviders, RunLimits, UpstreamGate
from .providers.registry import Providers
from .web.app import GatewayHTTP
from .web.origin import BrowserPolicy
from .web.request import GatewaySite
from .web.root import GatewayRoot

if TYPE_CHECKING:
    from .ws.server import GatewayWebSocketFactory

log = Logger()

#: How long in-flight runs may take to finish when the gateway stops (CONTRACT §2).
DEFAULT_GRACE_SECONDS = 10.0
#: After the grace period, how long responses in flight may take to be written out.
DRAIN_SECONDS = 5.0


@implementer(IStreamClientEndpoint)
@attrs.frozen
class QuietEndpoint:
    """An endpoint whose connections' factories don't log "Starting/Stopping factory"."""

    endpoint: IStreamClientEndpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        # The HTTP pool builds a factory per connection: two log lines for each one.
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        return self.endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
@attrs.frozen
class ProviderEndpoints:
    """
    Where the provider HTTP client connects: straight to an IP literal, else by name.

    Twisted's default resolves even ``127.0.0.1`` in the thread pool, once per new
    connection; an IP literal needs no resolution.  TLS for ``https`` as Twisted's default.
    """

    reactor: Any
    tls: IPolicyForHTTPS = attrs.field(factory=BrowserLikePolicyForHTTPS)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"The host of {uri.toBytes()!r} is not ASCII") from None
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return QuietEndpoint(endpoint)


def http_client(
    reactor: Any,
    *,
    pool: HTTPConnectionPool | None = None,
    endpoints: IAgentEndpointFactory | None = None,
) -> treq.client.HTTPClient:
    """A treq client with a persistent pool sized for many concurrent provider streams."""
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        pool.retryAutomatically = False
    if endpoints is None:
        endpoints = ProviderEndpoints(reactor)
    return treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


class Gateway:
    """
    One OpenClaw gateway, built from a L{Config} and a reactor.

    Mount ``resource()`` in any Twisted ``Site`` to embed it, or run ``service(endpoint)``.
    The HTTP client, providers and session store may be injected (tests, embedding); the
    default store keeps sessions on disk under ``config.state_dir``.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        http: treq.client.HTTPClient | None = None,
        providers: Providers | None = None,
        store: ISessionStore | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.http = http if http is not None else http_client(reactor)
        self.client_address = ClientAddress.from_config(config.gateway.trusted_proxies)
        self.auth = Authenticator(config.gateway.auth, reactor, self.client_address)
        self.roster = Roster.from_config(config)
        self.limits = RunLimits.from_config(config.gateway.limits)
        self.providers = GatedProviders.gating(
            providers or Providers.from_config(config, self.http, reactor),
            UpstreamGate.from_config(reactor, config.gateway.limits),
        )
        # Sessions live under the state dir unless a store is injected (tests, embedding);
        # their fsyncs run on the reactor's thread pool when it has one.
        threads = IReactorThreads.providedBy(reactor) and IReactorFromThreads.providedBy(reactor)
        self.store = (
            store
            if store is not None
            else DiskSessionStore(config.state_dir, reactor=reactor if threads else None)
        )
        self.runner = AgentRunner(self.roster, self.providers, self.store, reactor)
        self.ready = True
        self._http_app = GatewayHTTP(self)
        self._ws_factory: GatewayWebSocketFactory | None = None
        self._ws_resource: IResource | None = None
        self._root: IResource | None = None
        self._sites: list[GatewaySite] = []

    def client_ip(self, request: IRequest) -> str:
        """The client's IP (the forwarded one behind a trusted proxy)."""
        peer = request.getClientAddress()
        host = getattr(peer, "host", "") or ""
        forwarded = forwarded_for(request.requestHeaders.getRawHeaders(b"x-forwarded-for"))
        return self.client_address.resolve(host, forwarded)

    def resource(self) -> IResource:
        """The root resource: HTTP routes and the WebSocket protocol, for any ``Site``."""
        if self._root is None:
            self._root = GatewayRoot(
                self._http_app.app.resource(),
                self.websocket_resource,
                BrowserPolicy.from_config(self.config.gateway),
            )
        return self._root

    def websocket_resource(self) -> IResource:
        """The WebSocket side, built on first use: Autobahn costs ~6 MB a gateway may never need."""
        if self._ws_resource is None:
            from .ws.server import websocket_resource

            resource = websocket_resource(self)
            self._ws_factory = resource._factory
            self._ws_resource = resource
        return self._ws_resource

    def site(self) -> GatewaySite:
        """A ``Site`` serving ``resource()`` (without a per-request access log)."""
        site = GatewaySite(self.resource(), gate=self._http_app.body_gate, reactor=self.reactor)
        self._sites.append(site)
        return site

    def service(
        self, endpoint: IStreamServerEndpoint, grace: float = DEFAULT_GRACE_SECONDS
    ) -> GatewayService:
        """A service that listens on ``endpoint`` and stops gracefully."""
        return GatewayService(self, endpoint, grace)

    async def shutdown(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """Not ready any more; give runs ``grace`` seconds, cancel the rest, tell WS clients."""
        self.ready = False
        if self._ws_factory is not None:
            self._ws_factory.shutdown()
        await self.runner.shutdown(grace)
        await maybeDeferred(self.store.flush)
        # Every response in flight (SSE streams ending with their error frame) is written
        # out before the reactor may stop and cut the connections.
        for site in self._sites:
            await site.drain(DRAIN_SECONDS)
        pool = getattr(getattr(self.http, "_agent", None), "_pool", None)
        if pool is not None:
            await pool.closeCachedConnections()

    def describe(self) -> list[str]:
        """The start-up log lines that say what this gateway serves."""
        cc = self.config.chat_completions
        lines = [
            "endpoints: /healthz /readyz, WebSocket on every path"
            + (
                ", POST /v1/chat/completions, GET /v1/models"
                if cc.enabled
                else " (chat completions off: gateway.http.endpoints.chatCompletions.enabled)"
            ),
            f"agents: {', '.join(self.roster.ids)} (default {self.roster.default_id})",
        ]
        models = {ref for a in self.roster.agents for ref in a.model.refs}
        if any(ref.startswith("echo") for ref in models):
            lines.append("using the built-in offline echo model (no model provider configured)")
        if self.config.ignored:
            lines.append("ignoring config keys not served here: " + ", ".join(self.config.ignored))
        lines.extend(self.config.notes)
        return lines


class GatewayService(Service):
    """Listens on an endpoint; on stop, closes the port, drains runs, then lets go."""

    def __init__(self, gateway: Gateway, endpoint: IStreamServerEndpoint, grace: float) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.grace = grace
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.endpoint.listen(self.gateway.site())

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            host = port.getHost()
            log.info(
                "openclaw gateway listening on http://{host}:{port}",
                host=getattr(host, "host", "?"),
                port=getattr(host, "port", "?"),
            )
            for line in self.gateway.describe():
                log.info("{line}", line=line)
            self.listening.callback(port)
            return port

        def failed(f: Any) -> None:
            log.error("openclaw gateway could not listen: {err}", err=f.getErrorMessage())
            self.listening.errback(f)
            self.gateway.reactor.stop()

        d.addCallbacks(listening, failed)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        log.info("openclaw gateway stopping (grace {grace:g}s)", grace=self.grace)
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        await self.gateway.shutdown(self.grace)
        log.info("openclaw gateway stopped")
