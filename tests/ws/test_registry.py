"""The WebSocket run registry and method table, without a socket."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.events import RunRequest
from openclaw_twisted.ws import handlers
from openclaw_twisted.ws.runs import BROADCAST_INTERVAL, RunRegistry

from .helpers import make_gateway


class Peer:
    """Only what the broadcast may use of a connection (its public face)."""

    def __init__(self, authenticated: bool = True, backed_up: bool = False) -> None:
        self.authenticated = authenticated
        self.backed_up = backed_up
        self.events: list[tuple[str, bytes]] = []

    def takes_more(self) -> bool:
        return not self.backed_up

    def send_encoded_event(self, event: str, payload: bytes) -> None:
        self.events.append((event, payload))


class RegistryTests(SynchronousTestCase):
    def test_the_owner_is_not_an_observer_until_it_lets_go(self) -> None:
        clock = Clock()
        registry: RunRegistry[Peer] = RunRegistry(clock, lambda: int(clock.seconds() * 1000))
        owner, other, stranger = Peer(), Peer(), Peer(authenticated=False)
        registry.connections.update({owner, other, stranger})
        registry.own("r1", owner)
        self.assertEqual(registry.observers("r1"), [other])
        self.assertEqual(set(registry.observers("r2")), {owner, other})
        registry.disown("r1")
        self.assertEqual(set(registry.observers("r1")), {owner, other})

    def test_broadcast_merges_deltas_for_observers_only(self) -> None:
        clock = Clock()
        gateway = make_gateway(self, clock=clock)
        registry: RunRegistry[Peer] = RunRegistry(clock, gateway.edge.now_ms)
        owner, other = Peer(), Peer()
        registry.connections.update({owner, other})
        registry.own("r1", owner)
        gateway.runner.listeners.append(registry.broadcast)
        run = gateway.runner.start(RunRequest("main", "agent:main:main", "hello", run_id="r1"))
        clock.advance(BROADCAST_INTERVAL)
        self.assertEqual(self.successResultOf(run.wait()).text, "hello")
        self.assertEqual(owner.events, [])
        kinds = [payload for _, payload in other.events]
        self.assertIn(b'"phase":"start"', kinds[0])
        self.assertIn(b'"phase":"end"', kinds[-1])
        self.assertTrue(any(b'"delta":"hello"' in k for k in kinds))


class TableTests(SynchronousTestCase):
    def test_one_table_of_module_level_handlers(self) -> None:
        from openclaw_twisted.ws.server import METHODS

        self.assertEqual(METHODS, tuple(handlers.HANDLERS))
        for name, handler in handlers.HANDLERS.items():
            # Built once, at import: not a closure made per request or per connection.
            self.assertEqual(handler.__qualname__, handler.__name__, name)
            self.assertEqual(handler.__module__, handlers.__name__, name)
