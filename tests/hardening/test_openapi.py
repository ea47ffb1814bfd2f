"""The OpenAPI document: shipped, served without auth, complete, and schemathesis agrees with it."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from openclaw_twisted import Gateway, parse_config
from openclaw_twisted.web.app import GatewayHTTP, openapi_document

from ..support import REPO, child_env, http_client, listen
from ..web.memory import TOKEN, MemoryClient, make_gateway
from .support import LogCapture

#: Examples per operation in CI (about 500 requests, 2-3 s); see the README for longer runs.
SCHEMATHESIS_EXAMPLES = int(os.environ.get("OPENCLAW_SCHEMATHESIS_EXAMPLES", "10"))


class DocumentTests(SynchronousTestCase):
    def test_served_without_auth(self) -> None:
        reactor = MemoryReactorClock()
        gateway = make_gateway(self.mktemp(), reactor=reactor)
        client = MemoryClient(gateway)
        client.request("GET", "/openapi.json", token=None)
        r = client.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-type"), "application/json; charset=utf-8")
        self.assertEqual(r.header("x-content-type-options"), "nosniff")
        self.assertEqual(r.body, openapi_document())
        self.assertEqual(r.json()["openapi"], "3.1.0")

    def test_every_route_is_documented(self) -> None:
        doc = json.loads(openapi_document())
        rules = {
            rule.rule.replace("<path:model_id>", "{model_id}").replace("<path:key>", "{key}")
            for rule in GatewayHTTP.app.url_map.iter_rules()
        }
        self.assertEqual(rules, set(doc["paths"]))

    def test_shipped_as_package_data(self) -> None:
        with open(os.path.join(REPO, "setup.cfg")) as f:
            self.assertIn("openapi.json", f.read())


class SchemathesisTests(TestCase):
    timeout = 120

    async def test_live_gateway_passes_every_check(self) -> None:
        if importlib.util.find_spec("schemathesis") is None:
            raise SkipTest("schemathesis is not installed (pip install -e '.[test]')")
        state = os.path.abspath(self.mktemp())
        config = parse_config(
            {
                "gateway": {
                    "auth": {"mode": "token", "token": TOKEN},
                    "http": {
                        "endpoints": {
                            "chatCompletions": {"enabled": True},
                            "responses": {"enabled": True},
                        }
                    },
                    "metrics": {"enabled": True},
                }
            },
            {"OPENCLAW_STATE_DIR": state},
        )
        gateway = Gateway(config, reactor)  # the built-in echo model answers
        self.addCleanup(lambda: Deferred.fromCoroutine(gateway.shutdown(0)))
        logs = LogCapture().install(self)
        url = await listen(self, gateway)
        # The session the document's example key names, so the session routes are reached.
        http = http_client(self)
        seeded = await http.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "x-openclaw-session-key": "agent:main:main",
            },
        )
        self.assertEqual(seeded.code, 200)
        await seeded.content()
        work = os.path.abspath(self.mktemp())  # schemathesis keeps its caches in the cwd
        os.makedirs(work)
        args = [
            "-m",
            "schemathesis.cli",
            "run",
            f"{url}/openapi.json",
            "--url",
            url,
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            str(SCHEMATHESIS_EXAMPLES),
            "--generation-deterministic",
            "--no-color",
        ]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, args, env=child_env(state), path=work
        )
        report = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, report[-5000:])
        self.assertIn("No issues found", report)
        self.assertEqual(logs.failures(), [])
