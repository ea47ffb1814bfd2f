"""Caps on what clients can make the gateway do at once: runs in flight, provider requests."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from .config import LimitsConfig
from .providers.echo import EchoProvider
from .providers.interface import IModelStream, ModelEvent, ModelRequest, ProviderError
from .providers.registry import Providers

if TYPE_CHECKING:
    from .agents.runner import Run

#: The endpoint types whose server description takes a ``backlog`` argument.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


class TooManyRuns(Exception):
    """A client asked for a run past one of its caps; the message names the config key."""

    def __init__(self, scope: str, limit: int, key: str) -> None:
        who = "This connection" if scope == "connection" else "This client address"
        super().__init__(
            f"{who} already has {limit} runs in flight, the most allowed "
            f"(gateway.limits.{key}); wait for one to end, or raise the limit."
        )
        self.message = str(self)
        self.scope = scope
        self.limit = limit
        self.key = f"gateway.limits.{key}"


@attrs.define
class RunLimits:
    """Counts the runs in flight per client address and refuses past the caps."""

    per_connection: int = LimitsConfig().max_runs_per_connection
    per_client: int = LimitsConfig().max_runs_per_client
    _active: dict[str, int] = attrs.field(factory=dict, init=False)

    @classmethod
    def from_config(cls, config: LimitsConfig) -> RunLimits:
        return cls(config.max_runs_per_connection, config.max_runs_per_client)

    def in_flight(self, client: str) -> int:
        return self._active.get(client, 0)

    def admit(self, client: str, on_connection: int | None = None) -> None:
        """Raise L{TooManyRuns} if ``client`` (with ``on_connection`` runs here) is at a cap."""
        if on_connection is not None and on_connection >= self.per_connection:
            raise TooManyRuns("connection", self.per_connection, "maxRunsPerConnection")
        if self.in_flight(client) >= self.per_client:
            raise TooManyRuns("client", self.per_client, "maxRunsPerClient")

    def hold(self, client: str, run: Run) -> None:
        """Count ``run`` against ``client`` until it ends."""
        self._active[client] = self._active.get(client, 0) + 1

        def ended(result: object) -> object:
            left = self._active.get(client, 1) - 1
            if left > 0:
                self._active[client] = left
            else:
                self._active.pop(client, None)
            return result

        run.wait().addBoth(ended)


class UpstreamGate:
    """
    At most ``limit`` model provider requests in flight, gateway-wide; the runs past it wait
    (at most ``waiting`` of them, each at most ``wait_seconds``), first come first served.
    """

    def __init__(self, clock: IReactorTime, limit: int, waiting: int, wait_seconds: float) -> None:
        self._clock = clock
        self.limit = limit
        self.waiting = waiting
        self.wait_seconds = wait_seconds
        self.active = 0
        self._queue: deque[tuple[Deferred[None], IDelayedCall]] = deque()

    @classmethod
    def from_config(cls, clock: IReactorTime, config: LimitsConfig) -> UpstreamGate:
        return cls(
            clock,
            config.max_upstream_connections,
            config.max_upstream_waiting,
            config.upstream_wait_ms / 1000,
        )

    @property
    def queued(self) -> int:
        return len(self._queue)

    def acquire(self) -> Deferred[None]:
        """Fires once a slot is held (call ``release`` after); cancellable while it waits."""
        if self.active < self.limit and not self._queue:
            self.active += 1
            return _fired()
        if len(self._queue) >= self.waiting:
            return _failed(
                ProviderError(
                    "overloaded",
                    f"The gateway already has {self.limit} model provider requests open and "
                    f"{self.waiting} waiting, the most allowed (gateway.limits."
                    "maxUpstreamConnections, maxUpstreamWaiting); try again shortly.",
                    retry_after="1",
                )
            )

        def cancel(d: Deferred[None]) -> None:
            self._forget(d)

        d: Deferred[None] = Deferred(cancel)
        timer = self._clock.callLater(self.wait_seconds, self._expire, d)
        self._queue.append((d, timer))
        return d

    def release(self) -> None:
        """Give a slot back: the longest-waiting run gets it."""
        if self._queue:
            d, timer = self._queue.popleft()
            if timer.active():
                timer.cancel()
            d.callback(None)  # the slot passes on: ``active`` stays the same
            return
        self.active -= 1

    def _forget(self, d: Deferred[None]) -> None:
        for entry in self._queue:
            if entry[0] is d:
                self._queue.remove(entry)
                if entry[1].active():
                    entry[1].cancel()
                return

    def _expire(self, d: Deferred[None]) -> None:
        for entry in self._queue:
            if entry[0] is d:
                self._queue.remove(entry)
                d.errback(
                    ProviderError(
                        "overloaded",
                        f"No model provider connection came free within {self.wait_seconds:g}s: "
                        f"the gateway already has {self.limit} open, the most allowed "
                        "(gateway.limits.maxUpstreamConnections, upstreamWaitMs); "
                        "try again shortly.",
                        retry_after="1",
                    )
                )
                return


def _fired() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.callback(None)
    return d


def _failed(error: Exception) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(Failure(error))
    return d


@implementer(IModelStream)
class _Held:
    """A model stream that gives its gate slot back once it ends or is cancelled."""

    def __init__(self, stream: IModelStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def _let_go(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def next(self) -> Deferred[ModelEvent | None]:
        def ended(event: Any) -> Any:
            if event is None or isinstance(event, Failure):
                self._let_go()
            return event

        return self._stream.next().addBoth(ended)

    def cancel(self) -> None:
        self._let_go()
        self._stream.cancel()


@attrs.define
class GatedProviders(Providers):
    """L{Providers} whose every model request first takes a slot of an L{UpstreamGate}."""

    gate: UpstreamGate | None = attrs.field(default=None, kw_only=True)

    @classmethod
    def gating(cls, providers: Providers, gate: UpstreamGate) -> GatedProviders:
        return cls(providers.by_name, providers.models, gate=gate)

    def _local(self, refs: Sequence[str]) -> bool:
        # The built-in echo model opens no connection: nothing to hold a slot for.
        try:
            return all(isinstance(self.resolve(r)[0], EchoProvider) for r in refs)
        except ProviderError:
            return False

    async def open(
        self, refs: Sequence[str], make: Callable[[str], ModelRequest]
    ) -> tuple[str, IModelStream]:
        gate = self.gate
        if gate is None or self._local(refs):
            return await super().open(refs, make)
        await gate.acquire()
        try:
            ref, stream = await super().open(refs, make)
        except BaseException:
            # Failed or cancelled (CancelledError) before a stream was there.
            gate.release()
            raise
        return ref, _Held(stream, gate.release)


def with_backlog(description: str, backlog: int) -> str:
    """A server endpoint description with ``backlog=`` added, unless it sets its own."""
    kind = description.split(":", 1)[0].lower()
    if kind not in _BACKLOG_TYPES or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"
