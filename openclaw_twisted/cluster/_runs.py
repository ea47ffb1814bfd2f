"""Runs findable from every gateway: a registry in Redis, events and aborts over the bus."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..agents.events import FINAL_EVENTS, RunEvent, RunFailed, TextDelta, to_json
from ..agents.runner import AgentRunner, Run
from ._bus import IEventBus, encode
from ._client import Arg, IRedis

log = Logger()

#: The bus channel every gateway of one Redis publishes its runs' events and aborts on.
CHANNEL = "openclaw:runs"
#: How long a run's events wait to be published: those of one interval go in one Redis
#: command, the ``assistant`` deltas among them merged into one event (what a WebSocket
#: observer gets on the run's own gateway too); the final event goes at once.
PUBLISH_INTERVAL = 0.150
#: How long a run's registry entry lasts while it runs (renewed at its start, dropped to
#: ``ENDED_TTL`` at its end) and after, for ``agent.wait``; seconds.
RUNNING_TTL, ENDED_TTL = 3600, 600
#: Every gateway says it is alive this often (a key with three times this as its TTL): a run
#: whose gateway stopped saying so before the run ended is reported lost (seconds).
HEARTBEAT_SECONDS = 5
#: What ``agent.wait`` (and a repeated ``idempotencyKey``) is told of such a run.
LOST = {
    "kind": "unavailable",
    "message": "The gateway that ran this run stopped before the run ended.",
}
# A run's entry, and whether the gateway that runs it is alive (1) when it has not ended.
_FIND = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local entry = cjson.decode(raw)
if entry.endedAt == nil and entry.gateway then
  return {raw, redis.call('EXISTS', ARGV[1] .. entry.gateway)}
end
return {raw, 1}
"""
# A run's registry entry and its events held back go to Redis in one command (the entry is
# ARGV[1] with a TTL of ARGV[2] seconds, each later ARGV one message on KEYS[2]); the
# gateway's heartbeat (KEYS[3]) goes with it, so no entry is ever seen without one.
_ENTER = f"""
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[3], '1', 'EX', {3 * HEARTBEAT_SECONDS})
for i = 3, #ARGV do
  redis.call('PUBLISH', KEYS[2], ARGV[i])
end
return 0
"""
_PUBLISH = """
for i = 3, #ARGV do
  redis.call('PUBLISH', KEYS[2], ARGV[i])
end
return 0
"""
#: How long ``chat.abort`` waits for the other gateways to say which runs they stopped.
ABORT_REPLY_SECONDS = 1.0

Relay = Callable[[Mapping[str, Any]], None]


@attrs.frozen
class RemoteRun:
    """A run of another gateway, as its registry entry tells it."""

    run_id: str
    session_key: str
    accepted_at: int
    ended_at: int | None = None
    #: ``{"stopReason": ...}`` or ``{"error": {kind, message}}`` once ended.
    outcome: Mapping[str, Any] | None = None
    #: Its gateway stopped (its heartbeat ran out) before the run ended: it never will.
    lost: bool = False


@attrs.define
class _Ask:
    """A ``chat.abort`` sent to the other gateways, collecting their answers."""

    id: str
    done: Deferred[list[str]] = attrs.Factory(Deferred)
    stopped: list[str] = attrs.Factory(list)
    replies: int = 0
    #: How many gateways got the request (known once Redis says).
    expected: int | None = None
    timer: IDelayedCall | None = None


class _Outbox:
    """One run of this gateway: its registry entry, and its events not yet published."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.events: list[Mapping[str, Any]] = []
        #: Deltas since the last event that was not one, and the latest of them.
        self.parts: list[str] = []
        self.latest: TextDelta | None = None
        self.timer: IDelayedCall | None = None

    def close_delta(self, run_id: str) -> None:
        """The deltas held back become one ``assistant`` event, before whatever comes next."""
        latest = self.latest
        if latest is None or not self.parts:
            return
        delta, self.parts = "".join(self.parts), []
        payload = {
            "runId": run_id,
            "seq": latest.seq,
            "ts": latest.ts,
            "sessionKey": latest.session_key,
            "stream": "assistant",
            "data": {"delta": delta},
        }
        self.events.append(payload)

    def take(self, run_id: str) -> list[Mapping[str, Any]]:
        """Every event held back, in order, and none held any more."""
        self.close_delta(run_id)
        events, self.events = self.events, []
        return events

    def cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class ClusterRuns:
    """
    This gateway's part in the shared run registry.  Each run it starts is entered in Redis
    (``run id → gateway, session key``, with a TTL) and its events are published once on
    L{CHANNEL} (batched every L{PUBLISH_INTERVAL}, ``assistant`` deltas merged); events from
    the other gateways go to ``relays`` (the WebSocket broadcast) and to ``agent.wait``
    callers here.  A gateway ignores its own messages, so nothing loops.  ``chat.abort`` on
    any gateway reaches the run wherever it runs: an abort request on the bus, answered by
    each gateway with the runs it stopped.
    """

    def __init__(
        self,
        redis: IRedis,
        bus: IEventBus,
        clock: IReactorTime,
        gateway_id: str | None = None,
        prefix: str = "openclaw:run:",
        heartbeat_prefix: str = "openclaw:gateway:",
    ) -> None:
        self.redis = redis
        self.bus = bus
        self.clock = clock
        self.gateway_id = gateway_id or secrets.token_hex(8)
        self.prefix = prefix
        self.heartbeat_prefix = heartbeat_prefix
        self._heartbeat: LoopingCall | None = None
        self.runner: AgentRunner | None = None
        self.relays: list[Relay] = []
        self._outboxes: dict[str, _Outbox] = {}
        self._waiters: dict[str, list[Deferred[Mapping[str, Any]]]] = {}
        self._asks: dict[str, _Ask] = {}

    # Wiring.

    def attach(self, runner: AgentRunner) -> Deferred[None]:
        """Enter ``runner``'s runs, publish their events, and listen to the other gateways."""
        self.runner = runner
        runner.on_start.append(self._started)
        runner.listeners.append(self.observe)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(HEARTBEAT_SECONDS, now=True)
        return self.bus.subscribe(CHANNEL, self._received)

    @property
    def _heartbeat_key(self) -> str:
        return self.heartbeat_prefix + self.gateway_id

    def _beat(self) -> None:
        d = self.redis.execute("SET", self._heartbeat_key, "1", "EX", 3 * HEARTBEAT_SECONDS)
        # Down now: the next beat tries again (others see this gateway lost after 15 s).
        d.addErrback(lambda _: None)

    def detach(self) -> Deferred[None]:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = None
        if self.runner is not None:
            if self._started in self.runner.on_start:
                self.runner.on_start.remove(self._started)
            if self.observe in self.runner.listeners:
                self.runner.listeners.remove(self.observe)
        # What runs still going held back goes now (best effort): no timer outlives this.
        outboxes, self._outboxes = self._outboxes, {}
        for run_id, outbox in outboxes.items():
            outbox.cancel()
            events = outbox.take(run_id)
            if events:
                self._script(_PUBLISH, run_id, None, 0, events)
        return self.bus.unsubscribe(CHANNEL, self._received)

    # This gateway's runs.

    def _key(self, run_id: str) -> str:
        return self.prefix + run_id

    def _now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def _started(self, run: Run) -> None:
        entry = {"gateway": self.gateway_id, "sessionKey": run.session_key}
        entry["acceptedAt"] = self._now_ms()  # type: ignore[assignment]
        self._outboxes[run.run_id] = _Outbox(entry)
        # Written at once, alone, so ``agent.wait`` on any gateway finds the run as soon as it
        # is accepted; its events follow, batched.
        self._script(_ENTER, run.run_id, entry, RUNNING_TTL, [])

    def observe(self, run: Run, event: RunEvent) -> None:
        """
        A runner listener: this gateway's run events, on the bus once.  They are held for up
        to L{PUBLISH_INTERVAL} and sent together, ``assistant`` deltas in between merged into
        one event, in one script with nothing else (a short turn's events all go with its end,
        beside the registry entry's last write: two Redis commands a run in all).
        """
        outbox = self._outboxes.get(run.run_id)
        if outbox is None:
            return  # not entered here (a listener attached mid-run)
        if isinstance(event, TextDelta):
            outbox.parts.append(event.delta)
            outbox.latest = event
        else:
            outbox.close_delta(run.run_id)
            outbox.events.append(to_json(event))
        if isinstance(event, FINAL_EVENTS):
            del self._outboxes[run.run_id]
            outbox.cancel()
            outcome: dict[str, Any] = (
                {"error": event.error.to_json()}
                if isinstance(event, RunFailed)
                else {"stopReason": event.stop_reason}
            )
            ended = {**outbox.entry, "endedAt": self._now_ms(), "outcome": outcome}
            self._script(_ENTER, run.run_id, ended, ENDED_TTL, outbox.take(run.run_id))
        elif outbox.timer is None:
            outbox.timer = self.clock.callLater(PUBLISH_INTERVAL, self._flush, run.run_id)

    def _flush(self, run_id: str) -> None:
        outbox = self._outboxes.get(run_id)
        if outbox is None:
            return
        outbox.timer = None
        events = outbox.take(run_id)
        if events:
            self._script(_PUBLISH, run_id, None, 0, events)

    def _script(
        self,
        script: str,
        run_id: str,
        entry: Mapping[str, Any] | None,
        ttl: int,
        events: list[Mapping[str, Any]],
    ) -> None:
        keys = [self._key(run_id), CHANNEL, self._heartbeat_key]
        head: list[Arg] = [json.dumps(entry), ttl] if entry is not None else ["", 0]
        messages = (encode({"t": "event", "p": e, "gw": self.gateway_id}) for e in events)
        d = self.redis.eval(script, keys, [*head, *messages])
        # Best effort, as the local broadcast: the transcript keeps what must not be lost.
        d.addErrback(
            lambda f: log.warn(
                "run {run_id}: not entered or events not published: {why}",
                run_id=run_id,
                why=f.value,
            )
        )

    def _publish(self, message: dict[str, Any]) -> Deferred[int]:
        message["gw"] = self.gateway_id
        d = self.bus.publish(CHANNEL, message)

        def lost(f: Failure) -> int:
            log.warn("a message to the other gateways was not published: {why}", why=f.value)
            return 0

        return d.addErrback(lost)

    # What other gateways say.

    def _received(self, message: Mapping[str, Any]) -> None:
        if message.get("gw") == self.gateway_id:
            return
        kind = message.get("t")
        try:
            if kind == "event":
                self._remote_event(message["p"])
            elif kind == "abort":
                self._abort_asked(message)
            elif kind == "aborted" and message.get("to") == self.gateway_id:
                self._abort_answered(message)
        except Exception:
            log.failure("a message from gateway {gw} failed", gw=message.get("gw"))

    def _remote_event(self, payload: Mapping[str, Any]) -> None:
        for relay in list(self.relays):
            relay(payload)
        data = payload.get("data") or {}
        if payload.get("stream") == "lifecycle" and data.get("phase") in ("end", "error"):
            for d in self._waiters.pop(payload.get("runId", ""), []):
                d.callback(payload)

    # agent.wait

    def find(self, run_id: str) -> Deferred[RemoteRun | None]:
        """
        Another gateway's run (``None``: no gateway knows it, or it ended long ago); one whose
        gateway stopped before it ended is ``lost``, ended now with the L{LOST} error.
        """
        d = self.redis.eval(_FIND, [self._key(run_id)], [self.heartbeat_prefix])

        def parsed(reply: list[Any] | None) -> RemoteRun | None:
            if reply is None:
                return None
            raw, alive = reply
            entry = json.loads(raw)
            run = RemoteRun(
                run_id,
                entry.get("sessionKey", ""),
                entry.get("acceptedAt", 0),
                entry.get("endedAt"),
                entry.get("outcome"),
            )
            if int(alive):
                return run
            return attrs.evolve(run, ended_at=self._now_ms(), outcome={"error": LOST}, lost=True)

        return d.addCallback(parsed)

    def wait(self, run_id: str, seconds: float) -> Deferred[RemoteRun | None]:
        """
        Another gateway's run once it has ended, or as it is after ``seconds``; ``None`` for
        a run no gateway knows.  Listens before it looks, so an end between the two is seen.
        """
        ended: Deferred[Mapping[str, Any]] = Deferred()
        self._waiters.setdefault(run_id, []).append(ended)
        result: Deferred[RemoteRun | None] = Deferred()

        def stop_listening() -> None:
            waiters = self._waiters.get(run_id, [])
            if ended in waiters:
                waiters.remove(ended)
            if not waiters:
                self._waiters.pop(run_id, None)

        def found(run: RemoteRun | None) -> None:
            if run is None or run.ended_at is not None:
                stop_listening()
                result.callback(run)
                return

            def finished(payload: Mapping[str, Any]) -> None:
                if timer.active():
                    timer.cancel()
                # The entry is rewritten as the run ends; the event is what is sure by now.
                data = payload.get("data") or {}
                outcome = (
                    {"error": data.get("error")}
                    if data.get("phase") == "error"
                    else {"stopReason": data.get("stopReason")}
                )
                result.callback(attrs.evolve(run, ended_at=payload.get("ts"), outcome=outcome))

            def expired() -> None:
                stop_listening()
                result.callback(run)

            timer = self.clock.callLater(seconds, expired)
            ended.addCallback(finished)

        def failed(f: Failure) -> None:
            stop_listening()
            result.errback(f)

        self.find(run_id).addCallbacks(found, failed)
        return result

    # chat.abort

    def abort_elsewhere(self, session_key: str | None, run_id: str | None) -> Deferred[list[str]]:
        """Ask every other gateway to stop the matching runs; the ids of those stopped."""
        ask = _Ask(secrets.token_hex(8))
        self._asks[ask.id] = ask

        def published(receivers: int) -> None:
            # Every gateway's listener counts, this one's too (it ignores its own message).
            ask.expected = max(0, receivers - 1)
            ask.timer = self.clock.callLater(ABORT_REPLY_SECONDS, self._answered, ask, True)
            self._answered(ask)

        def failed(f: Failure) -> None:
            self._asks.pop(ask.id, None)
            ask.done.errback(f)

        message = {"t": "abort", "q": ask.id, "sessionKey": session_key, "runId": run_id}
        message["gw"] = self.gateway_id
        self.bus.publish(CHANNEL, message).addCallbacks(published, failed)
        return ask.done

    def _answered(self, ask: _Ask, expired: bool = False) -> None:
        if ask.done.called or not (
            expired or (ask.expected is not None and ask.replies >= ask.expected)
        ):
            return
        self._asks.pop(ask.id, None)
        if ask.timer is not None and ask.timer.active():
            ask.timer.cancel()
        ask.done.callback(ask.stopped)

    def _abort_asked(self, message: Mapping[str, Any]) -> None:
        key, run_id = message.get("sessionKey"), message.get("runId")
        stopped: list[str] = []
        if self.runner is not None:
            for run in list(self.runner.active.values()):
                if (run_id is None or run.run_id == run_id) and (
                    key is None or run.session_key == key
                ):
                    run.cancel("aborted")
                    stopped.append(run.run_id)
        reply = {"t": "aborted", "q": message.get("q"), "to": message.get("gw"), "runIds": stopped}
        self._publish(reply)

    def _abort_answered(self, message: Mapping[str, Any]) -> None:
        ask = self._asks.get(message.get("q", ""))
        if ask is None:
            return
        ask.stopped.extend(message.get("runIds") or [])
        ask.replies += 1
        self._answered(ask)
