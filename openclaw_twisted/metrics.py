"""The gateway's Prometheus metrics: one registry per gateway, aggregated over worker processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.threads import deferToThreadPool

from .agents.events import RunEnded, RunFailed, RunStarted, TextDelta

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from .agents.events import RunEvent
    from .agents.runner import Run

#: ``Content-Type`` of a scrape: the Prometheus text format 0.0.4, which every scraper reads
#: (the names here need none of 1.0.0's escaping, so the text is the same).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
#: Where prometheus-client keeps each process's values when several workers share one port.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: LLM latencies: a cached answer in 50 ms, a long one in minutes (the default run timeout
#: is far beyond the last bucket; those land in ``+Inf``).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
#: The outcomes that are not a provider's failure (``RunError.kind`` of the runner's own).
NOT_PROVIDER = frozenset({"ok", "aborted", "agent_timeout", "shutdown", "internal_error"})


def multiprocess_dir(environ: Mapping[str, str] = os.environ) -> str | None:
    """The multiprocess directory this process writes its values to, if any."""
    return environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: str) -> dict[str, str]:
    """
    For a supervisor of worker processes, before it starts the first one: empty ``path``
    (values of an earlier run would be added to this one's) and return the environment
    entry each worker must be started with.  prometheus-client picks its value store when
    it is first imported, so the variable must be in the worker's environment from the
    start, not set later.  When a worker exits, call L{worker_exited} with its pid.
    """
    if os.path.isdir(path):
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
    os.makedirs(path, exist_ok=True)
    return {MULTIPROC_ENV: path}


def worker_exited(pid: int, path: str) -> None:
    """Forget a dead worker's live gauges (its runs and streams are gone with it)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)


def remove_multiprocess_dir(path: str) -> None:
    """For the supervisor once every worker has stopped."""
    shutil.rmtree(path, ignore_errors=True)


@attrs.define
class Metrics:
    """
    What one gateway counts, in its own ``CollectorRegistry`` (never the global one, so two
    gateways in one process do not collide).  With ``multiproc`` (several workers on one
    port: ``PROMETHEUS_MULTIPROC_DIR`` set when the process started) every worker writes its
    values to files there and a scrape of any worker adds them all up.
    """

    clock: IReactorTime
    registry: CollectorRegistry
    requests: Counter
    runs: Counter
    run_seconds: Histogram
    first_token_seconds: Histogram
    active_runs: Gauge
    open_streams: Gauge
    provider_errors: Counter
    redis_errors: Counter
    multiproc: str | None = None
    #: Runs that began (reached a model) and have had no answer yet.
    _awaiting_first: set[str] = attrs.field(factory=set)
    _request_counts: dict[tuple[str, int], Any] = attrs.field(factory=dict)

    @classmethod
    def create(
        cls,
        clock: IReactorTime,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> Metrics:
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        on: dict[str, Any] = {"registry": registry, "namespace": "openclaw"}
        # Live sums: a dead worker's runs and streams are not open any more.
        live: dict[str, Any] = {**on, "multiprocess_mode": "livesum"}
        return cls(
            clock,
            registry,
            Counter(
                "http_requests",
                "HTTP requests answered, by route (the router's name, never the raw path) and "
                "status (499: the client left before the response ended).",
                ["route", "status"],
                **on,
            ),
            Counter(
                "run_completed",
                "Agent runs ended, by outcome (ok, or the error kind).",
                ["outcome"],
                **on,
            ),
            Histogram(
                "run_duration_seconds",
                "Agent run latency, from the request (queued time included) to its end.",
                buckets=LATENCY_BUCKETS,
                **on,
            ),
            Histogram(
                "run_first_token_seconds",
                "From the request to the first piece of the answer.",
                buckets=LATENCY_BUCKETS,
                **on,
            ),
            Gauge("runs_active", "Agent runs streaming from a model now.", **live),
            Gauge(
                "streams_open",
                "Open SSE responses and WebSocket connections, by kind (sse, websocket).",
                ["kind"],
                **live,
            ),
            Counter(
                "provider_errors",
                "Runs that failed on a model provider, by error kind.",
                ["kind"],
                **on,
            ),
            Counter(
                "redis_errors",
                "Redis commands that failed (unreachable, timeout, connection_lost).",
                ["kind"],
                **on,
            ),
            multiprocess_dir(environ),
        )

    # Observers, each called from the reactor thread.

    def request_done(self, route: str, status: int) -> None:
        # Both labels come from small fixed sets, so this cache of children stays small.
        child = self._request_counts.get((route, status))
        if child is None:
            child = self._request_counts[route, status] = self.requests.labels(route, str(status))
        child.inc()

    def observe_run(self, run: Run, event: RunEvent) -> None:
        """An ``AgentRunner`` listener: outcomes, latencies, runs in flight."""
        if isinstance(event, TextDelta):
            if run.run_id in self._awaiting_first:
                self._awaiting_first.discard(run.run_id)
                self.first_token_seconds.observe(self.clock.seconds() - run.created_at)
            return
        if isinstance(event, RunStarted):
            self._awaiting_first.add(run.run_id)
            self.active_runs.inc()
            return
        if not isinstance(event, RunEnded | RunFailed):
            return  # tool events: the run goes on
        self._awaiting_first.discard(run.run_id)
        if run.started:
            self.active_runs.dec()
        outcome = "ok" if isinstance(event, RunEnded) else event.error.kind
        self.runs.labels(outcome).inc()
        if outcome not in NOT_PROVIDER:
            self.provider_errors.labels(outcome).inc()
        self.run_seconds.observe(self.clock.seconds() - run.created_at)

    def stream_opened(self, kind: str) -> Callable[[], None]:
        """Count an open stream; call what this returns (once) when it closes."""
        gauge = self.open_streams.labels(kind)
        gauge.inc()
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                gauge.dec()

        return close

    def redis_error(self, kind: str) -> None:
        """The ``on_error`` of a ``cluster`` ``RedisClient``."""
        self.redis_errors.labels(kind).inc()

    # The scrape.

    def render(self) -> bytes:
        """The text exposition: this registry's, or every worker's values added up."""
        if self.multiproc is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiproc)
        return generate_latest(merged)

    def scrape(self) -> Deferred[bytes]:
        """
        ``render()`` without blocking the reactor: in one process it takes half a millisecond
        and runs here; across workers it reads every worker's files (a few milliseconds), so
        it runs in the reactor's thread pool (when ``clock`` is a reactor with one).
        """
        reactor: Any = self.clock
        threads = IReactorThreads.providedBy(reactor) and IReactorFromThreads.providedBy(reactor)
        if self.multiproc is None or not threads:
            return succeed(self.render())
        return deferToThreadPool(reactor, reactor.getThreadPool(), self.render)
