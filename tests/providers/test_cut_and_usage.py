"""Cut streams and missing usage through the whole gateway: HTTP, the openai SDK, WS, disk."""

from __future__ import annotations

import json
from typing import Any

import openai
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.providers.interface import Usage
from openclaw_twisted.testing import FakeUpstream, Reply, parse_sse

from ..support import http_client, listen
from ..web.memory import TOKEN
from ..ws.helpers import open_session

APIS = ("openai-completions", "anthropic-messages")
HI = [{"role": "user", "content": "hi"}]
#: Ends cleanly, without a finish reason or the end marker (a server stopped by SIGTERM).
CUT = {"omit_finish": True, "omit_end": True}


class GatewayTests(TestCase):
    timeout = 20

    async def start(self, api: str, *replies: Reply, fallback: bool = False) -> None:
        self.upstream = await FakeUpstream.start(reactor)
        self.addCleanup(self.upstream.stop)
        self.upstream.script(*replies)
        model: Any = {"primary": "fake/m", "fallbacks": ["fake/spare"]} if fallback else "fake/m"
        data = self.upstream.gateway_config(
            api,  # type: ignore[arg-type]
            ["m", "spare"],
            agents={"defaults": {"model": model}},
        )
        gateway = Gateway(parse_config(data, {"OPENCLAW_STATE_DIR": self.mktemp()}), reactor)
        self.gateway = gateway
        self.addCleanup(lambda: Deferred.fromCoroutine(gateway.shutdown(0)))
        self.base = await listen(self, self.gateway)
        self.http = http_client(self)

    async def post(self, **body: Any) -> tuple[int, Any]:
        r = await self.http.post(
            self.base + "/v1/chat/completions",
            json={"model": "openclaw", "messages": HI, **body},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        content = await r.content()
        ctype = (r.headers.getRawHeaders("content-type") or [""])[0]
        return r.code, parse_sse(content) if "event-stream" in ctype else json.loads(content)

    async def last_record(self, user: str) -> dict[str, Any]:
        records = await self.gateway.store.transcript("main", f"agent:main:openai-user:{user}")
        return records[-1]

    async def test_cut_before_the_first_token(self) -> None:
        """A 502 upstream_unavailable (not a 200 with an empty "stop"), streaming or not."""
        for api in APIS:
            # Asked for whole, the answer is cut while it is being sent.
            await self.start(api, Reply(deltas=(), **CUT), Reply(cut_after=0))
            for stream, when in ((True, "before answering"), (False, "mid-answer")):
                status, body = await self.post(stream=stream)
                self.assertEqual((status, body["error"]["code"]), (502, "upstream_unavailable"))
                self.assertEqual(
                    body["error"]["message"],
                    "Model provider unavailable: model provider 'fake' closed the connection "
                    + when,
                )

    async def test_cut_before_the_first_token_runs_the_fallback(self) -> None:
        for api in APIS:
            await self.start(api, Reply(deltas=(), **CUT), Reply(deltas=("spare",)), fallback=True)
            status, events = await self.post(stream=True)
            self.assertEqual(status, 200)
            text = "".join(
                e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
            )
            self.assertEqual(text, "spare")
            self.assertEqual([r.json["model"] for r in self.upstream.requests], ["m", "spare"])

    async def test_cut_after_tokens(self) -> None:
        """The error frame and [DONE]; the transcript keeps the partial text as an error."""
        for api in APIS:
            await self.start(api, Reply(deltas=("Half", " an"), **CUT))
            status, events = await self.post(stream=True, user="zoe")
            self.assertEqual(status, 200)
            chunks = [e for e in events if isinstance(e, dict) and "choices" in e]
            got = [c["choices"][0]["delta"].get("content") for c in chunks[1:]]
            self.assertEqual(got, ["Half", " an"])
            self.assertNotIn("stop", [c["choices"][0]["finish_reason"] for c in chunks])
            self.assertEqual(events[-1], "[DONE]")
            error = events[-2]["error"]
            self.assertEqual(error["code"], "upstream_unavailable")
            self.assertEqual(
                error["message"],
                "Model provider unavailable: model provider 'fake' closed the connection "
                "mid-answer",
            )
            record = await self.last_record("zoe")
            self.assertEqual((record["text"], record["stopReason"]), ("Half an", "error"))

    async def test_bare_done_is_no_stop(self) -> None:
        """[DONE] without a finish reason: an error frame, not finish_reason "stop"."""
        await self.start("openai-completions", Reply(deltas=("Half",), omit_finish=True))
        status, events = await self.post(stream=True, user="zoe")
        self.assertEqual(status, 200)
        self.assertEqual(events[-2]["error"]["code"], "upstream_error")
        self.assertIn("no finish reason", events[-2]["error"]["message"])
        self.assertEqual((await self.last_record("zoe"))["stopReason"], "error")

    async def test_no_usage_is_null_everywhere(self) -> None:
        """An upstream that reports no usage: null in answers and transcripts, never 0/0/0."""
        for api in APIS:
            await self.start(api, *[Reply(usage=Usage())] * 2)
            status, body = await self.post(user="zoe")
            self.assertEqual(status, 200)
            self.assertIsNone(body["usage"])
            self.assertIsNone((await self.last_record("zoe"))["usage"])
            status, events = await self.post(stream=True, stream_options={"include_usage": True})
            self.assertEqual(events[-2]["choices"], [])
            self.assertIsNone(events[-2]["usage"])

    async def test_usage_on_the_finish_chunk_reaches_the_client(self) -> None:
        await self.start(
            "openai-completions", *[Reply(usage=Usage(9, 2), usage_in_finish=True)] * 2
        )
        status, events = await self.post(stream=True, stream_options={"include_usage": True})
        self.assertEqual(status, 200)
        self.assertEqual(
            events[-2]["usage"], {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
        )
        _, body = await self.post()
        self.assertEqual(body["usage"]["total_tokens"], 11)

    async def test_non_streaming_asks_for_the_whole_answer(self) -> None:
        for api in APIS:
            await self.start(api, Reply(deltas=("Hel", "lo"), usage=Usage(5, 2)))
            status, body = await self.post()
            self.assertEqual(status, 200)
            self.assertEqual(body["choices"][0]["message"]["content"], "Hello")
            self.assertEqual(body["usage"]["total_tokens"], 7)
            sent = self.upstream.requests[0]
            self.assertIs(sent.json["stream"], False)
            self.assertNotIn("stream_options", sent.json)

    async def test_openai_sdk_reads_null_usage(self) -> None:
        await self.start("openai-completions", *[Reply(deltas=("Hi",), usage=Usage())] * 2)

        def call() -> tuple[Any, list[Any]]:
            with openai.OpenAI(base_url=self.base + "/v1", api_key=TOKEN, max_retries=0) as c:
                whole = c.chat.completions.create(model="openclaw", messages=HI)  # type: ignore[arg-type]
                chunks = list(
                    c.chat.completions.create(
                        model="openclaw",
                        messages=HI,  # type: ignore[arg-type]
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
                return whole, chunks

        whole, chunks = await deferToThread(call)
        self.assertEqual(whole.choices[0].message.content, "Hi")
        self.assertIsNone(whole.usage)
        self.assertEqual(chunks[-1].choices, [])
        self.assertIsNone(chunks[-1].usage)

    async def test_ws_meta_usage_is_null(self) -> None:
        await self.start("openai-completions", Reply(deltas=("Hi",), usage=Usage()))
        s = await open_session(self, self.base)
        req = s.send("agent", {"message": "hi"})
        self.assertTrue((await s.res(req))["ok"])
        final = await s.res(req)
        self.assertTrue(final["ok"], final)
        meta = final["payload"]["result"]["meta"]
        self.assertEqual(meta["stopReason"], "stop")
        self.assertIsNone(meta["usage"])
        # WS runs show the answer as it is written: still streamed upstream.
        self.assertIs(self.upstream.requests[0].json["stream"], True)
