"""gateway.limits: the config keys, the upstream gate on a clock, the backlog helper."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted import parse_config
from openclaw_twisted.config import ConfigError, LimitsConfig
from openclaw_twisted.limits import UpstreamGate, with_backlog
from openclaw_twisted.providers.interface import ProviderError


class ConfigTests(SynchronousTestCase):
    def test_defaults_and_keys(self) -> None:
        self.assertEqual(parse_config({}, {}).gateway.limits, LimitsConfig())
        limits = {
            "maxRunsPerConnection": 2,
            "maxRunsPerClient": 5,
            "maxUpstreamConnections": 7,
            "maxUpstreamWaiting": 0,
            "upstreamWaitMs": 1500,
            "listenBacklog": 4096,
        }
        config = parse_config({"gateway": {"limits": limits}}, {})
        self.assertEqual(config.gateway.limits, LimitsConfig(2, 5, 7, 0, 1500, 4096))
        self.assertEqual(config.ignored, ())

    def test_bad_values_name_the_key(self) -> None:
        with self.assertRaises(ConfigError) as e:
            parse_config({"gateway": {"limits": {"maxRunsPerClient": 0}}}, {})
        self.assertIn("gateway.limits.maxRunsPerClient", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parse_config({"gateway": {"limits": {"listenBacklog": "lots"}}}, {})
        self.assertIn("gateway.limits.listenBacklog", str(e.exception))


class UpstreamGateTests(SynchronousTestCase):
    def test_waiters_get_freed_slots_in_order(self) -> None:
        gate = UpstreamGate(Clock(), limit=1, waiting=2, wait_seconds=30)
        first = gate.acquire()
        self.assertIsNone(self.successResultOf(first))
        second, third = gate.acquire(), gate.acquire()
        self.assertNoResult(second)
        self.assertEqual((gate.active, gate.queued), (1, 2))
        gate.release()
        self.successResultOf(second)
        self.assertNoResult(third)
        gate.release()
        self.successResultOf(third)
        gate.release()
        self.assertEqual((gate.active, gate.queued), (0, 0))

    def test_a_full_waiting_room_refuses_at_once(self) -> None:
        gate = UpstreamGate(Clock(), limit=1, waiting=1, wait_seconds=30)
        gate.acquire()
        gate.acquire()
        error = self.failureResultOf(gate.acquire(), ProviderError).value
        self.assertEqual(error.kind, "overloaded")
        self.assertEqual(error.retry_after, "1")
        self.assertIn("gateway.limits.maxUpstreamConnections", error.message)

    def test_a_run_that_waits_too_long_fails_clearly(self) -> None:
        clock = Clock()
        gate = UpstreamGate(clock, limit=1, waiting=5, wait_seconds=30)
        gate.acquire()
        waiting = gate.acquire()
        clock.advance(29.9)
        self.assertNoResult(waiting)
        clock.advance(0.2)
        error = self.failureResultOf(waiting, ProviderError).value
        self.assertEqual(error.kind, "overloaded")
        self.assertIn("within 30s", error.message)
        self.assertIn("upstreamWaitMs", error.message)
        self.assertEqual(gate.queued, 0)
        gate.release()
        self.assertEqual(gate.active, 0)

    def test_a_cancelled_waiter_leaves_the_queue(self) -> None:
        clock = Clock()
        gate = UpstreamGate(clock, limit=1, waiting=5, wait_seconds=30)
        gate.acquire()
        waiting = gate.acquire()
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual((gate.queued, clock.getDelayedCalls()), (0, []))
        gate.release()
        self.assertEqual(gate.active, 0)


class BacklogTests(SynchronousTestCase):
    def test_with_backlog(self) -> None:
        self.assertEqual(with_backlog("tcp:80", 9), "tcp:80:backlog=9")
        self.assertEqual(with_backlog("tcp:80:backlog=3", 9), "tcp:80:backlog=3")
        self.assertEqual(with_backlog("unix:/x/sock", 9), "unix:/x/sock:backlog=9")
        self.assertEqual(
            with_backlog("systemd:domain=INET:index=0", 9), "systemd:domain=INET:index=0"
        )
