"""``--workers N``: N gateway processes listening on one port (``SO_REUSEPORT``), supervised."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError, ProcessDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, LogEvent, Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

#: A worker that dies sooner than this after it started is restarted after a growing delay
#: (``RESTART_DELAY`` doubling up to ``RESTART_DELAY_MAX``); one that lived longer, at once.
STABLE_SECONDS = 10.0
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
#: On stop, workers get their grace period and the drain, then this long, before SIGKILL.
KILL_AFTER_SECONDS = 5.0

#: A worker writes ``listening`` on this fd once its port listens (then closes it).
READY_FD = 3
#: The endpoints workers can share: plain TCP (each worker listens on the port itself).
SHAREABLE = (TCP4ServerEndpoint, TCP6ServerEndpoint)


def shareable(endpoint: IStreamServerEndpoint) -> bool:
    """Whether workers can listen on this endpoint together (TCP, not TLS or UNIX)."""
    return isinstance(endpoint, SHAREABLE)


def where(endpoint: IStreamServerEndpoint) -> tuple[int, str, int, int]:
    """``(family, host, port, backlog)`` of a shareable endpoint."""
    ipv6 = isinstance(endpoint, TCP6ServerEndpoint)
    host = endpoint._interface or ("::" if ipv6 else "0.0.0.0")  # type: ignore[attr-defined]
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    return family, host, endpoint._port, endpoint._backlog  # type: ignore[attr-defined]


def reuseport_socket(family: int, host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other processes of this user may bind too."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
@attrs.frozen
class SharedPort:
    """
    A worker's port: its own listening socket on the supervisor's port (``SO_REUSEPORT``),
    so the kernel spreads new connections over the workers.
    """

    reactor: Any
    family: int
    host: str
    port: int
    backlog: int

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            sock = reuseport_socket(self.family, self.host, self.port)
            with sock:
                sock.listen(self.backlog)
                sock.setblocking(False)
                port = self.reactor.adoptStreamPort(sock.fileno(), self.family, protocolFactory)
        except Exception:
            return fail()
        return succeed(port)


@implementer(IListeningPort)
@attrs.define
class Reserved:
    """The supervisor's socket: bound (the port is this service's, even port 0), not listening."""

    sock: socket.socket

    def startListening(self) -> None:
        """It never listens: only the workers do."""

    def stopListening(self) -> None:
        self.sock.close()

    def getHost(self) -> IPv4Address | IPv6Address:
        host, port = self.sock.getsockname()[:2]
        if self.sock.family == socket.AF_INET6:
            return IPv6Address("TCP", host, port)
        return IPv4Address("TCP", host, port)


class _Worker(ProcessProtocol):
    """One worker process as the supervisor sees it: its spec on stdin, its end."""

    def __init__(self, supervisor: Supervisor, index: int, spec: bytes) -> None:
        self.supervisor = supervisor
        self.index = index
        self.spec = spec
        self.pid: int | None = None
        self.ready = False
        self.started_at = supervisor.reactor.seconds()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        # The options go on stdin, not argv or the environment: they may hold the token.
        self.transport.write(self.spec)
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD and b"listening" in data and not self.ready:
            self.supervisor._ready(self)

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)


class Supervisor(Service):
    """
    Listens once (so a taken port fails the start here, and the port, even port 0, is known
    before any worker runs), then runs ``workers`` processes that accept on that one socket.
    A worker that dies is restarted (a crash loop backs off); ``stopService`` closes the
    socket, sends every worker SIGTERM (each drains as a single gateway does) and fires
    once they have all exited.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamServerEndpoint,
        workers: int,
        spec: Mapping[str, Any],
        *,
        check: Callable[[IListeningPort], None] = lambda port: None,
        announce: Callable[[IListeningPort], None] = lambda port: None,
        argv: list[str] | None = None,
        grace: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.workers = workers
        self.spec = dict(spec)
        self.check = check
        self.announce = announce
        self.argv = argv or [sys.executable, "-m", "openclaw_twisted.worker"]
        self.grace = grace
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] = Deferred()
        self.running_workers: dict[int, _Worker] = {}
        #: Seconds to wait before the next restart of each worker index.
        self._delay: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopping = False
        self._gone: Deferred[None] | None = None
        self._kill: IDelayedCall | None = None

    def privilegedStartService(self) -> None:
        from .gateway import CannotListen, StartError, _why

        super().privilegedStartService()
        family, host, number, backlog = where(self.endpoint)
        try:
            # Held until the end, so the port stays this service's while workers restart.
            port = Reserved(reuseport_socket(family, host, number))
        except OSError as e:
            raise CannotListen(_why(CannotListenError(host, number, e))) from None
        try:
            self.check(port)
        except StartError:
            port.stopListening()
            raise
        self.port = port
        real = port.getHost().port
        self.spec.update(family=int(family), host=host, port=real, backlog=backlog)

    def _ready(self, worker: _Worker) -> None:
        """A worker listens; once every worker first does, the gateway is there."""
        worker.ready = True
        if self.listening.called or self.port is None:
            return
        if len(self.running_workers) == self.workers and all(
            w.ready for w in self.running_workers.values()
        ):
            self.announce(self.port)
            self.listening.callback(self.port)

    def startService(self) -> None:
        super().startService()
        log.info("openclaw gateway: starting {n} workers", n=self.workers)
        for index in range(1, self.workers + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping or self.port is None:
            return
        spec = json.dumps({"options": self.spec, "index": index}).encode()
        worker = _Worker(self, index, spec)
        self.reactor.spawnProcess(
            worker,
            self.argv[0],
            self.argv,
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2, READY_FD: "r"},
        )
        again = index in self._delay
        self._delay.setdefault(index, RESTART_DELAY)
        self.running_workers[index] = worker
        log.info(
            "worker {index} {what} (pid {pid})",
            index=index,
            what="restarted" if again else "started",
            pid=worker.pid,
        )

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self.running_workers.get(worker.index) is worker:
            del self.running_workers[worker.index]
        how = _how(reason)
        if self._stopping:
            log.info("worker {index} (pid {pid}) {how}", how=how, **_who(worker))
            if not self.running_workers and self._gone is not None:
                if self._kill is not None and self._kill.active():
                    self._kill.cancel()
                self._gone.callback(None)
            return
        lived = self.reactor.seconds() - worker.started_at
        delay = 0.0 if lived >= STABLE_SECONDS else self._delay.get(worker.index, RESTART_DELAY)
        self._delay[worker.index] = (
            RESTART_DELAY if lived >= STABLE_SECONDS else min(delay * 2, RESTART_DELAY_MAX)
        )
        log.warn(
            "worker {index} (pid {pid}) {how}; restarting it in {delay:g}s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        if self.port is not None:
            # Each worker closes its own listening socket as its drain begins.
            self.port.stopListening()
        if not self.running_workers:
            return succeed(None)
        log.info("openclaw gateway stopping {n} workers", n=len(self.running_workers))
        self._gone = Deferred()
        for worker in self.running_workers.values():
            _signal(worker, "TERM")
        self._kill = self.reactor.callLater(self.grace + KILL_AFTER_SECONDS + 5.0, self._kill_all)
        return self._gone

    def _kill_all(self) -> None:
        for worker in self.running_workers.values():
            log.warn("worker {index} (pid {pid}) did not stop: killing it", **_who(worker))
            _signal(worker, "KILL")


def _who(worker: _Worker) -> dict[str, Any]:
    return {"index": worker.index, "pid": worker.pid}


def _signal(worker: _Worker, name: str) -> None:
    transport = worker.transport
    if transport is None:
        return
    with contextlib.suppress(Exception):  # it has exited meanwhile
        transport.signalProcess(name)


def _how(reason: Failure) -> str:
    """``exited (status 0)``, ``was killed by SIGKILL``: how a worker ended, for the log."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited"
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


# -- the worker process -------------------------------------------------------------------


@implementer(ILogObserver)
@attrs.frozen
class WorkerLog:
    """A worker's log events, marked with its index (a field, and in the text's system)."""

    observer: ILogObserver
    index: int

    def __call__(self, event: LogEvent) -> None:
        extra: dict[str, Any] = {"worker": self.index}
        if event.get("log_system") is None:
            level = event.get("log_level")
            namespace = event.get("log_namespace", "-")
            extra["log_system"] = f"{namespace}#{getattr(level, 'name', '-')} worker {self.index}"
        self.observer({**event, **extra})
