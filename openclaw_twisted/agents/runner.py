"""Agent runs: one code path for HTTP, WebSocket and the CLI, events pulled one at a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .._pull import PullQueue
from ..providers.interface import (
    Finish,
    IModelStream,
    Message,
    ModelRequest,
    ProviderError,
    TextDelta,
    Usage,
)
from ..providers.registry import Providers
from .events import RunError, RunEvent, RunRequest, RunResult, Stream
from .roster import Agent, Roster, system_prompt
from .store import ISessionStore

log = Logger()

#: How many events may wait for a slow consumer before the run stops pulling from the model.
EVENT_BUFFER = 16

CancelReason = Literal["aborted", "agent_timeout", "shutdown"]


class UnknownAgent(Exception):
    """The request names an agent that is not configured."""


class Run:
    """
    One agent turn in flight.

    Consumers pull events with ``next_event()``; the run only pulls the next model event once
    its small buffer has room, so a consumer that stops pulling pauses the provider's body.
    """

    def __init__(
        self,
        request: RunRequest,
        agent: Agent,
        run_id: str,
        clock: IReactorTime,
        observe: Callable[[Run, RunEvent], object] | None = None,
    ) -> None:
        self.request = request
        self._observe = observe
        self.agent = agent
        self.run_id = run_id
        self.session_key = request.session_key
        self._clock = clock
        self._events: PullQueue[RunEvent] = PullQueue(high=EVENT_BUFFER, low=EVENT_BUFFER // 2)
        self._seq = 0
        self._task: Deferred[None] | None = None
        self._cancel_reason: CancelReason | None = None
        self._waiters: list[Deferred[RunResult]] = []
        self.started = False
        self.result: RunResult | None = None

    def next_event(self) -> Deferred[RunEvent | None]:
        """The next event; ``None`` after the last (``lifecycle`` ``end`` or ``error``)."""
        return self._events.get()

    def cancel(self, reason: CancelReason = "aborted") -> None:
        """Stop the run: closes the provider request; the turn is kept as ``aborted``."""
        if self._task is not None and self.result is None:
            self._cancel_reason = self._cancel_reason or reason
            self._task.cancel()

    def wait(self) -> Deferred[RunResult]:
        """Fires with the result once the run has ended, however it ended."""
        if self.result is not None:
            return succeed(self.result)
        d: Deferred[RunResult] = Deferred()
        self._waiters.append(d)
        return d

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _emit(self, stream: Stream, data: dict[str, Any]) -> RunEvent:
        self._seq += 1
        event = RunEvent(self.run_id, self._seq, self._now_ms(), self.session_key, stream, data)
        self._events.put(event)
        if self._observe is not None:
            self._observe(self, event)
        return event

    def _finish(self, result: RunResult) -> None:
        self.result = result
        self._events.finish()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)


class AgentRunner:
    """Starts runs, serialises them per session key, and remembers the ones in flight."""

    def __init__(
        self,
        roster: Roster,
        providers: Providers,
        store: ISessionStore,
        clock: IReactorTime,
    ) -> None:
        self.roster = roster
        self.providers = providers
        self.store = store
        self.clock = clock
        self.active: dict[str, Run] = {}
        self.listeners: list[Callable[[Run, RunEvent], object]] = []
        self._lanes: dict[str, DeferredLock] = {}

    def agent(self, agent_id: str) -> Agent:
        agent = self.roster.get(agent_id)
        if agent is None:
            raise UnknownAgent(agent_id)
        return agent

    def start(self, request: RunRequest) -> Run:
        """Begin a turn; it waits behind earlier turns on the same session key."""
        agent = self.agent(request.agent_id)
        run_id = request.run_id or str(uuid.uuid4())
        run = Run(request, agent, run_id, self.clock, self._notify)
        self.active[run.run_id] = run
        run._task = ensureDeferred(self._drive(run))
        return run

    def _notify(self, run: Run, event: RunEvent) -> None:
        for listener in list(self.listeners):
            listener(run, event)

    def _lane(self, key: str) -> DeferredLock:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = DeferredLock()
        return lane

    def _release(self, key: str, lane: DeferredLock) -> None:
        lane.release()
        if not lane.locked and not lane.waiting and self._lanes.get(key) is lane:
            del self._lanes[key]

    async def _drive(self, run: Run) -> None:
        req, agent = run.request, run.agent
        lane = self._lane(req.session_key)
        text: list[str] = []
        usage, stop = Usage(), "stop"
        stream: IModelStream | None = None
        timer: IDelayedCall | None = None
        error: RunError | None = None
        started_ms = 0
        try:
            await lane.acquire()
        except CancelledError:
            error = RunError(run._cancel_reason or "aborted", "The run was cancelled.")
            self._end(run, "", usage, "aborted", error)
            return
        try:
            started_ms = run._now_ms()

            def on_timeout() -> None:
                run.cancel("agent_timeout")

            timer = self.clock.callLater(agent.timeout_seconds, on_timeout)
            history = (
                self.store.history(agent.id, req.session_key, agent.history_limit)
                if req.persist
                else []
            )
            messages = (*history, Message("user", req.message, req.images))
            system = system_prompt(agent, req.extra_system_prompt)

            def make(model: str) -> ModelRequest:
                return ModelRequest(model, system, messages, req.sampling)

            ref, stream = await self.providers.open(agent.model.refs, make)
            run.started = True
            run._emit("lifecycle", {"phase": "start", "startedAt": started_ms, "model": ref})
            while True:
                event = await stream.next()
                if event is None:
                    break
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    text.append(event.text)
                    run._emit("assistant", {"delta": event.text, "text": "".join(text)})
                    await run._events.room()
                elif isinstance(event, Finish):
                    stop, usage = event.stop_reason, event.usage
        except CancelledError:
            reason = run._cancel_reason or "aborted"
            message = {
                "agent_timeout": f"The agent run took longer than {agent.timeout_seconds:g}s.",
                "shutdown": "The gateway is shutting down.",
            }.get(reason, "The run was cancelled.")
            error = RunError(reason, message)
            stop = "aborted"
        except ProviderError as e:
            error = RunError(e.kind, e.message, e.status, e.retry_after)
            stop = "error"
        except Exception:
            log.failure("agent run {run_id} failed", run_id=run.run_id)
            error = RunError("internal_error", "Internal error.")
            stop = "error"
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            if stream is not None:
                stream.cancel()
        try:
            if req.persist and (run.started or stop == "aborted"):
                self._record(run, "".join(text), usage, stop, started_ms)
        except Exception:
            log.failure("could not write the transcript of run {run_id}", run_id=run.run_id)
            error = error or RunError("internal_error", "Internal error.")
            stop = "error"
        finally:
            self._release(req.session_key, lane)
        self._end(run, "".join(text), usage, stop, error)

    def _record(self, run: Run, text: str, usage: Usage, stop: str, started_ms: int) -> None:
        req = run.request
        user: dict[str, Any] = {
            "type": "message",
            "role": "user",
            "text": req.message,
            "ts": started_ms or run._now_ms(),
            "runId": run.run_id,
        }
        if req.images:
            user["images"] = len(req.images)
        assistant = {
            "type": "message",
            "role": "assistant",
            "text": text,
            "ts": run._now_ms(),
            "runId": run.run_id,
            "usage": usage.to_json(),
            "stopReason": stop,
        }
        self.store.append(run.agent.id, req.session_key, [user, assistant])

    def _end(self, run: Run, text: str, usage: Usage, stop: str, error: RunError | None) -> None:
        if error is None:
            run._emit("lifecycle", {"phase": "end", "stopReason": stop, "usage": usage.to_json()})
        else:
            run._emit("lifecycle", {"phase": "error", "error": error.to_json()})
        self.active.pop(run.run_id, None)
        run._finish(
            RunResult(run.run_id, run.session_key, run.agent.id, text, stop, usage, error)  # type: ignore[arg-type]
        )

    def shutdown(self, grace_seconds: float) -> Deferred[None]:
        """Let runs in flight finish for ``grace_seconds``, then cancel the rest."""
        runs = list(self.active.values())
        if not runs:
            return succeed(None)
        done: Deferred[None] = Deferred()
        remaining = {r.run_id for r in runs}

        def ended(result: RunResult) -> None:
            remaining.discard(result.run_id)
            if not remaining and not done.called:
                if timer.active():
                    timer.cancel()
                done.callback(None)

        def cut() -> None:
            for r in runs:
                r.cancel("shutdown")

        timer = self.clock.callLater(grace_seconds, cut)
        for r in runs:
            r.wait().addCallback(ended)
        return done
