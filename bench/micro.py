"""
``python -m bench.micro``: events per second through ``AgentRunner`` alone (no network, no disk).

``ready``: every model event is already there when the runner asks (``ScriptedProvider``);
``pending``: each arrives later, fired from outside the runner as a socket read would.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from openclaw_twisted.agents.events import RunEvent, RunRequest
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.agents.runner import AgentRunner, Run
from openclaw_twisted.agents.store import MemorySessionStore
from openclaw_twisted.config import parse_config
from openclaw_twisted.providers.interface import (
    Finish,
    IModelStream,
    IProvider,
    ModelEvent,
    ModelRequest,
    TextDelta,
    Usage,
)
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import Script, ScriptedProvider


@implementer(IModelStream)
class Later:
    """A stream whose events the benchmark hands over one at a time."""

    def __init__(self) -> None:
        self.pending: Deferred[ModelEvent | None] | None = None

    def next(self) -> Deferred[ModelEvent | None]:
        self.pending = Deferred()
        return self.pending

    def cancel(self) -> None:
        pass


@implementer(IProvider)
class LaterProvider:
    name = "later"

    def __init__(self) -> None:
        self.stream = Later()

    def open(self, request: ModelRequest) -> Deferred[IModelStream]:
        return succeed(self.stream)


def runner(provider: Any, model: str) -> AgentRunner:
    config = parse_config({"agents": {"defaults": {"model": model}}}, {})
    return AgentRunner(
        Roster.from_config(config), Providers.of([provider]), MemorySessionStore(), Clock()
    )


def drain(run: Run, seen: list[int]) -> None:
    """Pull every event as the SSE writer does: the next pull once the previous one fired."""
    state = {"pulling": False, "sync": False}

    def arrived(event: RunEvent | None) -> None:
        if event is None:
            return
        seen[0] += 1
        if state["pulling"]:
            state["sync"] = True
        else:
            pull()

    def pull() -> None:
        # Trampolined: an event that is already there is taken in this loop, not recursively.
        while True:
            state["pulling"], state["sync"] = True, False
            run.next_event().addCallback(arrived)
            state["pulling"] = False
            if not state["sync"]:
                return

    pull()


def ready(deltas: int) -> float:
    provider = ScriptedProvider(Script(deltas=("x",) * deltas))
    r = runner(provider, "scripted/m")
    seen = [0]
    t0 = time.perf_counter()
    run = r.start(RunRequest("main", "k", "hi", persist=False))
    drain(run, seen)
    elapsed = time.perf_counter() - t0
    assert seen[0] == deltas + 2, seen
    return deltas / elapsed


def pending(deltas: int) -> float:
    provider = LaterProvider()
    r = runner(provider, "later/m")
    seen = [0]
    run = r.start(RunRequest("main", "k", "hi", persist=False))
    drain(run, seen)
    stream = provider.stream
    t0 = time.perf_counter()
    for _ in range(deltas):
        assert stream.pending is not None
        stream.pending.callback(TextDelta("x"))
    elapsed = time.perf_counter() - t0
    assert stream.pending is not None
    stream.pending.callback(Finish("stop", Usage()))
    stream.pending.callback(None)
    assert seen[0] == deltas + 2, seen
    return deltas / elapsed


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    for name, f in (("ready", ready), ("pending", pending)):
        best = max(f(n) for _ in range(3))
        sys.stdout.write(f"{name}: {best:,.0f} deltas/s ({1e6 / best:.1f} us per delta)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
