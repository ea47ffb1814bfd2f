"""The README's embedding example, run as written (on a free port, without reactor.run())."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import TestCase

from openclaw_twisted.testing import parse_sse

from .support import REPO, http_client, track


def readme_example() -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    m = re.search(r"<!-- embed-example -->\n```python\n(.*?)```", readme, re.S)
    assert m is not None, "README lost its embedding example"
    return m.group(1)


class EmbeddingTests(TestCase):
    async def run_example(self) -> str:
        """Run the README example on a free port (cleaned up); its base URL."""
        code = readme_example()
        self.assertEqual(code.strip().splitlines()[-1], "reactor.run()")
        self.assertIn('"tcp:8080:interface=127.0.0.1"', code)
        code = code.replace("reactor.run()", "").replace("tcp:8080:", "tcp:0:")
        namespace: dict[str, object] = {}
        cwd = os.getcwd()
        os.chdir(REPO)  # the example names examples/openclaw.json5 relative to the checkout
        try:
            exec(compile(code, "README.md", "exec"), namespace)
        finally:
            os.chdir(cwd)
        port = await namespace["listening"]  # type: ignore[misc]
        track(self, port.factory, port)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def test_readme_example_serves_under_its_mount_point(self) -> None:
        url = await self.run_example()
        http = http_client(self)
        r = await http.get(url + "/openclaw/healthz")
        self.assertEqual(r.code, 200)
        self.assertEqual(await r.json(), {"ok": True, "status": "live"})
        r = await http.get(url + "/healthz")
        self.assertEqual(r.code, 404)  # only below the mount point
        await r.content()

    async def test_embedded_chat_completion(self) -> None:
        url = await self.run_example() + "/openclaw/v1/chat/completions"
        http = http_client(self)
        headers = {"Authorization": "Bearer YOUR_TOKEN"}
        body = {"model": "openclaw", "messages": [{"role": "user", "content": "embedded hi"}]}
        r = await http.post(url, json=body, headers=headers)
        self.assertEqual(r.code, 200)
        answer = await r.json()
        self.assertEqual(answer["choices"][0]["message"]["content"], "embedded hi")
        r = await http.post(url, json={**body, "stream": True}, headers=headers)
        self.assertEqual(
            r.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"]
        )
        events = parse_sse(await r.content())
        self.assertEqual(events[-1], "[DONE]")
        r = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
        self.assertEqual(r.code, 401)
        await r.content()
