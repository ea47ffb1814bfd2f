"""Property-based fuzzing of request bodies, headers and WebSocket frames, all in memory."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from txaio._common import _BatchedTimer

from openclaw_twisted.testing import ScriptedProvider
from openclaw_twisted.ws.server import METHODS

from ..web.memory import TOKEN, MemoryClient, Response, make_gateway
from ..ws.helpers import connect_frame, ws_factory
from .support import (
    BINARY,
    LogCapture,
    MemoryWebSocket,
    assert_error_envelope,
    fuzz_settings,
)

HI = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}

# JSON values, with strings that include escapes a client can send (lone surrogates too).
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "\ud800", "\udfff x", "\x00", "openclaw", "user", "\u202e"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
# JSON text of values that are big in one dimension: long strings, deep nesting, wide arrays.
huge = st.one_of(
    st.integers(1, 200_000).map(lambda n: '"' + "x" * n + '"'),
    st.integers(1, 50_000).map(lambda d: '[{"a":' * d + "0" + "}]" * d),
    st.integers(1, 20_000).map(lambda n: "[" + ",".join(["0"] * n) + "]"),
    st.just("1" * 5000),
    st.just("1e999"),
)


def encode(value: Any) -> bytes:
    """JSON as a client may send it (lone surrogates escaped as ``\\udXXX``)."""
    return json.dumps(value).encode("utf-8")


def with_huge(body: dict[str, Any], key: str, fragment: str) -> bytes:
    body = {k: v for k, v in body.items() if k != key}
    return encode(body)[:-1] + (b", " if body else b"") + f'"{key}": {fragment}}}'.encode()


roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", "x"])
parts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["text", "input_text", "image_url", "audio"]) | json_values,
        "text": st.text(max_size=30) | json_values,
        "image_url": st.sampled_from(
            [
                "data:image/png;base64,iVBORw0KGgo=",
                "data:image/png;base64,!!!",
                "data:text/html,<b>",
                "http://127.0.0.1/x.png",
                "file:///etc/passwd",
            ]
        ).map(lambda u: {"url": u})
        | json_values,
    },
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "role": roles | json_values,
        "content": st.text(max_size=60) | st.lists(parts, max_size=4) | json_values,
        "name": st.text(max_size=10) | json_values,
    },
)
fields = {
    "model": st.sampled_from(["openclaw", "openclaw/main", "openclaw:beta", "agent:x", "gpt-4"])
    | json_values,
    "messages": st.lists(messages, max_size=6) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_values})
    | json_values,
    "user": st.text(max_size=20) | json_values,
    "temperature": json_values,
    "top_p": json_values,
    "max_tokens": json_values,
    "max_completion_tokens": json_values,
    "stop": json_values,
    "seed": json_values,
    "presence_penalty": json_values,
    "frequency_penalty": json_values,
    "tools": json_values,
}
chat_bodies = st.one_of(
    st.fixed_dictionaries({}, optional=fields).map(encode),
    st.builds(
        with_huge, st.fixed_dictionaries({}, optional=fields), st.sampled_from(sorted(fields)), huge
    ),
    json_values.map(encode),
)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    st.sampled_from(
        [b"\xff\xfe{}", b'{"model": "\xc3\x28"}', b"{" * 100_000, b"[" * 5000 + b"]" * 5000]
    ),
)


class FuzzBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.state = os.path.abspath(self.mktemp())
        self.gateway = make_gateway(
            self.state, ScriptedProvider(clock=self.reactor), reactor=self.reactor
        )
        self.logs = LogCapture().install(self)
        self.examples = 0

    def tearDown(self) -> None:
        # The gateway still serves once the fuzzing is over, and nothing failed in the log.
        self.assertEqual(self.send_chat(json.dumps(HI).encode()).status, 200)
        self.assertEqual(self.logs.failures(), [])
        self.assertGreater(self.examples, 0)

    def send_chat(self, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
        client = MemoryClient(self.gateway)
        head = [b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1"]
        names = {name.lower() for name, _ in headers or []}
        if b"authorization" not in names:
            head.append(b"Authorization: Bearer " + TOKEN.encode())
        head.append(b"Content-Type: application/json")
        head.extend(name + b": " + value for name, value in headers or [])
        head.append(b"Content-Length: %d" % len(body))
        client.send(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.reactor.advance(0)
        r = client.response()
        self.assertTrue(r.complete, r)
        return r

    def check(self, r: Response, statuses: set[int]) -> None:
        """No 500; the statuses expected; errors are envelopes, answers are whole."""
        self.examples += 1
        self.assertIn(r.status, statuses, r.body[:500])
        self.assertEqual(self.logs.failures(), [])
        if r.status != 200:
            assert_error_envelope(self, r)
        elif (
            r.header(
                "content-type",
            )
            == "application/json; charset=utf-8"
        ):
            self.assertEqual(r.json()["object"], "chat.completion")
        else:
            self.assertEqual(r.events()[-1], "[DONE]")


class BodyFuzzTests(FuzzBase):
    @fuzz_settings(300)
    @given(body=chat_bodies)
    @example(body=b'{"user":"u","messages":[{"role":"user","content":"\\ud800"}]}')  # was a 500
    def test_json_bodies(self, body: bytes) -> None:
        self.check(self.send_chat(body), {200, 400})

    @fuzz_settings(150)
    @given(body=raw_bodies)
    def test_raw_bodies(self, body: bytes) -> None:
        self.check(self.send_chat(body), {200, 400})


header_values = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=80),
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.integers(1, 8000).map(lambda n: "é" * n),
    st.sampled_from(["agent:../../etc:x", "../../../tmp/x", "agent:main:\x00", "main", " beta "]),
)
header_names = st.sampled_from(
    [b"x-openclaw-agent-id", b"x-openclaw-agent", b"x-openclaw-session-key", b"authorization"]
)


class HeaderFuzzTests(FuzzBase):
    @fuzz_settings(250)
    @given(headers=st.lists(st.tuples(header_names, header_values), min_size=1, max_size=4))
    def test_openclaw_headers_and_authorization(self, headers: list[tuple[bytes, Any]]) -> None:
        raw = [(n, v.encode("utf-8") if isinstance(v, str) else v) for n, v in headers]
        r = self.send_chat(json.dumps(HI).encode(), raw)
        self.check(r, {200, 400, 401, 431})
        if r.status == 400:  # an unknown agent, a NUL in a value (RFC 9110 §5.5), a long key
            self.assertIn(r.json()["error"]["code"], ("unknown_agent", "bad_request", "too_long"))
        # Keys never become paths: nothing is written outside the agents' session folders.
        for dirpath, _, files in os.walk(self.state):
            rel = os.path.relpath(dirpath, self.state).split(os.sep)
            if files:
                # Lock files (``agents/.locks``, ``agents/<id>/locks``) are named by hashes.
                if rel == ["agents", ".locks"]:
                    continue
                self.assertEqual(len(rel), 3, dirpath)
                self.assertEqual(rel[0], "agents", dirpath)
                self.assertIn(rel[-1], ("sessions", "locks"), dirpath)


ws_frames = st.one_of(
    json_values.map(lambda v: (encode(v), False)),
    st.binary(max_size=100).map(lambda b: (b, False)),
    st.binary(max_size=100).map(lambda b: (b, True)),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["req", "res", "event"]) | json_values},
        optional={
            "id": st.text(max_size=10) | json_values,
            "method": st.sampled_from([*METHODS, "connect", "nope"]) | json_values,
            "params": json_values,
        },
    ).map(lambda v: (encode(v), False)),
    huge.map(lambda fragment: (fragment.encode(), False)),
)


class WebSocketFuzzTests(FuzzBase):
    def setUp(self) -> None:
        super().setUp()
        # Autobahn's own timers (handshake, close) run on txaio's loop: make it our clock, so
        # nothing is left on the global reactor.
        ws_factory(self.gateway)._batched_timer = _BatchedTimer(
            1000.0, 100, self.reactor.seconds, self.reactor.callLater
        )

    def tearDown(self) -> None:
        super().tearDown()
        self.assertEqual(global_reactor.getDelayedCalls(), [])

    def replies_ok(self, frames: list[Any]) -> None:
        for frame in frames:
            self.assertIn(frame["type"], ("res", "event"), frame)
            if frame["type"] == "res" and not frame["ok"]:
                self.assertIsInstance(frame["error"]["code"], str)
                self.assertIsInstance(frame["error"]["message"], str)

    @fuzz_settings(200)
    @given(frame=ws_frames)
    @example(frame=(b"[" * 100_000 + b"]" * 100_000, False))  # was a RecursionError
    @example(frame=(b'{"type":"req","id":"\\ud800","method":"connect"}', False))
    def test_first_frame(self, frame: tuple[bytes, bool]) -> None:
        """Anything but a good ``connect`` gets INVALID_REQUEST and a close."""
        ws = MemoryWebSocket(MemoryClient(self.gateway))
        ws.messages()  # the challenge
        ws.send(frame[0], BINARY if frame[1] else 1)
        replies = ws.messages()
        self.replies_ok(replies)
        self.assertTrue(ws.closing, replies)
        if replies:
            self.assertEqual(replies[0]["error"]["code"], "INVALID_REQUEST")
        self.examples += 1
        self.assertEqual(self.logs.failures(), [])

    @fuzz_settings(200)
    @given(frames=st.lists(ws_frames, min_size=1, max_size=4))
    @example(frames=[(b'{"type":"req","id":"\\udfff","method":"health"}', False)])
    @example(
        frames=[
            (
                b'{"type":"req","id":"s","method":"chat.send","params":'
                b'{"sessionKey":"agent:main:x\\ud800","message":"hi \\ud800"}}',
                False,
            )
        ]
    )
    def test_frames_after_connect(self, frames: list[tuple[bytes, bool]]) -> None:
        """Each frame gets a well-formed reply or a close; an open connection still answers."""
        ws = MemoryWebSocket(MemoryClient(self.gateway))
        ws.send_json(connect_frame())
        hello = ws.messages()[-1]
        self.assertTrue(hello["ok"], hello)
        for payload, binary in frames:
            if not ws.closing:
                ws.send(payload, BINARY if binary else 1)
                self.replies_ok(ws.messages())
        if not ws.closing:
            ws.send_json({"type": "req", "id": "h", "method": "health", "params": {}})
            health = [f for f in ws.messages() if f.get("id") == "h"]
            self.assertTrue(health and health[0]["ok"], health)
        ws.close()
        self.examples += 1
        self.assertEqual(self.logs.failures(), [])
