"""The body gate on real sockets for /v1/responses and the session routes: refused from the head."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted.testing import Script, ScriptedProvider

from ..support import listen
from ..web.memory import TOKEN, make_gateway
from . import test_body_gate as body_gate
from .test_body_gate import AUTH, JSON, LIMIT, head, spool_files


class ResponsesGateTests(TestCase):
    timeout = 120

    # The flood client and its assertions are the chat route's.
    flood = body_gate.BodyGateLoopbackTests.flood
    assertRefusedEarly = body_gate.BodyGateLoopbackTests.assertRefusedEarly

    async def test_responses_and_session_routes_refuse_bodies_before_reading_them(self) -> None:
        self.spools = spool_files()
        self.provider = ScriptedProvider(Script(), clock=reactor)
        data = {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "http": {"endpoints": {"responses": {"enabled": True, "maxBodyBytes": LIMIT}}},
            }
        }
        gateway = make_gateway(self.mktemp(), self.provider, data, reactor=reactor)
        port = int((await listen(self, gateway)).rsplit(":", 1)[1])
        key = "/sessions/agent%3Amain%3Amain"
        cases = [
            ("POST", "/v1/responses", (JSON,), 401, False),
            ("POST", "/v1//responses", (JSON, AUTH), 413, True),
            ("POST", "/v1/responses", (AUTH,), 415, False),
            ("GET", "/v1/responses", (AUTH,), 405, False),
            ("GET", key + "/history", (AUTH,), 413, False),
            ("GET", key + "/history", (), 401, False),
            ("POST", key + "/kill", (JSON,), 401, False),
            ("POST", key + "/kill", (JSON, AUTH), 413, True),
        ]
        for method, path, headers, status, reads in cases:
            for chunked in (False, True):
                await self.assertRefusedEarly(
                    port,
                    head(method, path, *headers, chunked=chunked),
                    chunked,
                    status,
                    reads_body=reads and chunked,
                )
        self.assertEqual(self.provider.requests, [])
