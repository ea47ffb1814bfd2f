"""The official ``openai`` SDK (sync and async) against a gateway on a loopback port."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

import openai
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, load_config
from openclaw_twisted.providers.interface import ProviderError, Usage
from openclaw_twisted.testing import Script, ScriptedProvider

from ..support import REPO, listen
from .memory import TOKEN, gateway_config, make_gateway

T = TypeVar("T")
HI = [{"role": "user", "content": "hi"}]


class OpenAISDKTests(TestCase):
    async def serve(self, script: Any = None, data: dict[str, Any] | None = None) -> str:
        self.provider = ScriptedProvider(script or Script(), clock=reactor)
        gateway = make_gateway(self.mktemp(), self.provider, data, reactor=reactor)
        return await listen(self, gateway) + "/v1"

    async def sync(self, base_url: str, call: Callable[[openai.OpenAI], T], **kw: Any) -> T:
        """``call(client)`` in a thread: the sync client must not block the reactor."""

        def run() -> T:
            with openai.OpenAI(
                base_url=base_url, api_key=kw.pop("key", TOKEN), max_retries=0, **kw
            ) as client:
                return call(client)

        return await deferToThread(run)

    async def in_asyncio(self, base_url: str, call: Callable[[openai.AsyncOpenAI], Any]) -> Any:
        """``await call(client)`` on an asyncio loop in a thread."""

        async def main() -> Any:
            async with openai.AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as c:
                return await call(c)

        return await deferToThread(asyncio.run, main())

    async def test_sync_non_streaming(self) -> None:
        url = await self.serve()
        completion = await self.sync(
            url, lambda c: c.chat.completions.create(model="openclaw", messages=HI)
        )
        self.assertEqual(completion.choices[0].message.content, "Hello from the script.")
        self.assertEqual(completion.choices[0].finish_reason, "stop")
        self.assertEqual(completion.model, "openclaw")
        assert completion.usage is not None
        self.assertEqual(completion.usage.total_tokens, 11)

    async def test_sync_streaming(self) -> None:
        url = await self.serve()

        def call(c: openai.OpenAI) -> list[Any]:
            stream = c.chat.completions.create(
                model="openclaw/beta",
                messages=HI,
                stream=True,
                stream_options={"include_usage": True},
            )
            return list(stream)

        chunks = await self.sync(url, call)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        self.assertEqual(text, "Hello from the script.")
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")
        self.assertEqual(chunks[-1].usage.completion_tokens, 4)
        self.assertEqual(self.provider.requests[0].model, "model-b")

    async def test_async_non_streaming_and_streaming(self) -> None:
        url = await self.serve(Script(deltas=("one", " two"), usage=Usage(3, 2)))

        async def call(c: openai.AsyncOpenAI) -> tuple[str, str]:
            done = await c.chat.completions.create(model="openclaw", messages=HI)
            stream = await c.chat.completions.create(model="openclaw", messages=HI, stream=True)
            pieces = [ch.choices[0].delta.content or "" async for ch in stream]
            return done.choices[0].message.content or "", "".join(pieces)

        self.assertEqual(await self.in_asyncio(url, call), ("one two", "one two"))

    async def test_models(self) -> None:
        url = await self.serve()
        ids = await self.sync(url, lambda c: [m.id for m in c.models.list()])
        self.assertEqual(ids, ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"])
        model = await self.sync(url, lambda c: c.models.retrieve("openclaw/beta"))
        self.assertEqual(model.owned_by, "openclaw")
        with self.assertRaises(openai.NotFoundError):
            await self.sync(url, lambda c: c.models.retrieve("gpt-4o"))

    async def test_401_is_authentication_error(self) -> None:
        url = await self.serve()
        with self.assertRaises(openai.AuthenticationError) as caught:
            await self.sync(
                url,
                lambda c: c.chat.completions.create(model="openclaw", messages=HI),
                key="wrong",
            )
        self.assertEqual(caught.exception.status_code, 401)
        self.assertEqual(self.provider.requests, [])

    async def test_400_is_bad_request_error(self) -> None:
        url = await self.serve()
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sync(url, lambda c: c.chat.completions.create(model="gpt-4o", messages=HI))
        self.assertEqual(caught.exception.code, "invalid_model")
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sync(
                url,
                lambda c: c.chat.completions.create(model="openclaw", messages=HI, temperature=3),
            )
        self.assertEqual(caught.exception.param, "temperature")

    async def test_429_is_rate_limit_error(self) -> None:
        refuse = ProviderError("rate_limited", "slow down", status=429, retry_after="1")
        url = await self.serve(Script(refuse=refuse))
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sync(url, lambda c: c.chat.completions.create(model="openclaw", messages=HI))
        self.assertEqual(caught.exception.code, "upstream_rate_limited")
        self.assertEqual(caught.exception.response.headers["retry-after"], "1")

    async def test_auth_lockout_is_rate_limit_error(self) -> None:
        data = gateway_config("x")
        data["gateway"]["auth"]["rateLimit"] = {"maxAttempts": 1, "exemptLoopback": False}
        url = await self.serve(data=data)
        with self.assertRaises(openai.AuthenticationError):
            await self.sync(url, lambda c: c.models.list(), key="wrong")
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sync(url, lambda c: c.models.list())
        self.assertEqual(caught.exception.response.headers["retry-after"], "300")

    async def test_mid_stream_error_raises_api_error(self) -> None:
        error = ProviderError("upstream_error", "the model fell over")
        url = await self.serve(Script(deltas=("a", "b", "c"), fail=error, fail_after=2))
        received: list[str] = []

        def call(c: openai.OpenAI) -> None:
            for chunk in c.chat.completions.create(model="openclaw", messages=HI, stream=True):
                received.append(chunk.choices[0].delta.content or "")

        with self.assertRaises(openai.APIError) as caught:
            await self.sync(url, call)
        self.assertNotIsInstance(caught.exception, openai.APIStatusError)
        self.assertEqual(caught.exception.message, "Model provider error: the model fell over")
        self.assertEqual(received, ["", "a", "b"])


class ReadmeSDKExampleTests(TestCase):
    async def test_readme_openai_example_streams(self) -> None:
        with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        m = re.search(r"<!-- openai-example -->\n```python\n(.*?)```", readme, re.S)
        assert m is not None, "README lost its openai SDK example"
        code = m.group(1)
        self.assertIn('base_url="http://127.0.0.1:18789/v1", api_key="YOUR_TOKEN"', code)
        self.assertIn('model="openclaw"', code)
        config = load_config(
            os.path.join(REPO, "examples", "openclaw.json5"), {"OPENCLAW_STATE_DIR": self.mktemp()}
        )
        url = await listen(self, Gateway(config, reactor))
        code = code.replace("http://127.0.0.1:18789", url)
        printed: list[str] = []

        def fake_print(*args: Any, end: str = "\n", **kw: Any) -> None:
            printed.append(" ".join(map(str, args)) + end)

        await deferToThread(exec, compile(code, "README.md", "exec"), {"print": fake_print})
        self.assertEqual("".join(printed), "hello from the openai SDK\n")
        self.assertGreater(len(printed), 3)  # it streamed, piece by piece
