"""The gateway's Site: request bodies are left to the routes (no form parsing)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from openclaw_twisted.web.request import GatewaySite


class Capture(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        self.seen.append((request.args, request.content.read()))
        return b"ok"


class SiteTests(SynchronousTestCase):
    def test_form_bodies_are_not_parsed(self) -> None:
        resource = Capture()
        channel = GatewaySite(resource, reactor=Clock()).buildProtocol(None)
        assert channel is not None
        channel.makeConnection(StringTransport())
        body = b"a=1&b=2"
        channel.dataReceived(
            b"POST /x?q=1 HTTP/1.1\r\nHost: h\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        # The query string still counts; the body reaches the resource untouched.
        self.assertEqual(resource.seen, [({b"q": [b"1"]}, body)])
