"""The request gate in memory: one path spelling, the body table, JSON only, bare-LF heads."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from openclaw_twisted.testing import ScriptedProvider
from openclaw_twisted.web.gate import DEFAULT_MAX_BODY_BYTES, NO_BODY, RouteGate
from openclaw_twisted.web.request import BODY_TIMEOUT_SECONDS, GatewaySite, route_path

from ..hardening.support import LogCapture, assert_error_envelope
from .memory import MemoryClient, Response, make_gateway, post

HI = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}


class RoutePathTests(SynchronousTestCase):
    def test_spellings_of_one_path(self) -> None:
        for raw, expected in [
            (b"/v1/chat/completions", "/v1/chat/completions"),
            (b"//v1/chat/completions", "/v1/chat/completions"),
            (b"/v1//chat///completions", "/v1/chat/completions"),
            (b"/v1/chat%2Fcompletions", "/v1/chat/completions"),
            (b"/v1/chat%2fcompletions", "/v1/chat/completions"),
            (b"/v1/./chat/completions", "/v1/chat/completions"),
            (b"/v1/x/../chat/completions", "/v1/chat/completions"),
            (b"/v1/x/%2e%2E/chat/%63ompletions", "/v1/chat/completions"),
            (b"/../../v1/models", "/v1/models"),
            (b"/healthz/", "/healthz/"),
            (b"/healthz/.", "/healthz/"),
            (b"/", "/"),
            (b"", "/"),
            (b"/v1/models/openclaw%2Fbeta", "/v1/models/openclaw/beta"),
            (b"/v1/models/a%20b%25c", "/v1/models/a b%c"),
            (b"/caf%C3%A9", "/caf\u00e9"),
        ]:
            route = route_path(raw)
            assert route is not None, raw
            self.assertEqual(route.text, expected, raw)
            # The canonical spelling means the same, and is its own canonical spelling.
            again = route_path(route.path)
            self.assertEqual(again, route, raw)

    def test_a_path_that_is_not_utf8_has_no_route(self) -> None:
        self.assertIsNone(route_path(b"/%ff"))
        self.assertIsNone(route_path(b"/caf\xe9"))


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.provider = ScriptedProvider(clock=self.reactor)
        self.gateway = make_gateway(self.mktemp(), self.provider, reactor=self.reactor)
        self.logs = LogCapture().install(self)

    def tearDown(self) -> None:
        self.assertEqual(self.logs.failures(), [])


class NormalisedRoutingTests(Base):
    def test_requests_without_a_body_are_routed_on_the_normalised_path(self) -> None:
        for path in ("//healthz", "/./healthz", "/x/../healthz", "/%68ealthz"):
            r = post(self.gateway, method="GET", path=path, token=None)
            self.assertEqual((r.status, r.json()), (200, {"ok": True, "status": "live"}), path)
        r = post(self.gateway, method="GET", path="/v1/./models/openclaw%2Fbeta")
        self.assertEqual(r.json()["id"], "openclaw/beta")
        for path in ("/v1/chat/./completions", "//v1/chat%2Fcompletions"):
            r = post(self.gateway, HI, path=path)
            self.assertEqual(r.json()["object"], "chat.completion", path)

    def test_a_path_that_is_not_utf8_is_a_json_400(self) -> None:
        for body in (None, HI):
            r = post(self.gateway, body, method="GET" if body is None else "POST", path="/%ff")
            self.assertEqual(r.status, 400)
            self.assertEqual(assert_error_envelope(self, r)["code"], "invalid_path")


class ContentTypeTests(Base):
    def test_json_with_or_without_parameters_is_accepted(self) -> None:
        for ctype in (
            "application/json",
            "application/json; charset=utf-8",
            'Application/JSON;charset="UTF-8"',
            "application/json; foo=bar",
        ):
            r = post(self.gateway, HI, headers={"Content-Type": ctype})
            self.assertEqual(r.status, 200, ctype)

    def test_any_other_type_is_415_and_the_agent_never_runs(self) -> None:
        for ctype in (
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "application/json; charset=latin-1",
            "",
        ):
            r = post(self.gateway, HI, headers={"Content-Type": ctype})
            self.assertEqual(r.status, 415, ctype)
            error = assert_error_envelope(self, r)
            self.assertEqual(error["code"], "unsupported_media_type")
            self.assertIn('"Content-Type: application/json"', error["message"])
            self.assertEqual(r.header("x-should-retry"), "false")
        self.assertEqual(self.provider.requests, [])

    def test_a_body_without_a_content_type_is_415(self) -> None:
        client = MemoryClient(self.gateway)
        body = b'{"messages": [{"role": "user", "content": "hi"}]}'
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer test-token\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        r = client.response()
        self.assertEqual(r.status, 415)
        self.assertEqual(
            r.json()["error"]["message"],
            'A request body must be JSON, sent with "Content-Type: application/json".',
        )

    def test_an_empty_body_is_still_an_empty_object_whatever_its_type(self) -> None:
        for headers in ({}, {"Content-Type": "text/plain"}):
            r = post(self.gateway, raw=b"", headers=headers)
            self.assertEqual(r.status, 400)
            self.assertEqual(r.json()["error"]["code"], "missing_user_message")

    def test_auth_comes_before_the_content_type(self) -> None:
        r = post(self.gateway, HI, token="wrong", headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 401)

    def test_an_embedding_site_without_the_gate_gets_the_same_answer(self) -> None:
        site = Site(self.gateway.resource(), reactor=self.reactor)
        r = post(self.gateway, HI, site=site, headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 415)
        self.assertEqual(r.json()["error"]["code"], "unsupported_media_type")
        self.assertEqual(post(self.gateway, HI, site=site).status, 200)


class DefaultRuleTests(SynchronousTestCase):
    """A route the table does not name still has a small limit."""

    def setUp(self) -> None:
        app = Klein()
        self.seen: list[int] = []

        @app.route("/echo", methods=["POST", "GET"])
        def echo(request: Any) -> bytes:
            self.seen.append(len(request.content.read()))
            return b"ok"

        @app.route("/ping")
        def ping(request: Any) -> bytes:
            return b"pong"

        gate = RouteGate(app.url_map, {"ping": NO_BODY})
        self.site = GatewaySite(app.resource(), gate=gate, reactor=MemoryReactorClock())

    def send(self, method: str, path: str, body: bytes) -> Response:
        client = MemoryClient(None, site=self.site)  # type: ignore[arg-type]
        client.request(method, path, raw=body, token=None)
        return client.response()

    def test_default_limit(self) -> None:
        self.assertEqual(self.send("POST", "/echo", b"x" * DEFAULT_MAX_BODY_BYTES).status, 200)
        r = self.send("POST", "/echo", b"x" * (DEFAULT_MAX_BODY_BYTES + 1))
        self.assertEqual((r.status, r.json()["error"]["code"]), (413, "payload_too_large"))
        self.assertEqual(self.seen, [DEFAULT_MAX_BODY_BYTES])

    def test_get_and_routes_without_a_body_refuse_one(self) -> None:
        for method, path in (("GET", "/echo"), ("POST", "/ping")):
            r = self.send(method, path, b"x")
            self.assertEqual(r.status, 413)
            self.assertEqual(r.json()["error"]["message"], "This endpoint takes no request body.")
        self.assertEqual(self.send("GET", "/echo", b"").status, 200)
        self.assertEqual(self.seen, [0])


class BareLineFeedTests(Base):
    def test_a_bare_lf_head_is_a_json_400_at_once(self) -> None:
        for head in (
            b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\nAccept: */*\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\n",
        ):
            client = MemoryClient(self.gateway)
            client.send(head)
            r = client.response()  # no clock advanced: not the header deadline's 408
            self.assertEqual(r.status, 400, head)
            self.assertIn("CRLF", assert_error_envelope(self, r)["message"])
            self.assertTrue(client.closed)

    def test_a_crlf_split_between_reads_is_fine(self) -> None:
        client = MemoryClient(self.gateway)
        for piece in (b"GET /healthz HTTP/1.1\r", b"\nHost: 127.0.0.1\r", b"\n\r", b"\n"):
            client.send(piece)
        self.assertEqual(client.response().status, 200)

    def test_after_a_good_request_on_the_same_connection(self) -> None:
        client = MemoryClient(self.gateway)
        client.send(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /healthz HTTP/1.1\nHost: 127.0.0.1\n\n"
        )
        data = client.transport.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data)
        self.assertIn(b"HTTP/1.1 400 Bad Request", data)

    def test_a_body_may_hold_bare_lfs(self) -> None:
        body = b'{\n "messages": [{"role": "user", "content": "hi\\n"}]\n}\n'
        r = post(self.gateway, raw=body)
        self.assertEqual(r.status, 200)


class SlowBodyTests(Base):
    def test_a_slow_chunked_body_on_any_spelling_meets_the_body_deadline(self) -> None:
        for path in (b"/v1/chat/completions", b"//v1/chat%2Fcompletions"):
            client = MemoryClient(self.gateway)
            client.send(
                b"POST "
                + path
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test-token\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(int(BODY_TIMEOUT_SECONDS) - 1):
                client.send(b"1\r\n \r\n")
                self.reactor.advance(1)
            self.assertEqual(client.transport.value(), b"")
            self.reactor.advance(1)
            r = client.response()
            self.assertEqual((r.status, r.json()["error"]["code"]), (408, "request_timeout"))
            self.assertTrue(client.closed)
