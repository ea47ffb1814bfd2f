"""The incremental SSE parser: any split of the bytes gives the same events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.providers.sse import SSEError, SSEEvent, SSEParser

STREAM = (
    ": a comment\r\n"
    "event: message_start\r\n"
    'data: {"a": 1}\r\n'
    "\r\n"
    "data: first\n"
    "data: second\n"
    "\n"
    "id: 7\r"
    "data:no-space é ✓ 🙂\r"
    "\r"
    "event: ping\n"
    "\n"
    "data\n"
    "\n"
).encode()

EXPECTED = [
    SSEEvent('{"a": 1}', "message_start"),
    SSEEvent("first\nsecond"),
    SSEEvent("no-space é ✓ 🙂", id="7"),
    SSEEvent("", id="7"),
]


def feed_all(parser: SSEParser, chunks: list[bytes]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


class SSEParserTests(SynchronousTestCase):
    def test_whole(self) -> None:
        self.assertEqual(SSEParser().feed(STREAM), EXPECTED)

    def test_every_two_way_split(self) -> None:
        """CRLF cut between CR and LF, UTF-8 sequences cut in the middle: same events."""
        for i in range(len(STREAM) + 1):
            got = feed_all(SSEParser(), [STREAM[:i], STREAM[i:]])
            self.assertEqual(got, EXPECTED, f"split at {i}")

    def test_byte_by_byte(self) -> None:
        got = feed_all(SSEParser(), [STREAM[i : i + 1] for i in range(len(STREAM))])
        self.assertEqual(got, EXPECTED)

    # No deadline: a loaded CI machine is not a failure of the parser.
    @settings(deadline=None)
    @given(st.lists(st.integers(0, len(STREAM)), max_size=12))
    def test_any_split(self, cuts: list[int]) -> None:
        points = sorted(set(cuts))
        chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
        self.assertEqual(feed_all(SSEParser(), chunks), EXPECTED)

    def test_cr_then_crlf(self) -> None:
        """A lone CR ends a line; CR LF is one line end, not two (no early dispatch)."""
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: a\r"), [])
        self.assertEqual(parser.feed(b"\ndata: b\r\n\r\n"), [SSEEvent("a\nb")])

    def test_incomplete_event_is_not_dispatched(self) -> None:
        parser = SSEParser()
        self.assertEqual(parser.feed(b"data: a\n"), [])
        self.assertEqual(parser.feed(b"data: b"), [])

    def test_bom_and_event_name_reset(self) -> None:
        events = SSEParser().feed(b"\xef\xbb\xbfevent: x\ndata: 1\n\ndata: 2\n\n")
        self.assertEqual(events, [SSEEvent("1", "x"), SSEEvent("2")])

    def test_invalid_utf8_is_replaced(self) -> None:
        self.assertEqual(SSEParser().feed(b"data: \xff\n\n"), [SSEEvent("\ufffd")])

    def test_oversize_line_without_end(self) -> None:
        """Bytes that never end a line stop at the cap instead of growing memory."""
        parser = SSEParser(max_line=100)
        parser.feed(b"data: " + b"x" * 90)
        with self.assertRaises(SSEError) as e:
            parser.feed(b"x" * 20)
        self.assertIn("longer than 100 bytes", str(e.exception))

    def test_oversize_complete_line(self) -> None:
        with self.assertRaises(SSEError):
            SSEParser(max_line=100).feed(b"data: " + b"x" * 200 + b"\n\n")

    def test_oversize_event(self) -> None:
        """Many short data lines without a blank line are capped too."""
        parser = SSEParser(max_line=100, max_event=1000)
        with self.assertRaises(SSEError):
            parser.feed(b"data: 0123456789\n" * 100)

    def test_line_at_cap_is_fine(self) -> None:
        line = b"data: " + b"y" * 94
        self.assertEqual(SSEParser(max_line=100).feed(line + b"\n\n"), [SSEEvent("y" * 94)])

    def test_trickled_long_line(self) -> None:
        """A long line arriving a byte at a time is collected, not re-copied per byte."""
        parser = SSEParser(max_line=300_000)
        line = b"data: " + b"x" * 200_000
        for i in range(len(line)):
            self.assertEqual(parser.feed(line[i : i + 1]), [])
        self.assertEqual(parser.feed(b"\n\n"), [SSEEvent("x" * 200_000)])

    def test_trickled_oversize_line(self) -> None:
        parser = SSEParser(max_line=100)
        parser.feed(b"data: ")
        with self.assertRaises(SSEError):
            for _ in range(200):
                parser.feed(b"x")
