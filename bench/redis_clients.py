"""
``python -m bench.redis_clients``: txredisapi vs redis.asyncio from Twisted code, side by side.

Starts one ``redis-server`` on a free loopback port (Debian's package), then one child process
per client and reactor (a reactor is chosen once per process), each measuring the same three
things: sequential round-trips (``SET`` then ``GET``, each awaited), pipelined commands
(batches of 100 ``SET`` in one pipeline) and pub/sub (messages a subscriber receives per
second while another connection publishes in windows of 100).  The redis.asyncio client is
driven the way the gateway would drive it: from a Twisted coroutine, each call wrapped with
``Deferred.fromFuture``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BATCH = 100
CLIENTS = {
    "txredisapi, default (epoll) reactor": ("txredisapi", "default"),
    "txredisapi, asyncio reactor": ("txredisapi", "asyncio"),
    "redis.asyncio, asyncio reactor": ("redis.asyncio", "asyncio"),
}


async def _measure(
    roundtrip: Callable[[int], Awaitable[None]],
    pipelined: Callable[[int], Awaitable[None]],
    pubsub: Callable[[int], Awaitable[None]],
    n: int,
) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, fn, count in (
        ("round-trips/s", roundtrip, n),
        ("pipelined ops/s", pipelined, n * 10),
        ("pub/sub msgs/s", pubsub, n * 2),
    ):
        await fn(count // 10)  # warm-up
        start, cpu = time.perf_counter(), time.process_time()
        await fn(count)
        out[name] = count / (time.perf_counter() - start)
        # The client process's own CPU: the figure a loaded, shared machine moves least.
        out[name.removesuffix("/s") + "/CPU-s"] = count / (time.process_time() - cpu)
    return out


async def _txredisapi(reactor: Any, port: int, n: int) -> dict[str, float]:
    import txredisapi
    from twisted.internet.defer import Deferred, gatherResults

    conn = await txredisapi.Connection("127.0.0.1", port, reconnect=False)
    pub = await txredisapi.Connection("127.0.0.1", port, reconnect=False)
    received: list[Deferred[None]] = []
    want = [0]

    class Sub(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            want[0] -= 1
            if want[0] == 0:
                received.pop().callback(None)

    factory = txredisapi.SubscriberFactory()
    factory.protocol = Sub
    from twisted.internet.endpoints import TCP4ClientEndpoint

    factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    sub = await factory.deferred
    await sub.subscribe("bench")

    async def roundtrip(count: int) -> None:
        for _ in range(count // 2):
            await conn.set("k", b"v" * 100)
            await conn.get("k")

    async def pipelined(count: int) -> None:
        for _ in range(count // BATCH):
            pipe = await conn.pipeline()
            for i in range(BATCH):
                pipe.set(f"p{i}", "v")
            await pipe.execute_pipeline()

    async def pubsub(count: int) -> None:
        done: Deferred[None] = Deferred()
        received.append(done)
        want[0] = count
        for _ in range(count // BATCH):
            await gatherResults([pub.publish("bench", "m" * 64) for _ in range(BATCH)])
        await done

    try:
        return await _measure(roundtrip, pipelined, pubsub, n)
    finally:
        await conn.disconnect()
        await pub.disconnect()
        await sub.disconnect()


async def _redis_asyncio(reactor: Any, port: int, n: int) -> dict[str, float]:
    import asyncio

    import redis.asyncio as aioredis
    from twisted.internet.defer import Deferred

    def d(awaitable: Awaitable[Any]) -> Deferred[Any]:
        return Deferred.fromFuture(asyncio.ensure_future(awaitable))

    conn = aioredis.Redis(host="127.0.0.1", port=port)
    pub = aioredis.Redis(host="127.0.0.1", port=port)
    sub = conn.pubsub()
    await d(sub.subscribe("bench"))
    await d(sub.get_message(timeout=1.0))  # the subscribe confirmation

    async def roundtrip(count: int) -> None:
        for _ in range(count // 2):
            await d(conn.set("k", b"v" * 100))
            await d(conn.get("k"))

    async def pipelined(count: int) -> None:
        for _ in range(count // BATCH):
            pipe = conn.pipeline(transaction=False)
            for i in range(BATCH):
                pipe.set(f"p{i}", "v")
            await d(pipe.execute())

    async def pubsub(count: int) -> None:
        async def receive() -> None:
            got = 0
            while got < count:
                if await sub.get_message(timeout=5.0) is not None:
                    got += 1

        receiving = d(receive())
        for _ in range(count // BATCH):
            await d(asyncio.gather(*(pub.publish("bench", "m" * 64) for _ in range(BATCH))))
        await receiving

    try:
        return await _measure(roundtrip, pipelined, pubsub, n)
    finally:
        await d(sub.aclose())
        await d(conn.aclose())
        await d(pub.aclose())


def child(client: str, reactor_name: str, port: int, n: int) -> None:
    """One measurement, in this process: its JSON on stdout."""
    if reactor_name == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor as installed
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    run = _txredisapi if client == "txredisapi" else _redis_asyncio

    async def main(reactor: Any) -> None:
        result = await run(reactor, port, n)
        print(json.dumps({"reactor": type(installed).__name__, **result}))

    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_clients", description=__doc__)
    parser.add_argument("-n", type=int, default=10_000, help="round-trips per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client (best kept)")
    parser.add_argument("--child", nargs=3, metavar=("CLIENT", "REACTOR", "PORT"))
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.n)
        return

    sys.path.insert(0, str(REPO))
    from tests.redis_support import SKIP_REASON, RedisServer

    if SKIP_REASON:
        raise SystemExit(SKIP_REASON)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            version = subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True, check=True
            ).stdout.split()[2]
            print(f"redis-server {version}; load average {os.getloadavg()} at start")
            best: dict[str, dict[str, float]] = {}
            for _ in range(args.repeat):  # interleaved, so load changes hit every client
                for label, (client, reactor_name) in CLIENTS.items():
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "bench.redis_clients",
                            "-n",
                            str(args.n),
                            "--child",
                            client,
                            reactor_name,
                            str(server.port),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                        env=env,
                        cwd=REPO,
                    ).stdout
                    result = json.loads(out.strip().splitlines()[-1])
                    result.pop("reactor")
                    prev = best.setdefault(label, result)
                    for key, value in result.items():
                        prev[key] = max(prev[key], value)
        finally:
            server.stop()
    metrics = list(next(iter(best.values())))
    print(f"{'client':<36}" + "".join(f"{m:>20}" for m in metrics))
    for label, result in best.items():
        print(f"{label:<36}" + "".join(f"{result[m]:>20,.0f}" for m in metrics))
    print(f"best of {args.repeat}; load average {os.getloadavg()} at the end")


if __name__ == "__main__":
    main()
