"""Run events across gateways: JSON on Redis pub/sub channels, in publish order."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import txredisapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP
from zope.interface import Interface, implementer

from ._client import RECONNECT_INITIAL, RECONNECT_MAX, IRedis, _Factory, parse_url

Receiver = Callable[[Mapping[str, Any]], None]


class IEventBus(Interface):
    """Publish events on named channels; every subscriber gets them in publish order."""

    def publish(channel: str, event: Mapping[str, Any]) -> Deferred[int]:
        """Send ``event``; the number of subscribed gateways that received it."""

    def subscribe(channel: str, receiver: Receiver) -> Deferred[None]:
        """Call ``receiver`` with each event on ``channel`` from now on."""

    def unsubscribe(channel: str, receiver: Receiver) -> Deferred[None]:
        """Stop calling ``receiver``."""


def encode(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


class _Subscriber(txredisapi.SubscriberProtocol):
    """Hands messages to the bus; subscribes again to every channel after a reconnect."""

    bus: RedisEventBus

    def connectionMade(self) -> Deferred[None]:
        d: Deferred[None] = super().connectionMade()

        def resubscribe(_: object) -> None:
            if self.bus._receivers:
                # Lost with the connection if it drops now: the next one subscribes again.
                self.subscribe(list(self.bus._receivers)).addErrback(lambda _: None)

        return d.addCallback(resubscribe)

    def messageReceived(self, pattern: object, channel: str, message: str) -> None:
        self.bus._deliver(channel, message)


@implementer(IEventBus)
@attrs.define
class RedisEventBus:
    """
    Publishes with the shared client; listens on a connection of its own (a subscribed Redis
    connection takes no other commands).  Pub/sub delivers at most once: events sent while a
    gateway is reconnecting are not replayed (the transcript keeps what must not be lost).
    """

    redis: IRedis
    _factory: Any
    _receivers: dict[str, list[Receiver]] = attrs.Factory(dict)

    @classmethod
    def connect(cls, reactor: IReactorTCP, url: str, redis: IRedis) -> RedisEventBus:
        host, port, _, password = parse_url(url)
        factory = _Factory(None, None, 1, isLazy=True, password=password)
        factory.initialDelay, factory.maxDelay = RECONNECT_INITIAL, RECONNECT_MAX
        bus = cls(redis, factory)
        factory.protocol = type("Subscriber", (_Subscriber,), {"bus": bus})
        factory.startConnecting(HostnameEndpoint(reactor, host, port))
        return bus

    def when_connected(self) -> Deferred[None]:
        """Fires once the listening connection is up (at once when it is)."""
        if self._live() is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._factory.waiting.append(d)
        return d

    def publish(self, channel: str, event: Mapping[str, Any]) -> Deferred[int]:
        d: Deferred[int] = self.redis.execute("PUBLISH", channel, encode(event))
        return d.addCallback(int)

    def subscribe(self, channel: str, receiver: Receiver) -> Deferred[None]:
        receivers = self._receivers.setdefault(channel, [])
        receivers.append(receiver)
        live = self._live()
        if len(receivers) > 1 or live is None:
            return succeed(None)  # already subscribed, or subscribed on connecting
        d: Deferred[Any] = live.subscribe(channel)
        return d.addCallback(lambda _: None)

    def unsubscribe(self, channel: str, receiver: Receiver) -> Deferred[None]:
        receivers = self._receivers.get(channel, [])
        if receiver in receivers:
            receivers.remove(receiver)
        if receivers or channel not in self._receivers:
            return succeed(None)
        del self._receivers[channel]
        live = self._live()
        if live is None:
            return succeed(None)
        d: Deferred[Any] = live.unsubscribe(channel)
        return d.addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        d: Deferred[Any] = self._factory.disconnect()
        return d.addCallback(lambda _: None)

    def _live(self) -> Any:
        live = [protocol for protocol in self._factory.pool if protocol.connected]
        return live[0] if live else None

    def _deliver(self, channel: str, message: str) -> None:
        event = json.loads(message)
        for receiver in list(self._receivers.get(channel, ())):
            receiver(event)
