"""Fakes for trial suites: a scripted model, a gateway in memory, a loopback model server."""

from ._memory import MEMORY_TOKEN, MemoryGateway, memory_gateway
from ._scripted import Script, ScriptedProvider, ScriptedStream
from ._sse import parse_sse
from ._upstream import GARBAGE, FakeToolCall, FakeUpstream, Received, Reply, reply_body

__all__ = [
    "GARBAGE",
    "MEMORY_TOKEN",
    "FakeToolCall",
    "FakeUpstream",
    "MemoryGateway",
    "Received",
    "Reply",
    "Script",
    "ScriptedProvider",
    "ScriptedStream",
    "memory_gateway",
    "parse_sse",
    "reply_body",
]
