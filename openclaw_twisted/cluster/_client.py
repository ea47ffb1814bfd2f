"""One Redis connection for the gateway: txredisapi underneath, typed, failing fast."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import txredisapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ..agents.store import StoreUnavailable

Arg = str | bytes | int | float

#: Seconds a command may wait for its reply before it fails with RedisUnavailable.
DEFAULT_TIMEOUT = 2.0
#: Reconnection backoff: first retry, and the longest wait between two (seconds).
RECONNECT_INITIAL, RECONNECT_MAX = 0.1, 2.0


class RedisUnavailable(StoreUnavailable):
    """Redis did not answer: it is down, restarting or too slow (the gateway answers 503)."""


class RedisCommandError(Exception):
    """Redis refused a command (a script error, a wrong type): a bug, not an outage."""


class IRedis(Interface):
    """The commands the cluster building blocks send; every reply is a Deferred."""

    def execute(*args: Arg) -> Deferred[Any]:
        """Send one command; fails with RedisUnavailable or RedisCommandError."""

    def eval(script: str, keys: Sequence[str], args: Sequence[Arg]) -> Deferred[Any]:
        """Run a Lua script atomically (EVALSHA, loading it once per connection)."""

    def close() -> Deferred[None]:
        """Stop reconnecting and close the connection."""


def parse_url(url: str) -> tuple[str, int, int | None, str | None]:
    """``redis://[:password@]host[:port][/db]`` as (host, port, db, password)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"a Redis URL looks like redis://host:6379/0, not {url!r}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database in a Redis URL is a number (redis://host:6379/0): {url!r}")
    return parts.hostname, parts.port or 6379, int(db) if db else None, parts.password


class _Factory(txredisapi.RedisFactory):
    """Tells who waits once a connection is in the pool, ready for commands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting: list[Deferred[None]] = []

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn.connected and conn in self.pool:
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(None)


@implementer(IRedis)
@attrs.define
class RedisClient:
    """
    One connection (Redis runs commands one at a time, so pipelining on one socket is the
    throughput; a pool only helps blocking commands, which these blocks do not use).

    A command fails at once while the connection is down (no queueing behind an outage: a
    turn must get its 503 now, and a write must not land minutes after its caller gave up);
    one that gets no answer within ``timeout`` seconds of ``clock`` fails and drops the
    connection, so a late reply can never be taken for the next command's.  txredisapi
    reconnects by itself, backing off from 0.1 s to 2 s.
    """

    _factory: Any
    _handler: Any
    clock: IReactorTime
    address: str
    timeout: float = DEFAULT_TIMEOUT
    #: Told the kind of each RedisUnavailable (``unreachable``, ``timeout``,
    #: ``connection_lost``): the gateway's ``Metrics.redis_error``.
    on_error: Callable[[str], object] | None = None

    @classmethod
    def connect(
        cls,
        reactor: IReactorTCP,
        url: str,
        clock: IReactorTime | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_error: Callable[[str], object] | None = None,
    ) -> RedisClient:
        """Start connecting (returns at once; commands fail fast until connected)."""
        host, port, db, password = parse_url(url)
        # No txredisapi reply timeout (ours runs on the injected clock), no number conversion
        # (a record that reads "123" stays a string).
        factory = _Factory(
            f"{host}:{port}", db, 1, isLazy=True, password=password, convertNumbers=False
        )
        factory.initialDelay, factory.maxDelay = RECONNECT_INITIAL, RECONNECT_MAX
        factory.startConnecting(HostnameEndpoint(reactor, host, port, timeout=timeout))
        time_source = clock if clock is not None else reactor
        assert IReactorTime.providedBy(time_source)
        return cls(factory, factory.handler, time_source, f"{host}:{port}", timeout, on_error)

    @property
    def connected(self) -> bool:
        return any(protocol.connected for protocol in self._factory.pool)

    def when_connected(self) -> Deferred[None]:
        """Fires once a connection is up and usable (at once when one is)."""
        if self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._factory.waiting.append(d)
        return d

    def execute(self, *args: Arg) -> Deferred[Any]:
        return self._send(lambda: self._handler.execute_command(*args))

    def eval(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Deferred[Any]:
        return self._send(lambda: self._handler.eval(script, list(keys), list(args)))

    def close(self) -> Deferred[None]:
        d: Deferred[Any] = self._factory.disconnect()
        return d.addCallback(lambda _: None)

    def _send(self, send: Any) -> Deferred[Any]:
        if not self.connected:
            self._count("unreachable")
            return fail(RedisUnavailable(f"Redis at {self.address} is unreachable (reconnecting)"))
        result: Deferred[Any] = Deferred()
        inner: Deferred[Any] = send()

        def timed_out() -> None:
            self._count("timeout")
            result.errback(
                RedisUnavailable(f"Redis at {self.address} did not answer in {self.timeout:g} s")
            )
            for protocol in list(self._factory.pool):
                # Down from now on, not from when the reactor reports the loss.
                protocol.connected = 0
                protocol.transport.abortConnection()

        call = self.clock.callLater(self.timeout, timed_out)

        def done(outcome: object) -> None:
            if call.active():
                call.cancel()
            if result.called:
                return  # timed out already; a failure here is the connection we dropped
            if isinstance(outcome, Failure):
                if outcome.check(txredisapi.ResponseError):
                    result.errback(RedisCommandError(f"Redis refused it: {outcome.value}"))
                elif outcome.check(txredisapi.ConnectionError):
                    self._count("connection_lost")
                    result.errback(
                        RedisUnavailable(f"lost the connection to Redis at {self.address}")
                    )
                else:
                    result.errback(outcome)
            else:
                result.callback(outcome)

        inner.addBoth(done)
        return result

    def _count(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(kind)
