"""Where sessions live: the interface, and an in-memory store for tests and ephemeral use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from ..providers.interface import Message, ToolCall

#: The longest session key accepted from a client (``x-openclaw-session-key``, the WS
#: ``sessionKey`` param, ``--session-key``), and the longest ``user`` of a chat completion
#: (it becomes the key ``agent:<id>:openai-user:<user>``). Keys are held in memory and in
#: every line of the session index; OpenClaw's own keys are far shorter than either.
SESSION_KEY_MAX_CHARS = 512
USER_MAX_CHARS = 256

#: The ``RunError`` kind of a run whose session store (Redis) could not be reached: HTTP 503
#: ``session_store_unavailable``, the WebSocket's ``UNAVAILABLE``.
STORE_UNAVAILABLE = "session_store_unavailable"
#: What a client is told then (the store's address stays in the gateway's log).
STORE_UNAVAILABLE_MESSAGE = "The session store is unavailable; try again in a moment."


class StoreUnavailable(Exception):
    """A shared store did not answer (down, restarting, too slow): the request fails now."""


def session_key_error(value: str, name: str, limit: int = SESSION_KEY_MAX_CHARS) -> str | None:
    """
    Why ``value`` (a session key, or what becomes one, sent as ``name``) is refused, or
    ``None``. The three edges (HTTP, WebSocket, CLI) call this and wrap it in their own error.
    """
    if len(value) > limit:
        return f"`{name}` is too long ({len(value)} characters); the limit is {limit}."
    return None


class ISessionStore(Interface):
    """
    Transcripts keyed by (agent id, session key). Every method returns a Deferred: a store
    may read and write off the caller's thread. A store that does not (in memory, or on disk
    without a reactor) returns Deferreds that have already fired.
    """

    def history(agent_id: str, session_key: str, limit: int) -> Deferred[list[Message]]:
        """
        The last ``limit`` messages of the session (user, assistant, tool results), oldest
        first.
        """

    def append(agent_id: str, session_key: str, records: list[dict[str, Any]]) -> Deferred[None]:
        """
        Append transcript records; the Deferred fires once they are durable (it fails if they
        could not be written). Reads begun after this call see them at once.
        """

    def transcript(agent_id: str, session_key: str) -> Deferred[list[dict[str, Any]]]:
        """Every record of the session, oldest first (empty for an unknown session)."""

    def sessions(agent_id: str) -> Deferred[list[dict[str, Any]]]:
        """``[{key, sessionId, updatedAt}]`` for the agent's sessions, newest first."""

    def flush() -> Deferred[None]:
        """
        Write anything kept back (the gateway calls this when it stops); fires once every
        write begun before is on disk.
        """


def message_of(record: dict[str, Any]) -> Message | None:
    """
    The message a transcript record holds, if it holds one: user or assistant text, an
    assistant turn's tool calls (``toolCalls``), a tool result (role ``tool``).
    """
    role, text = record.get("role"), record.get("text")
    if role is None and isinstance(record.get("message"), dict):
        # A transcript written by OpenClaw itself: {"type":"message","message":{...}}.
        role, text = record["message"].get("role"), _content_text(record["message"].get("content"))
    if role == "tool":
        call_id = record.get("toolCallId")
        if isinstance(call_id, str) and isinstance(text, str):
            return Message.result(call_id, text, record.get("isError") is True)
        return None
    calls = _tool_calls(record.get("toolCalls")) if role == "assistant" else ()
    if role in ("user", "assistant") and isinstance(text, str) and (text or calls):
        return Message(role, text, tool_calls=calls)
    return None


def _tool_calls(value: Any) -> tuple[ToolCall, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        ToolCall(
            c["id"], c["name"], c["arguments"] if isinstance(c.get("arguments"), str) else "{}"
        )
        for c in value
        if isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("name"), str)
    )


def messages_from(records: Sequence[dict[str, Any]], limit: int) -> list[Message]:
    """The conversation in transcript records, as provider messages (last ``limit``)."""
    out: list[Message] = []
    # Walk back from the end: a long transcript costs only the messages that are sent.
    for r in reversed(records):
        if len(out) >= limit:
            break
        message = message_of(r)
        if message is not None:
            out.append(message)
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

    def history(self, agent_id: str, session_key: str, limit: int) -> Deferred[list[Message]]:
        return succeed(messages_from(self._data.get((agent_id, session_key), []), limit))

    def append(
        self, agent_id: str, session_key: str, records: list[dict[str, Any]]
    ) -> Deferred[None]:
        self._data.setdefault((agent_id, session_key), []).extend(records)
        self._updated[(agent_id, session_key)] = max(
            (int(r.get("ts", 0)) for r in records), default=0
        )
        return succeed(None)

    def transcript(self, agent_id: str, session_key: str) -> Deferred[list[dict[str, Any]]]:
        return succeed(list(self._data.get((agent_id, session_key), [])))

    def flush(self) -> Deferred[None]:
        return succeed(None)

    def sessions(self, agent_id: str) -> Deferred[list[dict[str, Any]]]:
        rows = [
            {"key": key, "sessionId": f"{a}:{key}", "updatedAt": self._updated.get((a, key), 0)}
            for (a, key) in self._data
            if a == agent_id
        ]
        return succeed(sorted(rows, key=lambda r: -r["updatedAt"]))
