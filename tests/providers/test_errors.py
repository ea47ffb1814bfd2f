"""How upstream failures become ProviderErrors: messages, kinds, and a reset on loopback."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived

from openclaw_twisted.config import ProviderConfig
from openclaw_twisted.providers._http import connect_error, error_message, redact, status_error
from openclaw_twisted.providers.interface import ProviderError
from openclaw_twisted.providers.registry import build_provider
from tests.providers.test_http_providers import REQUEST
from tests.support import http_client


class MessageTests(SynchronousTestCase):
    def test_error_bodies(self) -> None:
        cases = {
            b'{"error": {"message": "bad model", "type": "invalid_request_error"}}': "bad model",
            b'{"type": "error", "error": {"type": "x", "message": "anthropic says"}}': (
                "anthropic says"
            ),
            b'{"error": "ollama says"}': "ollama says",
            b'{"detail": "fastapi says"}': "fastapi says",
            b"<p>\n502   Bad\nGateway</p>": "<p> 502 Bad Gateway</p>",
            b"x" * 1000: "x" * 197 + "...",
            b"": "",
        }
        for body, expected in cases.items():
            self.assertEqual(error_message(body), expected, body)

    def test_status_kinds(self) -> None:
        kinds = {400: "bad_request", 401: "auth", 403: "auth", 404: "bad_request"}
        kinds |= {413: "bad_request", 429: "rate_limited", 500: "upstream_error"}
        kinds |= {502: "upstream_error", 529: "upstream_error"}
        for code, kind in kinds.items():
            e = status_error("p", code, "", "m", "5")
            self.assertEqual((e.kind, e.status), (kind, code))
        self.assertEqual(status_error("p", 429, "Too Many Requests", "", "5").retry_after, "5")
        self.assertIsNone(status_error("p", 500, "", "", "5").retry_after)

    def test_connect_errors(self) -> None:
        for reason, why in [
            (ConnectionRefusedError("127.0.0.1:9"), "the connection was refused"),
            (DNSLookupError("nowhere.invalid"), "its host name could not be resolved"),
            (TimeoutError("nowhere.invalid"), "the connection timed out"),
            (ResponseNeverReceived([Failure(RuntimeError())]), "closed the connection before"),
            (RuntimeError("<object at 0x1> nowhere.invalid"), "could not be reached"),
        ]:
            e = connect_error("model provider 'p'", reason)
            self.assertEqual(e.kind, "unavailable")
            self.assertIn(why, e.message)
            # Sentences for people: no reprs, no host names (those are for the log).
            for leak in ("<", "Failure", "nowhere", "127.0.0.1", "0x"):
                self.assertNotIn(leak, e.message)

    def test_redact(self) -> None:
        self.assertEqual(
            redact("key sk-1234 and sk-1234", ["sk-1234", ""]), "key [redacted] and [redacted]"
        )


class ResetTests(TestCase):
    async def test_connection_reset_before_an_answer(self) -> None:
        """A server that takes the connection and drops it: unavailable (a fallback may help)."""

        class Drop(Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.abortConnection()  # type: ignore[attr-defined]

        port = reactor.listenTCP(0, Factory.forProtocol(Drop), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        config = ProviderConfig(
            "p", "openai-completions", f"http://127.0.0.1:{port.getHost().port}/v1", "sk-x"
        )
        provider = build_provider(config, http_client(self), reactor)
        try:
            await provider.open(REQUEST)
        except ProviderError as e:
            self.assertEqual(e.kind, "unavailable")
            self.assertTrue(e.try_next_model)
        else:
            self.fail("no error")
