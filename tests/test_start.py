"""Starting the gateway: what the start log says, a port that is taken, the real bind address,
JSON logs, and the uptime clock."""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from openclaw_twisted import Gateway, parse_config, tap
from openclaw_twisted.gateway import UnsafeBind

from .support import child_env, http_client, spawn, twistd_args
from .ws.helpers import make_gateway, open_session, serve

GATEWAY = ["-m", "openclaw_twisted.cli", "gateway"]
OLLAMA = {"baseUrl": "http://127.0.0.1:9/v1", "models": [{"id": "llama3.2"}]}
MODEL = {"primary": "ollama/llama3.2", "fallbacks": ["echo"]}


def gateway(test: SynchronousTestCase, data: dict[str, Any]) -> Gateway:
    return Gateway(parse_config(data, {"OPENCLAW_STATE_DIR": test.mktemp()}), Clock())


class StartLogTests(SynchronousTestCase):
    def test_echo_only_when_nothing_is_configured(self) -> None:
        lines = gateway(self, {}).describe()
        self.assertIn("using the built-in offline echo model (no model provider configured)", lines)

    def test_configured_providers_are_named(self) -> None:
        data = {
            "models": {"providers": {"ollama": OLLAMA}},
            "agents": {
                "defaults": {"model": {"primary": "ollama/llama3.2", "fallbacks": ["echo"]}}
            },
        }
        lines = gateway(self, data).describe()
        self.assertIn("model providers: ollama", lines)
        self.assertFalse([line for line in lines if "echo" in line], lines)

    def test_echo_chosen_beside_a_configured_provider_is_said_as_such(self) -> None:
        # A provider without a model list leaves the agents on echo: say so, truthfully.
        data = {"models": {"providers": {"ollama": {"baseUrl": "http://127.0.0.1:9/v1"}}}}
        lines = gateway(self, data).describe()
        self.assertIn("model providers: ollama", lines)
        self.assertIn("agent main answers with the built-in offline echo model", lines)
        self.assertFalse([line for line in lines if "no model provider configured" in line])

    def test_warnings(self) -> None:
        data = {
            "gateway": {"http": {"endpoints": {"chatCompletion": {"enabled": True}}}},
            "agents": {
                "defaults": {"model": {"primary": "echo", "fallbacks": ["gone/m"]}},
                "list": [{"id": "main"}, {"id": "beta", "model": "nowhere/model"}],
            },
        }
        g = gateway(self, data)
        self.assertEqual(
            g.warnings(),
            [
                "config key gateway.http.endpoints.chatCompletion is ignored: did you mean "
                "gateway.http.endpoints.chatCompletions? (chat completions stay off, so "
                "/v1/chat/completions answers 404)",
                "agent main (fallback): model 'gone/m': no provider 'gone' is configured under "
                "models.providers; runs using it will fail",
                "agent beta: model 'nowhere/model': no provider 'nowhere' is configured under "
                "models.providers; runs using it will fail",
            ],
        )
        # A typo is a warning of its own, not one of the keys "not served here".
        self.assertFalse([line for line in g.describe() if line.startswith("ignoring")])
        self.assertEqual(gateway(self, {}).warnings(), [])


class StartTests(TestCase):
    timeout = 10

    async def test_warnings_are_logged_at_warning_level_once_listening(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        data = {
            "gateway": {"auth": {"token": "t"}, "http": {"endpoints": {"chatCompletion": {}}}},
            "agents": {"defaults": {"model": "nowhere/model"}},
        }
        g = Gateway(parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()}), reactor)
        service = g.service(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        service.startService()
        self.addCleanup(service.stopService)
        await service.listening
        warned = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warned), 2, warned)
        self.assertIn("did you mean gateway.http.endpoints.chatCompletions?", warned[0])
        self.assertIn("no provider 'nowhere'", warned[1])

    async def test_uptime_counts_from_the_gateway_start(self) -> None:
        """Not from the first WebSocket connection (the WS side is built on first use)."""
        clock = Clock()
        clock.advance(1000)
        g = make_gateway(self, clock=clock)
        clock.advance(5)
        session = await open_session(self, await serve(self, g))
        self.assertEqual(session.hello["snapshot"]["uptimeMs"], 5000)
        self.assertEqual((await session.ok("status"))["uptimeMs"], 5000)


@implementer(IListeningPort)
class FakePort:
    def __init__(self, address: Any) -> None:
        self.address = address
        self.stopped = False

    def getHost(self) -> Any:
        return self.address

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    def __init__(self, port: FakePort) -> None:
        self.port = port

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        return succeed(self.port)


class LoopbackTests(SynchronousTestCase):
    """Auth ``none`` is allowed on loopback: decided from the port's real address."""

    def none_config(self) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"gateway": {"auth": {"mode": "none"}}}, f)
        return path

    def test_an_endpoint_string_is_not_judged_by_its_text(self) -> None:
        path = self.none_config()
        _, endpoint = tap.resolve({"config": path, "port": r"tcp6:8080:interface=\:\:1"}, {})
        self.assertTrue(endpoint.startswith(r"tcp6:8080:interface=\:\:1"), endpoint)

    def test_refused_off_loopback_once_listening(self) -> None:
        config = parse_config({"gateway": {"auth": {"mode": "none"}}}, {})
        for address, refused in [
            (IPv6Address("TCP", "::1", 8080), False),
            (IPv4Address("TCP", "127.0.0.1", 8080), False),
            (IPv4Address("TCP", "10.1.2.3", 8080), True),
            (IPv6Address("TCP", "::", 8080), True),
        ]:
            port = FakePort(address)
            service = Gateway(config, Clock()).service(FakeEndpoint(port))
            if refused:
                with self.assertRaises(UnsafeBind) as e:
                    service.privilegedStartService()
                self.assertIn(f"listening on {address.host} (not loopback)", str(e.exception))
            else:
                service.privilegedStartService()
            self.assertEqual(port.stopped, refused, address)

    def test_ipv6_loopback_endpoint_really_listens(self) -> None:
        if not socket.has_ipv6:
            raise SkipTest("no IPv6")
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback") from None
        options = {"config": self.none_config(), "port": r"tcp6:0:interface=\:\:1"}
        process = tap.makeService(options, reactor)
        assert isinstance(process, tap.Process)
        process.privilegedStartService()
        port = process.gateway.port
        assert port is not None
        self.assertEqual(port.getHost().host, "::1")
        port.stopListening()


class ProcessTests(TestCase):
    timeout = 30

    def state(self) -> str:
        d = os.path.abspath(self.mktemp())
        os.makedirs(d)
        return d

    async def test_a_taken_port_is_one_line_and_exit_3(self) -> None:
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        number = taken.getHost().port
        env = child_env(self.state(), OPENCLAW_GATEWAY_TOKEN="t")
        procs = [
            spawn(self, [*GATEWAY, "--port", str(number)], env),
            spawn(self, twistd_args("--port", f"tcp:{number}:interface=127.0.0.1"), env),
        ]
        codes = await gatherResults([p.ended for p in procs])
        self.assertEqual(codes, [3, 3])
        for proc in procs:
            out = proc.out.decode() + proc.err.decode()
            self.assertNotIn("Traceback", out)
            lines = [line for line in out.splitlines() if f"port {number}" in line]
            self.assertEqual(len(lines), 1, out)
            self.assertIn(
                f"openclaw gateway: could not listen on 127.0.0.1 port {number}: "
                "address already in use",
                lines[0],
            )

    async def test_json_log_lines(self) -> None:
        env = child_env(self.state(), OPENCLAW_GATEWAY_TOKEN="t")
        port = ["--port", "tcp:0:interface=127.0.0.1", "--log-format", "json"]
        procs = [spawn(self, [*GATEWAY, *port], env), spawn(self, twistd_args(*port), env)]
        for proc in procs:
            line = await proc.line_with(b"openclaw gateway listening on")
            event = json.loads(line)
            self.assertEqual(event["host"], "127.0.0.1")
            self.assertIsInstance(event["port"], int)
            self.assertNotEqual(event["port"], 0)
            self.assertEqual(event["level"], "info")
            self.assertEqual(event["log_namespace"], "openclaw_twisted.gateway")
            self.assertEqual(
                event["text"], f"openclaw gateway listening on http://127.0.0.1:{event['port']}"
            )
            # Served once the reactor runs (its SIGTERM handler installed by then).
            response = await http_client(self).get(f"http://127.0.0.1:{event['port']}/healthz")
            self.assertEqual(response.code, 200)
            proc.terminate()
            await proc.ended
            # Every line of the log is one JSON object, the shutdown's too.
            for raw in proc.out.splitlines():
                self.assertIsInstance(json.loads(raw), dict)
            self.assertTrue(re.search(rb'"text": "openclaw gateway stopped"', proc.out), proc.out)
