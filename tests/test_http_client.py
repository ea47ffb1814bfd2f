"""The provider HTTP client: IP literals connect without a resolver, connections log nothing."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from openclaw_twisted.gateway import ProviderEndpoints, QuietEndpoint, http_client

from .support import track


def connect(url: bytes) -> tuple[MemoryReactor, Factory[Protocol]]:
    """Connect a fresh factory to ``url`` on a memory reactor."""
    memory = MemoryReactor()
    endpoint = ProviderEndpoints(memory).endpointForURI(URI.fromBytes(url))
    factory = Factory.forProtocol(Protocol)
    endpoint.connect(factory)
    return memory, factory


class ProviderEndpointsTests(SynchronousTestCase):
    def test_ipv4_literal_connects_at_once(self) -> None:
        memory, factory = connect(b"http://127.0.0.1:8123/v1/chat/completions")
        # Straight to connectTCP: no name resolution (which would not touch tcpClients yet).
        [(host, port, _, timeout, _)] = memory.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 8123, 30))
        self.assertFalse(factory.noisy)

    def test_ipv6_literal_connects_at_once(self) -> None:
        memory, _ = connect(b"http://[::1]:8123/v1")
        [(host, port, *_)] = memory.tcpClients
        self.assertEqual((host, port), ("::1", 8123))

    def test_https_literal_is_wrapped_in_tls(self) -> None:
        memory, _ = connect(b"https://127.0.0.1:8443/v1")
        [(host, port, wrapping, *_)] = memory.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 8443))
        # The endpoint's own wrapper around the TLS factory around ours.
        self.assertIsInstance(wrapping._wrappedFactory, TLSMemoryBIOFactory)

    def test_names_are_resolved(self) -> None:
        for url in (b"http://localhost:8123/", b"https://api.example.invalid/v1"):
            endpoint = ProviderEndpoints(MemoryReactor()).endpointForURI(URI.fromBytes(url))
            self.assertIsInstance(endpoint, QuietEndpoint)
            assert isinstance(endpoint, QuietEndpoint)
            inner: Any = endpoint.endpoint
            # https wraps the name endpoint; http is the name endpoint itself.
            inner = getattr(inner, "_wrappedEndpoint", inner)
            self.assertIsInstance(inner, HostnameEndpoint)

    def test_other_schemes_are_refused(self) -> None:
        endpoints = ProviderEndpoints(MemoryReactor())
        with self.assertRaises(SchemeNotSupported):
            endpoints.endpointForURI(URI.fromBytes(b"ftp://127.0.0.1/x"))


class HTTPClientTests(TestCase):
    async def test_requests_over_loopback_log_no_factory_lines(self) -> None:
        root = Resource()
        root.putChild(b"hi", Data(b"hello", "text/plain"))
        site = Site(root)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        track(self, site, port)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            logged.append(str(event.get("log_format", "")))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        client = http_client(reactor, pool=pool)
        url = f"http://127.0.0.1:{port.getHost().port}/hi"
        for _ in range(2):
            response = await client.get(url)
            self.assertEqual(await response.content(), b"hello")
        self.assertEqual([f for f in logged if "factory" in f.lower()], [])
