"""The Gateway: config, auth, agents, providers and sessions wired into one web resource."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import treq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import CannotListenError
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
from twisted.python.failure import Failure
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

from .agents.lanes import ILaneLock
from .agents.roster import Roster
from .agents.runner import AgentRunner
from .agents.sessions import DiskSessionStore
from .agents.store import ISessionStore
from .auth import Authenticator, ClientAddress, IAttemptStore, is_loopback
from .config import Config
from .edge import Edge
from .limits import GatedProviders, RunLimits, UpstreamGate
from .providers.echo import EchoProvider
from .providers.interface import ProviderError
from .providers.registry import Providers
from .tools.toolbox import Toolbox
from .web.app import GatewayHTTP
from .web.origin import BrowserPolicy
from .web.request import GatewaySite
from .web.root import GatewayRoot

if TYPE_CHECKING:
    # Autobahn is imported on the first WebSocket upgrade only; txredisapi when sessions
    # live in Redis.
    from .cluster import RedisClient, RedisEventBus
    from .cluster._idempotency import RedisIdempotencyKeys
    from .cluster._runs import ClusterRuns
    from .metrics import Metrics
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
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.http = http if http is not None else http_client(reactor)
        self.client_address = ClientAddress.from_config(config.gateway.trusted_proxies)
        #: The shared parts when ``session.store`` is ``redis`` (else ``None``).
        self.redis: RedisClient | None = None
        self.bus: RedisEventBus | None = None
        self.cluster: ClusterRuns | None = None
        self.idempotency: RedisIdempotencyKeys | None = None
        lanes: ILaneLock | None = None
        attempts: IAttemptStore | None = None
        if config.session_store == "redis":
            store, lanes, attempts = self._shared(store)
        self.auth = Authenticator(config.gateway.auth, reactor, self.client_address, attempts)
        self.roster = Roster.from_config(config)
        self.limits = RunLimits.from_config(config.gateway.limits)
        self.providers = GatedProviders.gating(
            providers or Providers.from_config(config, self.http, reactor),
            UpstreamGate.from_config(reactor, config.gateway.limits),
        )
        # Sessions live under the state dir unless a store is injected (tests, embedding);
        # their fsyncs run on the reactor's thread pool when it has one.
        threads = IReactorThreads.providedBy(reactor) and IReactorFromThreads.providedBy(reactor)
        if store is None:
            disk = DiskSessionStore(config.state_dir, reactor=reactor if threads else None)
            # Other processes may share the state dir (--workers, agent --local).
            store, lanes = disk, disk.lanes()
        self.store = store
        self.runner = AgentRunner(
            self.roster,
            self.providers,
            self.store,
            reactor,
            toolbox=Toolbox.for_reactor(config.tools, reactor),
            lanes=lanes,
        )
        self._join_cluster()
        #: ``GET /metrics`` (``gateway.metrics.enabled``); prometheus-client is imported only
        #: then.  An injected one is used even when the config leaves the endpoint off.
        if metrics is None and config.gateway.metrics.enabled:
            from .metrics import Metrics

            metrics = Metrics.create(reactor)
        self.metrics = metrics
        if metrics is not None:
            self.runner.listeners.append(metrics.observe_run)
        #: When this gateway was built (reactor time): uptime counts from here.
        self.started_at: float = reactor.seconds()
        self.edge = Edge(
            clock=reactor,
            started_at=self.started_at,
            auth=self.auth,
            client_address=self.client_address,
            roster=self.roster,
            runner=self.runner,
            store=self.store,
            limits=self.limits,
            browser=BrowserPolicy.from_config(config.gateway),
            models=self.providers.all_models,
            providers=config.providers,
            chat_completions=config.chat_completions,
            responses=config.gateway.responses,
            persist_ephemeral=config.persist_ephemeral,
            metrics=self.metrics,
            metrics_config=config.gateway.metrics,
            cluster=self.cluster,
            idempotency=self.idempotency,
            store_up=None if self.redis is None else self._redis_up,
        )
        self._http_app = GatewayHTTP(self.edge)
        self._ws_factory: GatewayWebSocketFactory | None = None
        self._ws_resource: IResource | None = None
        self._root: IResource | None = None
        self._sites: list[GatewaySite] = []

    def _shared(
        self, store: ISessionStore | None
    ) -> tuple[ISessionStore, ILaneLock, IAttemptStore | None]:
        """Sessions, lanes, the failed-auth limiter and runs on the Redis every gateway shares."""
        from .cluster import (
            RedisAttempts,
            RedisClient,
            RedisEventBus,
            RedisLanes,
            RedisSessionStore,
            RedisTranscripts,
        )
        from .cluster._idempotency import RedisIdempotencyKeys
        from .cluster._runs import ClusterRuns

        url = self.config.redis.url
        assert url is not None  # the config refuses session.store "redis" without one
        reactor = self.reactor
        self.redis = redis = RedisClient.connect(reactor, url)
        self.bus = RedisEventBus.connect(reactor, url, redis)
        self.cluster = ClusterRuns(redis, self.bus, reactor)
        self.idempotency = RedisIdempotencyKeys(redis, self.cluster, reactor)
        transcripts = RedisTranscripts(redis)

        def durable(_: object) -> Deferred[str | None]:
            return transcripts.durability()

        def warn(problem: str | None) -> None:
            if problem is not None:
                log.warn("{problem}", problem=problem)

        redis.when_connected().addCallback(durable).addCallbacks(warn, lambda f: None)
        rate_limit = self.config.gateway.auth.rate_limit
        attempts = (
            RedisAttempts(redis, rate_limit, reactor, self.client_address.is_trusted)
            if rate_limit is not None
            else None
        )
        lanes = RedisLanes(redis, reactor, self.config.redis.lease_seconds)
        return (store or RedisSessionStore(transcripts)), lanes, attempts

    def _redis_up(self) -> bool:
        """Whether the Redis connection is up (``/readyz``): a balancer's reason to send."""
        return self.redis is not None and self.redis.connected

    def _join_cluster(self) -> None:
        if self.cluster is not None:
            # Subscribed again on every reconnect; a failure now is only this attempt's.
            self.cluster.attach(self.runner).addErrback(
                lambda f: log.warn("not yet listening to the other gateways: {why}", why=f.value)
            )

    @property
    def ready(self) -> bool:
        """Whether the gateway takes new runs (the runner's say: false once stopping)."""
        return self.runner.ready

    def client_ip(self, request: IRequest) -> str:
        """The client's IP (the forwarded one behind a trusted proxy)."""
        return self.edge.client_ip(request)

    def resource(self) -> IResource:
        """The root resource: HTTP routes and the WebSocket protocol, for any ``Site``."""
        if self._root is None:
            self._root = GatewayRoot(
                self._http_app.app.resource(),
                self.websocket_resource,
                self.edge.browser,
            )
        return self._root

    def websocket_resource(self) -> IResource:
        """The WebSocket side, built on first use: Autobahn costs ~6 MB a gateway may never need."""
        if self._ws_resource is None:
            from .ws.server import websocket_resource

            resource = websocket_resource(self.edge)
            self._ws_factory = resource._factory
            self._ws_resource = resource
        return self._ws_resource

    def site(self) -> GatewaySite:
        """A ``Site`` serving ``resource()`` (without a per-request access log)."""
        site = GatewaySite(
            self.resource(),
            gate=self._http_app.body_gate,
            reactor=self.reactor,
            answered=self._http_app.count_response if self.metrics is not None else None,
        )
        self._sites.append(site)
        return site

    def service(
        self,
        endpoint: IStreamServerEndpoint,
        grace: float = DEFAULT_GRACE_SECONDS,
        *,
        announce: bool = True,
    ) -> GatewayService:
        """
        A service that listens on ``endpoint`` and stops gracefully; ``announce=False`` (a
        worker of ``--workers``) leaves the "listening on" lines to the supervisor.
        """
        return GatewayService(self, endpoint, grace, announce=announce)

    async def shutdown(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        """Not ready any more; give runs ``grace`` seconds, cancel the rest, tell WS clients."""
        self.runner.closing = True
        if self._ws_factory is not None:
            self._ws_factory.shutdown()
        await self.runner.shutdown(grace)
        await self.store.flush()
        # Every response in flight (SSE streams ending with their error frame) is written
        # out before the reactor may stop and cut the connections.
        for site in self._sites:
            await site.drain(DRAIN_SECONDS)
        pool = getattr(getattr(self.http, "_agent", None), "_pool", None)
        if pool is not None:
            await pool.closeCachedConnections()
        await self.close_shared()

    async def close_shared(self) -> None:
        """Leave the shared run registry and close the Redis connections (if any)."""
        if self.cluster is not None:
            await self.cluster.detach()
        if self.bus is not None:
            await self.bus.close()
        if self.redis is not None:
            await self.redis.close()

    def describe(self) -> list[str]:
        """The start-up log lines that say what this gateway serves."""
        cc = self.config.chat_completions
        responses = self.config.gateway.responses.enabled
        lines = [
            "endpoints: /healthz /readyz, WebSocket on every path"
            + (
                ", POST /v1/chat/completions, GET /v1/models"
                if cc.enabled
                else ", POST /v1/responses, GET /v1/models (chat completions off)"
                if responses
                else " (chat completions off, /v1/* answers 404: set "
                "gateway.http.endpoints.chatCompletions.enabled to true)"
            )
            + (", POST /v1/responses" if responses and cc.enabled else "")
            + ", GET /sessions/{key}/history, POST /sessions/{key}/kill",
            f"agents: {', '.join(self.roster.ids)} (default {self.roster.default_id})",
        ]
        lines.extend(self._describe_models())
        typos = {bad for bad, _ in self.config.near_misses}
        served_elsewhere = [k for k in self.config.ignored if k not in typos]
        if served_elsewhere:
            lines.append("ignoring config keys not served here: " + ", ".join(served_elsewhere))
        lines.extend(self.config.notes)
        return lines

    def _describe_models(self) -> list[str]:
        configured = [n for n, p in self.providers.by_name.items() if not _is_echo(p)]
        on_echo = [a.id for a in self.roster.agents if self._primary_is_echo(a.model.primary)]
        if len(on_echo) == len(self.roster.agents) and not configured:
            return ["using the built-in offline echo model (no model provider configured)"]
        lines = ["model providers: " + (", ".join(configured) or "none but the built-in echo")]
        if on_echo:
            many = len(on_echo) > 1
            lines.append(
                f"agent{'s' if many else ''} {', '.join(on_echo)} "
                f"answer{'' if many else 's'} with the built-in offline echo model"
            )
        return lines

    def _primary_is_echo(self, ref: str) -> bool:
        try:
            provider, _ = self.providers.resolve(ref)
        except ProviderError:
            return False
        return _is_echo(provider)

    def warnings(self) -> list[str]:
        """The start-up log lines (warning level) about config that will not do what it says."""
        lines: list[str] = []
        chat_off = not self.config.chat_completions.enabled
        for bad, known in self.config.near_misses:
            line = f"config key {bad} is ignored: did you mean {known}?"
            if chat_off and known.startswith("gateway.http.endpoints"):
                line += " (chat completions stay off, so /v1/chat/completions answers 404)"
            lines.append(line)
        for agent in self.roster.agents:
            for ref in agent.model.refs:
                try:
                    self.providers.resolve(ref)
                except ProviderError as e:
                    which = "" if ref == agent.model.primary else " (fallback)"
                    lines.append(f"agent {agent.id}{which}: {e.message}; runs using it will fail")
        return lines


def _is_echo(provider: object) -> bool:
    return isinstance(provider, EchoProvider)


class StartError(Exception):
    """The gateway cannot start serving; the message is one line for people."""


class CannotListen(StartError):
    """The endpoint refused to listen (port taken, no permission, bad address)."""


class UnsafeBind(StartError):
    """Auth mode ``none`` on an address that is not loopback."""


@implementer(IStreamServerEndpoint)
@attrs.frozen
class _Watched:
    """An endpoint whose listening (or failing to) the gateway service hears of first."""

    endpoint: IStreamServerEndpoint
    service: GatewayService

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        # A failure is the service's to report: StreamServerEndpointService sees None.
        d: Deferred[Any] = self.endpoint.listen(protocolFactory)
        d.addCallback(self.service._listening).addErrback(self.service._failed)
        return d


class DrainService(Service):
    """On stop: not ready any more, runs get their grace, transcripts are flushed."""

    def __init__(self, gateway: Gateway, grace: float) -> None:
        self.gateway = gateway
        self.grace = grace

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        log.info("openclaw gateway stopping (grace {grace:g}s)", grace=self.grace)
        await self.gateway.shutdown(self.grace)
        log.info("openclaw gateway stopped")


class GatewayService(MultiService):
    """
    The gateway as a service: its port and the drain that gives runs their grace on stop.

    ``listening`` fires with the port once it listens. A port that cannot be had raises a
    L{StartError} from ``privilegedStartService`` when it fails at once (TCP), or fails
    ``listening`` when it fails later.
    """

    def __init__(
        self,
        gateway: Gateway,
        endpoint: IStreamServerEndpoint,
        grace: float,
        *,
        announce: bool = True,
    ) -> None:
        super().__init__()
        self.gateway = gateway
        self.announce = announce
        self.endpoint = endpoint
        self.grace = grace
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self._starting = False
        self._start_error: StartError | None = None
        # Children stop in reverse: the port closes as the drain begins.
        DrainService(gateway, grace).setServiceParent(self)
        StreamServerEndpointService(_Watched(endpoint, self), gateway.site()).setServiceParent(self)

    def privilegedStartService(self) -> None:
        self._starting = True
        try:
            super().privilegedStartService()
        finally:
            self._starting = False
        if self._start_error is not None:
            raise self._start_error

    def _listening(self, port: IListeningPort) -> IListeningPort:
        if self.announce:
            announce(self.gateway, port)
        self.port = port
        self.listening.callback(port)
        return port

    def _failed(self, f: Failure) -> None:
        value = f.value
        error = value if isinstance(value, StartError) else CannotListen(_why(value))
        if self._starting:
            self._start_error = error
        else:
            self.listening.errback(Failure(error))


def refuse_unsafe(gateway: Gateway, port: IListeningPort) -> None:
    """Auth ``none`` off loopback: L{UnsafeBind}, the port closed."""
    address = port.getHost()
    if gateway.config.gateway.auth.mode == "none" and not _is_local(address):
        port.stopListening()
        raise UnsafeBind(
            f"gateway.auth.mode: 'none' is refused when listening on "
            f"{getattr(address, 'host', None)} (not loopback); set a token or password, "
            "or bind loopback"
        )


def announce(gateway: Gateway, port: IListeningPort) -> None:
    """
    Refuse auth ``none`` off loopback (L{UnsafeBind}, the port closed), else log the
    "listening on" line with the real address and what the gateway serves.
    """
    refuse_unsafe(gateway, port)
    address = port.getHost()
    host = getattr(address, "host", None)
    log.info(
        "openclaw gateway listening on http://{host}:{port}",
        host=_url_host(host) if host is not None else "?",
        port=getattr(address, "port", "?"),
    )
    for line in gateway.describe():
        log.info("{line}", line=line)
    for line in gateway.warnings():
        log.warn("{line}", line=line)


def _is_local(address: object) -> bool:
    """A loopback IP, or a UNIX socket (reachable only through the file system)."""
    if isinstance(address, UNIXAddress):
        return True
    host = getattr(address, "host", None)
    return isinstance(host, str) and is_loopback(host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _why(error: BaseException | None) -> str:
    """``could not listen on 127.0.0.1 port 8080: address already in use`` (no reprs)."""
    if isinstance(error, CannotListenError):
        where = f"port {error.port}"
        if error.interface:
            where = f"{error.interface} {where}"
        socket_error = error.socketError
        reason = getattr(socket_error, "strerror", None) or str(socket_error)
        return f"could not listen on {where}: {reason[:1].lower()}{reason[1:]}"
    return f"could not listen: {error}"
