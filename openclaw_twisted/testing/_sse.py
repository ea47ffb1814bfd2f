"""An SSE body's events, as a client parses them."""

from __future__ import annotations

import json
from typing import Any

from ..providers.sse import SSEParser


def parse_sse(body: bytes) -> list[Any]:
    """
    The events of an SSE body, as a client parses them (comments such as ``: ping`` and
    ``event:``/``id:`` fields ignored): each event's ``data`` decoded as JSON, or the raw
    string when it is not JSON (``"[DONE]"``).  A trailing event without its blank line is
    incomplete and left out, as a client would.
    """
    # The gateway's own incremental parser, with caps no test body can reach.
    cap = len(body) + 1
    events: list[Any] = []
    for event in SSEParser(max_line=cap, max_event=cap).feed(body):
        try:
            events.append(json.loads(event.data))
        except ValueError:
            events.append(event.data)
    return events
