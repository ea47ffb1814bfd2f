"""``openclaw_twisted.testing.memory_gateway``: the README's example, streaming, sessions."""

from __future__ import annotations

import os
import re

from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.testing import (
    Script,
    ScriptedProvider,
    memory_gateway,
    parse_sse,
)

from .support import REPO

URL = "http://127.0.0.1/v1/chat/completions"


def readme_example() -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    m = re.search(r"<!-- testing-example -->\n```python\n(.*?)```", readme, re.S)
    assert m is not None, "README lost its testing example"
    return m.group(1)


class MemoryGatewayTests(SynchronousTestCase):
    def test_the_readme_example_passes(self) -> None:
        namespace: dict[str, object] = {}
        exec(compile(readme_example(), "README.md", "exec"), namespace)
        case = namespace["EchoTests"]("test_echo")  # type: ignore[operator]
        result = TestResult()
        case.run(result)
        self.assertEqual((result.errors, result.failures), ([], []))
        self.assertEqual(result.successes, 1)

    def test_streams_a_scripted_answer_and_keeps_the_session_in_memory(self) -> None:
        config = {
            "gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "agents": {"defaults": {"model": "scripted/m"}},
        }
        provider = ScriptedProvider(Script(deltas=("a", "b")))
        m = memory_gateway(config, providers=[provider])
        body = {
            "model": "openclaw",
            "stream": True,
            "user": "Ann",
            "messages": [{"role": "user", "content": "hi"}],
        }
        d = m.http.post(URL, json=body, headers=m.headers)
        m.http.flush()
        response = self.successResultOf(d)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"]
        )
        events = parse_sse(self.successResultOf(response.content()))
        self.assertEqual(events[-1], "[DONE]")
        deltas = [e["choices"][0]["delta"].get("content") for e in events[1:-2]]
        self.assertEqual(deltas, ["a", "b"])
        records = self.successResultOf(m.store.transcript("main", "agent:main:openai-user:ann"))
        self.assertEqual([r["text"] for r in records], ["hi", "ab"])

    def test_a_wrong_token_is_refused(self) -> None:
        m = memory_gateway()
        self.assertEqual(m.token, "test-token")
        d = m.http.post(URL, json={}, headers={"Authorization": "Bearer nope"})
        m.http.flush()
        self.assertEqual(self.successResultOf(d).code, 401)

    def test_auth_none_sends_no_header(self) -> None:
        m = memory_gateway({"gateway": {"auth": {"mode": "none"}}})
        self.assertEqual((m.token, m.headers), (None, {}))
        d = m.http.get("http://127.0.0.1/readyz")
        m.http.flush()
        self.assertEqual(self.successResultOf(self.successResultOf(d).json()), {"ready": True})
