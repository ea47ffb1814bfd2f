"""SSE chunk encoding: the pre-encoded envelope writes exactly what encoding each chunk would."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.agents.events import RunEnded, RunEvent, RunStarted, TextDelta, TextSoFar
from openclaw_twisted.providers.interface import Usage
from openclaw_twisted.web.sse import DONE, CompletionStream, frame

TRICKY = [
    "plain",
    "",
    'say "hi"',
    "back\\slash",
    "line\nbreak\r\ttab",
    "\x00\x1f\x7f control",
    "héllo wörld, 日本語, emoji 😀",
    "</script><script>alert(1)</script>",
    "\u2028\u2029 separators",
    '"content":null',
    "lone \ud800 surrogate",
    "\udfff",
    "pair split \ud83d\ude00",
]


class FakeRequest:
    """What ``CompletionStream`` uses of a request, recording the bytes written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.finished = False
        self.channel = object()
        self.producer: object | None = None

    def notifyFinish(self) -> Deferred[None]:
        return Deferred()

    def setResponseCode(self, code: int) -> None:
        assert code == 200

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        assert not self.finished
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True


class FakeRun:
    """A run whose events are all there already."""

    def __init__(self, events: list[RunEvent]) -> None:
        self.events: list[RunEvent | None] = [*events, None]
        self.cancelled = False

    def next_event(self) -> Deferred[RunEvent | None]:
        return succeed(self.events.pop(0))

    def cancel(self) -> None:
        self.cancelled = True


HEAD = ("run-1", 0, 0, "agent:main:main")


class ChunkEncodingTests(SynchronousTestCase):
    def stream(self, model: str, deltas: list[str]) -> bytes:
        events: list[RunEvent] = [RunStarted(*HEAD, 0, model)]
        events += [TextDelta(*HEAD, d, TextSoFar([d], 1)) for d in deltas]
        events.append(RunEnded(*HEAD, "stop", Usage()))
        request = FakeRequest()
        run = FakeRun(events)
        stream = CompletionStream(
            request,  # type: ignore[arg-type]
            run,  # type: ignore[arg-type]
            Clock(),
            completion_id="chatcmpl-1",
            created=1700000000,
            model=model,
            include_usage=False,
            heartbeat=0,
        )
        stream.start()
        self.assertTrue(stream.done.called)
        self.assertTrue(request.finished)
        self.assertFalse(run.cancelled)
        return b"".join(request.written)

    def straightforward(self, model: str, deltas: list[str]) -> bytes:
        head = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return frame({**head, "choices": [choice]})

        body = chunk({"role": "assistant"})
        body += b"".join(chunk({"content": d}) for d in deltas)
        return body + chunk({}, "stop") + DONE

    def test_byte_identical_to_encoding_each_chunk(self) -> None:
        for model in ("openclaw", 'odd "model" \n ü', "model</script>"):
            self.assertEqual(self.stream(model, TRICKY), self.straightforward(model, TRICKY))

    def test_every_frame_is_utf8_json_that_decodes_to_the_delta(self) -> None:
        body = self.stream("openclaw", TRICKY)
        frames = body.split(b"\n\n")
        self.assertEqual(frames[-2:], [b"data: [DONE]", b""])
        chunks = [json.loads(f.removeprefix(b"data: ").decode("utf-8")) for f in frames[:-2]]
        contents = [c["choices"][0]["delta"].get("content") for c in chunks]
        # What any JSON reader makes of each text (a surrogate pair is one character).
        expected = [json.loads(json.dumps(t)) for t in TRICKY]
        self.assertEqual(contents, [None, *expected, None])

    def test_lone_surrogate_is_escaped_not_an_error(self) -> None:
        body = self.stream("openclaw", ["a\ud800b"])
        self.assertIn(b'"content":"a\\ud800b"', body)
        self.assertNotIn(b"error", body)
