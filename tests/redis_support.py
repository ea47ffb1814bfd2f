"""A real ``redis-server`` for tests and the bench: a free loopback port and a temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import attrs
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SkipTest, TestCase

from openclaw_twisted.cluster import RedisClient

#: Why the Redis tests are skipped on this machine, or ``None`` when they can run.
SKIP_REASON: str | None = (
    None
    if shutil.which("redis-server")
    else "redis-server is not on PATH (Debian: apt-get install redis-server; .ci/run installs it)"
)

#: How long a server may take to answer PING after it is started.
START_DEADLINE = 10.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server on 127.0.0.1:``port`` answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """One ``redis-server`` process; ``start`` returns once it answers PING."""

    directory: Path
    port: int = attrs.field(factory=free_port)
    appendonly: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--dir", ".", "--logfile", "redis.log"]
        argv += ["--protected-mode", "no", "--daemonize", "no"]
        if self.appendonly:
            # Every write is fsynced before the reply: what "acknowledged is durable" needs.
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        return argv

    def start(self) -> None:
        """Start the server (again, on the same port and dir); raise if it never answers."""
        self.directory = self.directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=self.directory
        )
        deadline = time.monotonic() + START_DEADLINE
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.01)  # the poll interval of a bounded wait, not a synchronisation

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s); a no-op when it is not running."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to write anything more."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def start_redis(test: TestCase, appendonly: bool = False) -> RedisServer:
    """A server for this test, stopped at cleanup; the test is skipped without redis-server."""
    if SKIP_REASON:
        raise SkipTest(SKIP_REASON)
    server = RedisServer(Path(test.mktemp()), appendonly=appendonly)
    server.start()
    test.addCleanup(server.stop)
    return server


async def connect(
    test: TestCase, server: RedisServer, clock: IReactorTime | None = None, timeout: float = 2.0
) -> RedisClient:
    """A connected client (one "gateway"), closed at cleanup."""
    client = RedisClient.connect(reactor, server.url, clock=clock, timeout=timeout)
    test.addCleanup(client.close)
    await client.when_connected()
    return client


async def key_events(test: TestCase, server: RedisServer, event: str) -> DeferredQueue[str]:
    """
    The keys of Redis's own ``event`` notifications (``expire``: a TTL was set; ``expired``:
    a key ran out), as they happen: what a test waits on instead of the clock.
    """
    client = await connect(test, server)
    await client.execute("CONFIG", "SET", "notify-keyspace-events", "Egx")
    queue: DeferredQueue[str] = DeferredQueue()

    class Listener(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern: object, channel: str, message: str) -> None:
            queue.put(message)

    factory = txredisapi.SubscriberFactory()
    factory.protocol = Listener
    factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port))
    listener = await factory.deferred
    test.addCleanup(listener.disconnect)
    await listener.subscribe(f"__keyevent@0__:{event}")
    return queue
