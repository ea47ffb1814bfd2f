"""The gateway's session store on Redis: ``ISessionStore`` over ``RedisTranscripts``."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from ..agents.store import ISessionStore, messages_from
from ..providers.interface import Message
from ._transcripts import RedisTranscripts

#: A history read asks for this many records per message wanted at first (records that hold
#: no message, an aborted turn's empty answer, are rare), and twice as many each time after.
_RECORDS_PER_MESSAGE = 2


@implementer(ISessionStore)
@attrs.define
class RedisSessionStore:
    """
    Sessions shared by every gateway on one Redis.  An append fires once Redis has it (with
    ``--appendonly yes --appendfsync always``: on its disk), so a turn acknowledged to a
    client is in Redis; there is nothing to flush.  Reads and writes fail with
    ``RedisUnavailable`` (a ``StoreUnavailable``) at once while Redis cannot be reached.
    """

    transcripts: RedisTranscripts

    def history(self, agent_id: str, session_key: str, limit: int) -> Deferred[list[Message]]:
        if limit <= 0:
            return succeed([])
        return Deferred.fromCoroutine(self._history(agent_id, session_key, limit))

    async def _history(self, agent_id: str, session_key: str, limit: int) -> list[Message]:
        want = limit * _RECORDS_PER_MESSAGE
        while True:
            records = await self.transcripts.tail(agent_id, session_key, want)
            found = messages_from(records, limit)
            if len(found) >= limit or len(records) < want:
                return found
            want *= 2

    def append(
        self, agent_id: str, session_key: str, records: list[dict[str, Any]]
    ) -> Deferred[None]:
        return self.transcripts.append(agent_id, session_key, records)

    def transcript(self, agent_id: str, session_key: str) -> Deferred[list[dict[str, Any]]]:
        return self.transcripts.records(agent_id, session_key)

    def sessions(self, agent_id: str) -> Deferred[list[dict[str, Any]]]:
        return self.transcripts.sessions(agent_id)

    def flush(self) -> Deferred[None]:
        return succeed(None)
