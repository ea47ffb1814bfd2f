"""Agent runs: one code path for HTTP, WebSocket and the CLI, events pulled one at a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    FirstError,
    ensureDeferred,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._pull import PullQueue
from ..providers.interface import (
    Finish,
    IModelStream,
    Message,
    ModelRequest,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from ..providers.interface import ToolCallDelta as ModelToolCallDelta
from ..providers.registry import Providers
from ..tools.interface import Cancellation
from ..tools.interface import ToolResult as ToolOutcome
from ..tools.registry import ToolRegistry
from ..tools.toolbox import Toolbox
from . import events
from .events import (
    RunEnded,
    RunError,
    RunEvent,
    RunFailed,
    RunRequest,
    RunResult,
    RunStarted,
    TextSoFar,
    ToolCallDelta,
    ToolResult,
    ToolStarted,
    call_json,
)
from .lanes import ILaneLock, LocalLanes
from .roster import Agent, Roster, system_prompt
from .roster import UnknownAgent as UnknownAgent  # raised by start(), importable from here
from .store import (
    STORE_UNAVAILABLE,
    STORE_UNAVAILABLE_MESSAGE,
    ISessionStore,
    StoreUnavailable,
)

log = Logger()

#: How many events may wait for a slow consumer before the run stops pulling from the model.
EVENT_BUFFER = 16
#: The longest answer a run takes from a model, in characters (32 Mi: far beyond any model's
#: output limit).  A provider that streams without end is cut here as if ``max_tokens``
#: was reached (stopReason ``length``), or by the run timeout, whichever comes first.
MAX_ANSWER_CHARS = 32 * 1024 * 1024

#: ``internal_error``: an edge could not deliver the run's events (a bug, a broken transport).
#: ``session_store_unavailable``: the session's lane was lost (its lease could not be renewed).
CancelReason = Literal[
    "aborted", "agent_timeout", "shutdown", "internal_error", "session_store_unavailable"
]
T = TypeVar("T")
SHUTDOWN_MESSAGE = "The gateway is shutting down."
#: The result the model is shown for a tool call nobody answered (a client that sent a new
#: user message instead of the call's result): both provider APIs refuse a call left open.
MISSING_RESULT = "No result was given for this tool call."


def _cancelled(run: Run) -> RunError:
    reason = run._cancel_reason or "aborted"
    message = {
        "agent_timeout": f"The agent run took longer than {run.agent.timeout_seconds:g}s.",
        "shutdown": SHUTDOWN_MESSAGE,
        "internal_error": "Internal error.",
        STORE_UNAVAILABLE: STORE_UNAVAILABLE_MESSAGE,
    }.get(reason, "The run was cancelled.")
    return RunError(reason, message)


def _store_unavailable() -> RunError:
    return RunError(STORE_UNAVAILABLE, STORE_UNAVAILABLE_MESSAGE, retry_after="1")


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
        self._cancel_reason: CancelReason | None = None
        #: What the run is waiting for right now (lane, provider, stream, consumer).
        self._waiting_on: Deferred[Any] | None = None
        self._waiters: list[Deferred[RunResult]] = []
        self.started = False
        self.result: RunResult | None = None
        #: The model ref that answered, or the last one asked when none did (for the log).
        self.model: str | None = None
        #: The model's usage, once it reported one (``None``: unknown, as in the log line).
        self.tokens: Usage | None = None
        self._created = clock.seconds()
        #: How many client tool calls the run has made (they are numbered from 0).
        self._client_calls = 0

    @property
    def created_at(self) -> float:
        """When the run was asked for (clock seconds): its latency counts from here."""
        return self._created

    def next_event(self) -> Deferred[RunEvent | None]:
        """The next event; ``None`` after the last (``lifecycle`` ``end`` or ``error``)."""
        return self._events.get()

    def cancel(self, reason: CancelReason = "aborted") -> None:
        """
        Stop the run wherever it is (waiting in its lane, for the provider, mid-stream):
        closes the provider request; a turn that had begun is kept as ``aborted``.
        Safe to call from an event callback and more than once (the first reason wins).
        """
        if self.result is not None or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        waiting, self._waiting_on = self._waiting_on, None
        if waiting is not None:
            waiting.cancel()

    def wait(self) -> Deferred[RunResult]:
        """Fires with the result once the run has ended, however it ended."""
        if self.result is not None:
            return succeed(self.result)
        d: Deferred[RunResult] = Deferred()
        self._waiters.append(d)
        return d

    async def _wait(self, d: Deferred[T]) -> T:
        """Await ``d`` unless the run is (or gets) cancelled: then raise ``CancelledError``."""
        if self._cancel_reason is not None:
            d.addErrback(lambda _: None)
            d.cancel()
            raise CancelledError()
        self._waiting_on = d
        try:
            return await d
        finally:
            self._waiting_on = None

    def _check(self) -> None:
        # A cancel that arrived while the run was busy (e.g. from an event callback).
        if self._cancel_reason is not None:
            raise CancelledError()

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _emit(self, event: RunEvent) -> None:
        self._events.put(event)
        if self._observe is not None:
            self._observe(self, event)

    def _delta(self, delta: str, so_far: TextSoFar) -> None:
        # The hot path: one event per model delta, built in place.
        self._seq += 1
        ms = int(self._clock.seconds() * 1000)
        self._emit(events.TextDelta(self.run_id, self._seq, ms, self.session_key, delta, so_far))

    def _finish(self, result: RunResult) -> None:
        self.result = result
        self._events.finish()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)


_NOTHING: Any = object()


class _CallParts:
    """One tool call being written by the model: its id, name and argument pieces."""

    __slots__ = ("client_index", "id", "name", "parts")

    def __init__(self, id: str, name: str, client_index: int | None) -> None:
        self.id = id
        self.name = name
        self.parts: list[str] = []
        #: Its number among the run's client calls; ``None``: one of the agent's own tools.
        self.client_index = client_index

    def call(self) -> ToolCall:
        return ToolCall(self.id, self.name, "".join(self.parts) or "{}")


class _Streaming:
    """
    A turn's streaming phase, driven by callbacks rather than ``await``: a model event that
    is already there when asked for (and room in the run's buffer) is handled in a plain loop,
    so a delta costs a few calls, not a trip through the coroutine trampoline. ``start()``
    fires once the model's stream ended (or the answer reached ``MAX_ANSWER_CHARS``); it
    fails with ``CancelledError`` when the run is cancelled, or with the provider's error.
    """

    def __init__(
        self,
        run: Run,
        stream: IModelStream,
        text: list[str] | None,
        is_client: Callable[[str], bool] = lambda name: True,
    ) -> None:
        self.run = run
        self.stream = stream
        #: The tool calls of this answer by the provider's index, in the order they began.
        self.calls: dict[int, _CallParts] = {}
        self._is_client = is_client
        #: Every delta, shared by the events' ``TextSoFar``; ``None``: the answer is not kept.
        self.text = text
        self.size = 0
        self.stop: str = "stop"
        self.usage = Usage()
        self._done: Deferred[None] = Deferred()
        self._room_needed = False
        self._holding = False
        self._got: Any = _NOTHING
        self._value: Any = None
        self._kind = ""

    def start(self) -> Deferred[None]:
        self._loop()
        return self._done

    def _loop(self) -> None:
        run = self.run
        try:
            while not self._done.called:
                if run._cancel_reason is not None:
                    raise CancelledError()
                if self._room_needed:
                    self._room_needed = False
                    if not run._events.has_room() and not self._hold(run._events.room(), "room"):
                        return
                    continue
                if not self._hold(self.stream.next(), "next"):
                    return
                self._handle(self._value)
        except Exception:
            self._fail(Failure())

    def _hold(self, d: Deferred[Any], kind: str) -> bool:
        """True with ``_value`` set if ``d`` has fired already; else wait for it."""
        self._holding = True
        d.addBoth(self._arrived)
        self._holding = False
        got, self._got = self._got, _NOTHING
        if got is _NOTHING:
            self._kind = kind
            self.run._waiting_on = d
            return False
        if isinstance(got, Failure):
            self._fail(got)
            return False
        self._value = got
        return True

    def _arrived(self, result: Any) -> None:
        if self._holding:
            self._got = result
            return
        self.run._waiting_on = None
        if isinstance(result, Failure):
            self._fail(result)
            return
        if self._kind == "next":
            try:
                self._handle(result)
            except Exception:
                self._fail(Failure())
                return
        self._loop()

    def _handle(self, event: Any) -> None:
        if event is None:
            self._finish()
        elif isinstance(event, TextDelta):
            delta = event.text[: MAX_ANSWER_CHARS - self.size]
            if delta:
                self.size += len(delta)
                if self.text is not None:
                    self.text.append(delta)
                    so_far = TextSoFar(self.text, len(self.text))
                else:
                    so_far = TextSoFar([delta], 1)
                self.run._delta(delta, so_far)
                self._room_needed = True
            if self.size >= MAX_ANSWER_CHARS:
                self.stop = "length"
                self._finish()
        elif isinstance(event, ModelToolCallDelta):
            self._tool_delta(event)
        elif isinstance(event, Finish):
            self.stop, self.usage = event.stop_reason, event.usage
            self.run.tokens = event.usage

    def _tool_delta(self, event: ModelToolCallDelta) -> None:
        run = self.run
        parts = self.calls.get(event.index)
        first = parts is None
        if parts is None:
            name = event.name or ""
            index: int | None = None
            if self._is_client(name):
                index = run._client_calls
                run._client_calls += 1
            parts = self.calls[event.index] = _CallParts(
                event.id or f"call_{run.run_id[:8]}_{event.index}", name, index
            )
        piece = event.arguments_delta[: MAX_ANSWER_CHARS - self.size]
        self.size += len(piece)
        parts.parts.append(piece)
        if parts.client_index is not None:
            run._seq += 1
            run._emit(
                ToolCallDelta(
                    run.run_id,
                    run._seq,
                    run._now_ms(),
                    run.session_key,
                    parts.client_index,
                    parts.id if first else None,
                    parts.name if first else None,
                    piece,
                )
            )
            self._room_needed = True
        if self.size >= MAX_ANSWER_CHARS:
            self.stop = "length"
            self._finish()

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The answer's complete tool calls, in the order they began (none unless it stopped
        to have them run)."""
        if self.stop != "tool_calls":
            return ()
        return tuple(p.call() for p in self.calls.values())

    def is_client(self, call: ToolCall) -> bool:
        parts = next((p for p in self.calls.values() if p.id == call.id), None)
        return parts is not None and parts.client_index is not None

    def _finish(self) -> None:
        if not self._done.called:
            self._done.callback(None)

    def _fail(self, f: Failure) -> None:
        if not self._done.called:
            self._done.errback(f)


class _TooManyRounds(Exception):
    """The model still called tools when told to answer (``maxToolRounds`` reached)."""


def _add(a: Usage, b: Usage) -> Usage:
    """The usage of two model calls together (unknown only when both are)."""
    if not b.known:
        return a
    if not a.known:
        return b
    return Usage(
        (a.input_tokens or 0) + (b.input_tokens or 0),
        (a.output_tokens or 0) + (b.output_tokens or 0),
    )


def _since_last_reply(turn: tuple[Message, ...]) -> tuple[Message, ...]:
    last = max((i for i, m in enumerate(turn) if m.role == "assistant"), default=-1)
    return turn[last + 1 :]


def _paired(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """
    ``messages`` as both provider APIs accept them: every tool result right after the
    assistant turn that made its call (a result without one, e.g. where the history window
    begins, is dropped), and every call answered (a call left open gets ``MISSING_RESULT``).
    """
    if not any(m.role == "tool" or m.tool_calls for m in messages):
        return messages
    out: list[Message] = []
    open_calls: list[str] = []

    def close() -> None:
        out.extend(Message.result(i, MISSING_RESULT, is_error=True) for i in open_calls)
        open_calls.clear()

    for m in messages:
        if m.tool_result is not None:
            if m.tool_result.tool_call_id in open_calls:
                open_calls.remove(m.tool_result.tool_call_id)
                out.append(m)
            continue
        close()
        out.append(m)
        open_calls.extend(c.id for c in m.tool_calls)
    close()
    return tuple(out)


class AgentRunner:
    """Starts runs, serialises them per session key, and remembers the ones in flight."""

    def __init__(
        self,
        roster: Roster,
        providers: Providers,
        store: ISessionStore,
        clock: IReactorTime,
        *,
        log: Logger = log,
        toolbox: Toolbox | None = None,
        lanes: ILaneLock | None = None,
    ) -> None:
        self.roster = roster
        #: The agents' own tools (``None``: no agent has any).
        self.toolbox = toolbox
        self.providers = providers
        self.store = store
        self.clock = clock
        #: Where the one line per finished run goes (``log_run_end``).
        self.log = log
        self.active: dict[str, Run] = {}
        self.listeners: list[Callable[[Run, RunEvent], object]] = []
        #: Called with each run as it is taken (before it waits in its lane).
        self.on_start: list[Callable[[Run], object]] = []
        #: One turn per session at a time (in this process by default; across gateways
        #: with a shared lock).
        self.lanes: ILaneLock = lanes if lanes is not None else LocalLanes()
        #: Set once the gateway begins to stop: new runs end at once, and every edge says
        #: it is not ready (the one owner of readiness).
        self.closing = False

    @property
    def ready(self) -> bool:
        """Whether new runs are taken: until ``shutdown`` begins (``/readyz``, ``health``)."""
        return not self.closing

    def agent(self, agent_id: str) -> Agent:
        """The configured agent; L{UnknownAgent} otherwise."""
        return self.roster.require(agent_id)

    def start(self, request: RunRequest) -> Run:
        """
        Begin a turn; it waits behind earlier turns on the same session key.

        Raises L{UnknownAgent}. Once ``shutdown`` has begun, the run ends at once with a
        ``shutdown`` error event.
        """
        agent = self.agent(request.agent_id)
        run_id = request.run_id or str(uuid.uuid4())
        run = Run(request, agent, run_id, self.clock, self._notify)
        if self.closing:
            self._end(run, "", Usage(), "error", RunError("shutdown", SHUTDOWN_MESSAGE))
            return run
        self.active[run.run_id] = run
        for hook in list(self.on_start):
            try:
                hook(run)
            except Exception:
                log.failure("run hook {hook!r} failed", hook=hook)
        ensureDeferred(self._drive(run)).addErrback(
            lambda f: log.failure("agent run {run_id} crashed", f, run_id=run_id)
        )
        return run

    def _notify(self, run: Run, event: RunEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(run, event)
            except Exception:
                # One broken observer must not break the run or the other observers.
                log.failure("run listener {listener!r} failed", listener=listener)

    async def _drive(self, run: Run) -> None:
        key = run.request.session_key
        lost = lambda: run.cancel("session_store_unavailable")  # noqa: E731
        try:
            release = await run._wait(self.lanes.acquire(key, run.request.persist, lost))
        except CancelledError:
            # Cancelled while queued: the turn never began, so nothing is written.
            self._end(run, "", Usage(), "aborted", _cancelled(run))
            return
        except StoreUnavailable as e:
            log.warn(
                "run {run_id}: no lane for session {key}: {why}", run_id=run.run_id, key=key, why=e
            )
            self._end(run, "", Usage(), "error", _store_unavailable())
            return
        try:
            await self._turn(run)
        except Exception:
            log.failure("agent run {run_id} failed", run_id=run.run_id)
        finally:
            # Whatever happened, the consumers get a final event and the lane moves on.
            self._end(run, "", Usage(), "error", RunError("internal_error", "Internal error."))
            release().addErrback(
                lambda f: log.failure("could not release the lane of {key}", f, key=key)
            )

    async def _turn(self, run: Run) -> None:
        """
        One turn, holding its session's lane: model, events, transcript, final event.  A
        model that stops to call tools gets the agent's own tools run and answers again, up
        to ``max_tool_rounds`` times; a call to a client tool ends the run with ``tool_calls``.
        """
        req, agent = run.request, run.agent
        text: list[str] = []
        keep = req.keep_text or req.persist
        usage, stop = Usage(), "stop"
        stream: IModelStream | None = None
        streaming: _Streaming | None = None
        timer: IDelayedCall | None = None
        error: RunError | None = None
        started_ms = run._now_ms()
        asked: list[str] = []
        records: list[dict[str, Any]] = []
        #: Whether the answer being written still needs its transcript record.
        unrecorded = False
        client_calls: tuple[ToolCall, ...] = ()
        if agent.timeout_seconds > 0:
            timer = self.clock.callLater(agent.timeout_seconds, run.cancel, "agent_timeout")
        try:
            run._check()
            history = (
                await run._wait(self.store.history(agent.id, req.session_key, agent.history_limit))
                if req.persist
                else []
            )
            turn = req.turn()
            if req.conversation is not None and history:
                # A client that sends the whole conversation to a session that keeps it:
                # only what follows the last reply is new.
                turn = _since_last_reply(turn)
            records.extend(self._input_records(run, turn, started_ms))
            messages = _paired((*history, *turn))
            system = system_prompt(agent, req.extra_system_prompt)
            client_names = {t.name for t in req.tools}
            registry, agent_specs = self._agent_tools(agent.id, client_names)
            specs = (*req.tools, *agent_specs) if agent_specs else req.tools
            # The model is shown the text of the answers that called tools again: keep it.
            keep = keep or bool(agent_specs)

            def is_client(name: str) -> bool:
                # A name neither side has goes to the agent's tools (an error result the
                # model can read), unless the agent has none: then the client sees it.
                return name in client_names or not agent_specs

            rounds = 0
            while True:
                # A required or named call was the first answer's; later ones choose.
                choice = req.tool_choice if rounds == 0 or req.tool_choice == "none" else None
                if rounds >= agent.max_tool_rounds:
                    choice = "none"

                def make(
                    model: str,
                    choice: ToolChoice | None = choice,
                    messages: tuple[Message, ...] = messages,
                ) -> ModelRequest:
                    asked.append(model)
                    return ModelRequest(
                        model,
                        system,
                        messages,
                        req.sampling,
                        req.stream,
                        specs,
                        choice,
                        req.parallel_tool_calls,
                    )

                ref, opened = await run._wait(
                    ensureDeferred(self.providers.open(agent.model.refs, make))
                )
                stream = opened
                if not run.started:
                    run.model = ref
                    run._check()
                    run.started = True
                    run._emit(
                        RunStarted(
                            run.run_id,
                            run._next_seq(),
                            run._now_ms(),
                            run.session_key,
                            started_ms,
                            ref,
                        )
                    )
                text = []
                unrecorded = True
                streaming = _Streaming(run, opened, text if keep else None, is_client)
                # Not through run._wait: the pump registers what it waits for itself.
                await streaming.start()
                stream.cancel()
                stream = None
                stop, usage = streaming.stop, _add(usage, streaming.usage)
                calls = streaming.tool_calls()
                answer = "".join(text)
                records.append(self._answer_record(run, answer, streaming.usage, stop, calls))
                unrecorded = False
                if not calls:
                    break
                if rounds >= agent.max_tool_rounds:
                    raise _TooManyRounds()
                client_calls = tuple(c for c in calls if streaming.is_client(c))
                own = [c for c in calls if not streaming.is_client(c)]
                results: tuple[Message, ...] = ()
                if own:
                    assert registry is not None
                    results = await self._run_tools(run, registry, own)
                    records.extend(self._input_records(run, results, 0))
                if client_calls:
                    stop = "tool_calls"
                    break
                messages = (*messages, Message("assistant", answer, tool_calls=calls), *results)
                rounds += 1
        except _TooManyRounds:
            error = RunError(
                "tool_rounds",
                f"The agent was still calling tools after {agent.max_tool_rounds} rounds "
                "(agents.defaults.maxToolRounds).",
            )
            stop = "error"
        except CancelledError:
            error = _cancelled(run)
            stop = "aborted"
        except ProviderError as e:
            error = RunError(e.kind, e.message, e.status, e.retry_after)
            stop = "error"
        except StoreUnavailable as e:
            log.warn(
                "run {run_id}: the session store is unavailable: {why}", run_id=run.run_id, why=e
            )
            error = _store_unavailable()
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
            if run.model is None and (asked or error is not None):
                run.model = self._asked_ref(agent.model.refs, len(asked))
        if error is not None and streaming is not None and unrecorded:
            # The answer the failure cut short is kept as far as it got.
            usage = _add(usage, streaming.usage)
            records.append(self._answer_record(run, "".join(text), streaming.usage, stop, ()))
        # The transcript is durable before the final event, so whoever sees the end of a
        # turn (SSE [DONE], WS final, CLI exit) can rely on it being on disk.
        try:
            if req.persist and (run.started or stop == "aborted"):
                if not run.started:
                    records.append(self._answer_record(run, "", Usage(), stop, ()))
                # Not cancellable: the turn is over and its records are on their way to disk.
                await self.store.append(agent.id, req.session_key, records)
        except StoreUnavailable as e:
            log.warn("run {run_id}: transcript not written: {why}", run_id=run.run_id, why=e)
            error = error or _store_unavailable()
            stop = "error"
        except Exception:
            log.failure("could not write the transcript of run {run_id}", run_id=run.run_id)
            error = error or RunError("internal_error", "Internal error.")
            stop = "error"
        self._end(run, "".join(text), usage, stop, error, client_calls)

    def _agent_tools(
        self, agent_id: str, client_names: set[str]
    ) -> tuple[ToolRegistry | None, tuple[ToolSpec, ...]]:
        """The agent's own tools and their specs, less those a client tool shadows."""
        if self.toolbox is None:
            return None, ()
        specs = self.toolbox.specs(agent_id)
        if client_names and specs:
            specs = tuple(s for s in specs if s.name not in client_names)
        return self.toolbox.registry(agent_id), specs

    async def _run_tools(
        self, run: Run, registry: ToolRegistry, calls: list[ToolCall]
    ) -> tuple[Message, ...]:
        """
        Run the agent's own calls of one answer, all at once; their results, in the order
        the model made the calls.  Cancelling the run cancels every call (``exec`` kills
        its process group); the run timeout bounds them with the rest of the run.
        """
        assert self.toolbox is not None
        cancellation = Cancellation()
        context = self.toolbox.context(
            run.agent.id, run.agent.workspace, run.session_key, cancellation
        )

        def done(result: Any, call: ToolCall) -> Any:
            if isinstance(result, ToolOutcome):
                run._emit(
                    ToolResult(
                        run.run_id,
                        run._next_seq(),
                        run._now_ms(),
                        run.session_key,
                        call,
                        result.content,
                        result.is_error,
                    )
                )
            return result

        pending: list[Deferred[ToolOutcome]] = []
        for call in calls:
            run._emit(
                ToolStarted(run.run_id, run._next_seq(), run._now_ms(), run.session_key, call)
            )
            pending.append(
                registry.invoke(call.name, call.arguments, context).addCallback(done, call)
            )
        try:
            outcomes = await run._wait(gatherResults(pending, consumeErrors=True))
        except FirstError as e:
            # A call fails only when cancelled (the registry turns the rest into results).
            cancellation.cancel()
            raise CancelledError() from e.subFailure.value
        except BaseException:
            cancellation.cancel()
            raise
        return tuple(
            Message.result(call.id, outcome.content, outcome.is_error)
            for call, outcome in zip(calls, outcomes, strict=True)
        )

    def _input_records(
        self, run: Run, turn: tuple[Message, ...], started_ms: int
    ) -> list[dict[str, Any]]:
        """The transcript records of what the turn adds before the model answers."""
        out: list[dict[str, Any]] = []
        ts = started_ms or run._now_ms()
        for m in turn:
            record: dict[str, Any] = {"type": "message", "role": m.role}
            if m.tool_result is not None:
                record["toolCallId"] = m.tool_result.tool_call_id
                record["text"] = m.tool_result.content
                if m.tool_result.is_error:
                    record["isError"] = True
            else:
                record["text"] = m.text
            record["ts"] = ts
            record["runId"] = run.run_id
            if m.images:
                record["images"] = len(m.images)
            if m.tool_calls:
                record["toolCalls"] = [call_json(c) for c in m.tool_calls]
            out.append(record)
        return out

    def _answer_record(
        self, run: Run, text: str, usage: Usage, stop: str, calls: tuple[ToolCall, ...]
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "type": "message",
            "role": "assistant",
            "text": text,
            "ts": run._now_ms(),
            "runId": run.run_id,
            "usage": usage.to_json(),
            "stopReason": stop,
        }
        if run.request.response_id is not None:
            record["responseId"] = run.request.response_id
        if calls:
            record["toolCalls"] = [call_json(c) for c in calls]
        return record

    def _end(
        self,
        run: Run,
        text: str,
        usage: Usage,
        stop: str,
        error: RunError | None,
        tool_calls: tuple[ToolCall, ...] = (),
    ) -> None:
        if run.result is not None:
            return
        if error is None:
            run._emit(
                RunEnded(
                    run.run_id,
                    run._next_seq(),
                    run._now_ms(),
                    run.session_key,
                    stop,
                    usage,
                    tool_calls,
                )
            )
        else:
            run._emit(RunFailed(run.run_id, run._next_seq(), run._now_ms(), run.session_key, error))
        self.active.pop(run.run_id, None)
        result = RunResult(
            run.run_id,
            run.session_key,
            run.agent.id,
            text,
            stop,  # type: ignore[arg-type]
            usage,
            error,
            tool_calls if error is None else (),
        )
        self.log_run_end(run, result)
        run._finish(result)

    def _asked_ref(self, refs: tuple[str, ...], asked: int) -> str | None:
        """
        The ref of the last model asked: ``Providers.open`` asks each ref that resolves, in
        order, until one accepts; when none resolves, the last ref's error is the one raised.
        """
        resolving = [r for r in refs if self._resolves(r)][:asked]
        return resolving[-1] if resolving else (refs[-1] if refs else None)

    def _resolves(self, ref: str) -> bool:
        try:
            self.providers.resolve(ref)
        except ProviderError:
            return False
        return True

    def log_run_end(self, run: Run, result: RunResult) -> None:
        """
        The one log line of a finished run, however it ended: info when it answered, warning
        otherwise.  Every value is a named field (``jsonFileLogObserver`` writes them as keys):
        ``run_id``, ``agent_id``, ``session_key``, ``model`` (the ref that answered, or the
        last one asked; ``None`` if the run never reached a model), ``outcome`` (``ok`` or the
        error kind: ``aborted``, ``agent_timeout``, ``shutdown``, ``unavailable``, ...),
        ``stop_reason``, ``upstream_status`` (the provider's HTTP status when it answered
        with an error), ``duration_ms`` (queued time included), ``tokens`` (``{input, output,
        total}``, ``None`` when the model reported none) and ``error`` (the error's message,
        already free of credentials).  Never the prompt or the answer.
        """
        error = result.error
        tokens = run.tokens.to_json() if run.tokens is not None else None
        fields: dict[str, Any] = {
            "run_id": run.run_id,
            "agent_id": run.agent.id,
            "session_key": run.session_key,
            "model": run.model,
            "outcome": "ok" if error is None else error.kind,
            "stop_reason": result.stop_reason,
            "upstream_status": error.status if error is not None else None,
            "duration_ms": round((self.clock.seconds() - run._created) * 1000),
            "tokens": tokens,
            "error": error.message if error is not None else None,
        }
        about = "agent {agent_id}, session {session_key}, " + (
            "model {model}, " if run.model is not None else "no model, "
        )
        took = "{duration_ms} ms, " + (
            "tokens {tokens[input]} in / {tokens[output]} out"
            if tokens is not None
            else "tokens unknown"
        )
        if error is None:
            template = "run {run_id} ok ({stop_reason}): " + about + took
        else:
            status = " (upstream status {upstream_status})" if error.status is not None else ""
            template = "run {run_id} failed: {outcome}" + status + ": {error}; " + about + took
        # Rendered here, once, and handed on as a format without fields (braces doubled): the
        # logger's own formatter is several times slower, and a line per run adds up.
        text = template.format(**fields).replace("{", "{{").replace("}", "}}")
        (self.log.info if error is None else self.log.warn)(text, **fields)

    def shutdown(self, grace_seconds: float) -> Deferred[None]:
        """Let runs in flight finish for ``grace_seconds``, then cancel the rest."""
        self.closing = True
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
            # Newest first: a turn queued in a lane is cancelled before the turn ahead of it
            # ends and lets it begin.
            for r in reversed(runs):
                r.cancel("shutdown")

        timer = self.clock.callLater(grace_seconds, cut)
        for r in runs:
            r.wait().addCallback(ended)
        return done
