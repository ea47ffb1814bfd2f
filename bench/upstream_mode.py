"""
``python -m bench.upstream_mode``: one short answer asked for streamed vs whole, through the real
``openai-completions`` provider against ``bench/provider.py``: this process's CPU per request
(the figure a loaded machine moves least) and the latency.  Rounds of each alternate.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred

from openclaw_twisted.config import ProviderConfig, ProviderModel
from openclaw_twisted.gateway import http_client
from openclaw_twisted.providers.interface import Message, ModelRequest
from openclaw_twisted.providers.openai import OpenAICompletionsProvider

#: The global reactor, untyped: the bench is a process edge, like the CLI.
reactor: Any = _reactor
REPO = Path(__file__).resolve().parent.parent


async def one_round(provider: OpenAICompletionsProvider, stream: bool, n: int) -> list[float]:
    request = ModelRequest("fast", "", (Message("user", "Say hello."),), stream=stream)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        answer = await provider.open(request)
        while await answer.next() is not None:
            pass
        answer.cancel()
        times.append(time.perf_counter() - started)
    return times


async def measure(port: int, rounds: int, n: int) -> dict[str, tuple[list[float], float]]:
    config = ProviderConfig(
        "bench",
        "openai-completions",
        f"http://127.0.0.1:{port}/v1",
        None,
        (),
        (ProviderModel("fast"),),
    )
    provider = OpenAICompletionsProvider(config, http_client(reactor), reactor)
    out: dict[str, tuple[list[float], float]] = {"streamed": ([], 0.0), "whole": ([], 0.0)}
    await one_round(provider, True, min(n, 200))  # warm up: connections, imports
    await one_round(provider, False, min(n, 200))
    for _ in range(rounds):
        for name, stream in (("streamed", True), ("whole", False)):
            cpu = time.process_time()
            times = await one_round(provider, stream, n)
            walls, used = out[name]
            out[name] = (walls + times, used + time.process_time() - cpu)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream_mode", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=2000, help="requests per round")
    options = parser.parse_args(argv)
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.provider", "--port", "0"],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline().split()[-1])
        result: dict[str, tuple[list[float], float]] = {}

        async def run() -> None:
            result.update(await measure(port, options.rounds, options.n))

        d: Deferred[None] = ensureDeferred(run())
        d.addBoth(lambda r: (reactor.stop(), r)[1])
        reactor.run()
        if not result:
            d.addErrback(lambda f: f.printTraceback())
            return 1
        for name, (walls, cpu) in result.items():
            walls.sort()
            p99 = walls[int(len(walls) * 0.99)]
            print(
                f"{name:8}: {cpu / len(walls) * 1e6:6.0f} us CPU a request; "
                f"latency p50 {statistics.median(walls) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms "
                f"({len(walls)} requests)"
            )
        return 0
    finally:
        child.kill()
        child.wait()


if __name__ == "__main__":
    sys.exit(main())
