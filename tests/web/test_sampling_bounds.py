"""Token limits and seeds a provider cannot take are refused with ``param``, over a socket."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from openclaw_twisted.testing import ScriptedProvider

from ..support import listen
from .memory import TOKEN, gateway_config, make_gateway
from .test_browser_guard import exchange


class SamplingBoundsTests(TestCase):
    async def post(self, url: str, extra: dict[str, Any]) -> Any:
        body = {"messages": [{"role": "user", "content": "hi"}], **extra}
        # Written by hand: json.dumps would turn 1e300 into 1e+300 (same number, but this is
        # the text a client sent in the issue).
        data = json.dumps(body).encode().replace(b'"__1e300__"', b"1e300")
        head = [
            "POST /v1/chat/completions HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {TOKEN}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        return await exchange(self, url, head, data)

    async def test_out_of_range_integers_are_400_with_param(self) -> None:
        provider = ScriptedProvider(clock=reactor)
        gateway = make_gateway(self.mktemp(), provider, gateway_config("x"), reactor=reactor)
        url = await listen(self, gateway)
        refused = [
            ("max_tokens", "__1e300__"),
            ("max_tokens", 2**64),
            ("max_tokens", 2**31),
            ("max_completion_tokens", 2**31),
            ("seed", -(2**70)),
            ("seed", 2**63),
            ("seed", -(2**63) - 1),
        ]
        for name, value in refused:
            r = await self.post(url, {name: value})
            self.assertEqual(r.status, 400, (name, value))
            error = r.json()["error"]
            self.assertEqual((error["param"], error["code"]), (name, "invalid_value"))
            self.assertIn(f"`{name}` must be an integer between", error["message"])
        self.assertEqual(provider.requests, [])
        # The edges of the ranges are passed on.
        r = await self.post(url, {"max_tokens": 2**31 - 1, "seed": -(2**63)})
        self.assertEqual(r.status, 200)
        r = await self.post(url, {"max_completion_tokens": 1, "seed": 2**63 - 1})
        self.assertEqual(r.status, 200)
        sampling = [(q.sampling.max_tokens, q.sampling.seed) for q in provider.requests]
        self.assertEqual(sampling, [(2**31 - 1, -(2**63)), (1, 2**63 - 1)])
