"""An incremental Server-Sent-Events parser: bytes in (split anywhere), events out."""

from __future__ import annotations

import attrs

#: Longest line (and longest event) accepted: far above any real model chunk, far below a leak.
MAX_LINE = 1024 * 1024
MAX_EVENT = 4 * 1024 * 1024


class SSEError(Exception):
    """The byte stream is not an event stream we can read (a line or event over the cap)."""


@attrs.frozen
class SSEEvent:
    """One dispatched event: its ``event:`` name (``message`` when unnamed) and ``data``."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """
    Feed bytes as they arrive; ``feed`` returns the events they completed.

    Follows the WHATWG event-stream rules: lines end in ``\\r\\n``, ``\\n`` or ``\\r``; ``:``
    starts a comment; ``data:`` lines of one event are joined with ``\\n``; a blank line
    dispatches.  Lines are split on bytes before decoding, so a UTF-8 sequence cut between two
    chunks is decoded whole.  A line longer than ``max_line`` (or an event longer than
    ``max_event``) raises L{SSEError} instead of growing memory without bound.
    """

    def __init__(self, max_line: int = MAX_LINE, max_event: int = MAX_EVENT) -> None:
        self._max_line = max_line
        self._max_event = max_event
        self._buf = b""
        self._parts: list[bytes] = []
        self._pending = 0
        self._skip_lf = False
        self._first = True
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by ``chunk``; raises L{SSEError} on an oversize line."""
        events: list[SSEEvent] = []
        if self._buf and b"\n" not in chunk and b"\r" not in chunk:
            # Still inside one line: collect the pieces without re-copying the line each time
            # (an upstream trickling a long line byte by byte would cost quadratic time).
            self._parts.append(chunk)
            self._pending += len(chunk)
            if self._pending > self._max_line:
                raise SSEError(f"event stream line longer than {self._max_line} bytes")
            return events
        if self._parts:
            self._buf = b"".join([self._buf, *self._parts])
            self._parts, self._pending = [], 0
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        if self._skip_lf and buf[:1] == b"\n":
            start = 1
        self._skip_lf = False
        size = len(buf)
        while start < size:
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, lf if lf >= 0 else size)
            end = cr if cr >= 0 else lf
            if end < 0:
                break
            line = buf[start:end]
            if end == cr:
                if end + 1 < size:
                    start = end + 2 if buf[end + 1 : end + 2] == b"\n" else end + 1
                else:
                    # A CR at the end of the chunk: the LF of a CRLF may come next.
                    start, self._skip_lf = end + 1, True
            else:
                start = end + 1
            if len(line) > self._max_line:
                raise SSEError(f"event stream line longer than {self._max_line} bytes")
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buf = buf[start:]
        self._pending = len(self._buf)
        if len(self._buf) > self._max_line:
            raise SSEError(f"event stream line longer than {self._max_line} bytes")
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        if self._first:
            self._first = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None
        line = raw.decode("utf-8", "replace")
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._size += len(value) + 1
            if self._size > self._max_event:
                raise SSEError(f"event stream event longer than {self._max_event} bytes")
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, self._data, self._size = self._data, [], 0
        name, self._event = self._event, ""
        if not data:
            return None
        return SSEEvent("\n".join(data), name or "message", self._id)
