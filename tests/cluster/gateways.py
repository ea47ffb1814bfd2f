"""Two real gateways on loopback sharing one real Redis, and a few helpers to talk to them."""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import Script, ScriptedProvider

from ..redis_support import RedisServer, start_redis
from ..support import http_client, listen

TOKEN = "cluster-token"


@attrs.define
class Node:
    """One gateway of the pair: its object, base URL and own model provider."""

    gateway: Gateway
    url: str
    provider: ScriptedProvider

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]


def cluster_config(url: str, **gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "auth": {"token": TOKEN},
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            **gateway,
        },
        "agents": {"defaults": {"model": "scripted/model"}},
        "session": {"store": "redis", "redis": {"url": url, "leaseSeconds": 5}},
    }


async def node(
    test: TestCase, server: RedisServer, script: Script | None = None, **gateway: Any
) -> Node:
    """A gateway on ``server``'s Redis, serving on a free loopback port until the test ends."""
    config = parse_config(
        cluster_config(server.url, **gateway), {"OPENCLAW_STATE_DIR": test.mktemp()}
    )
    provider = ScriptedProvider(script or Script(), clock=reactor)
    gw = Gateway(config, reactor, providers=Providers.of([provider]))
    test.addCleanup(gw.close_shared)
    assert gw.redis is not None and gw.bus is not None
    await gw.redis.when_connected()
    await gw.bus.when_connected()
    return Node(gw, await listen(test, gw), provider)


async def pair(
    test: TestCase, script: Script | None = None, **gateway: Any
) -> tuple[RedisServer, Node, Node]:
    """A Redis (AOF, fsync always) and two gateways on it."""
    server = start_redis(test, appendonly=True)
    return (
        server,
        await node(test, server, script, **gateway),
        await node(test, server, script, **gateway),
    )


async def chat(
    test: TestCase, at: Node, body: dict[str, Any], token: str = TOKEN
) -> tuple[int, Any, dict[str, str]]:
    """POST /v1/chat/completions: the status, the JSON body (or SSE text), some headers."""
    response = await http_client(test).post(
        at.url + "/v1/chat/completions",
        data=json.dumps({"model": "openclaw", **body}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    raw = await response.content()
    kept = {
        name: (response.headers.getRawHeaders(name) or [""])[0]
        for name in ("retry-after", "content-type")
    }
    if kept["content-type"].startswith("text/event-stream"):
        return response.code, raw, kept
    return response.code, json.loads(raw), kept
