"""Where sessions live: the interface, and an in-memory store for tests and ephemeral use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from ..providers.interface import Message


class ISessionStore(Interface):
    """
    Transcripts keyed by (agent id, session key). Reads are small and synchronous; ``append``
    and ``flush`` may return a Deferred when the store writes off the caller's thread.
    """

    def history(agent_id: str, session_key: str, limit: int) -> list[Message]:
        """The last ``limit`` user/assistant messages of the session, oldest first."""

    def append(
        agent_id: str, session_key: str, records: list[dict[str, Any]]
    ) -> Deferred[None] | None:
        """
        Append transcript records. They are durable when this returns ``None``, or when the
        returned Deferred fires (it fails if they could not be written). Reads see them at
        once either way.
        """

    def transcript(agent_id: str, session_key: str) -> list[dict[str, Any]]:
        """Every record of the session, oldest first (empty for an unknown session)."""

    def sessions(agent_id: str) -> list[dict[str, Any]]:
        """``[{key, sessionId, updatedAt}]`` for the agent's sessions, newest first."""

    def flush() -> Deferred[None] | None:
        """
        Write anything kept back (the gateway calls this when it stops); a Deferred, if
        returned, fires once every write begun before is on disk.
        """


def messages_from(records: Sequence[dict[str, Any]], limit: int) -> list[Message]:
    """The conversation in transcript records, as provider messages (last ``limit``)."""
    out: list[Message] = []
    # Walk back from the end: a long transcript costs only the messages that are sent.
    for r in reversed(records):
        if len(out) >= limit:
            break
        role, text = r.get("role"), r.get("text")
        if role is None and isinstance(r.get("message"), dict):
            # A transcript written by OpenClaw itself: {"type":"message","message":{...}}.
            role, text = r["message"].get("role"), _content_text(r["message"].get("content"))
        if role in ("user", "assistant") and isinstance(text, str) and text:
            out.append(Message(role, text))
    out.reverse()
    return out


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "\n".join(parts)
    return None


@implementer(ISessionStore)
@attrs.define
class MemorySessionStore:
    """Sessions in a dict: lost at exit; for tests and for embedding without a disk."""

    _data: dict[tuple[str, str], list[dict[str, Any]]] = attrs.Factory(dict)
    _updated: dict[tuple[str, str], int] = attrs.Factory(dict)

    def history(self, agent_id: str, session_key: str, limit: int) -> list[Message]:
        return messages_from(self._data.get((agent_id, session_key), []), limit)

    def append(self, agent_id: str, session_key: str, records: list[dict[str, Any]]) -> None:
        self._data.setdefault((agent_id, session_key), []).extend(records)
        self._updated[(agent_id, session_key)] = max(
            (int(r.get("ts", 0)) for r in records), default=0
        )

    def transcript(self, agent_id: str, session_key: str) -> list[dict[str, Any]]:
        return list(self._data.get((agent_id, session_key), []))

    def flush(self) -> None:
        pass

    def sessions(self, agent_id: str) -> list[dict[str, Any]]:
        rows = [
            {"key": key, "sessionId": f"{a}:{key}", "updatedAt": self._updated.get((a, key), 0)}
            for (a, key) in self._data
            if a == agent_id
        ]
        return sorted(rows, key=lambda r: -r["updatedAt"])
