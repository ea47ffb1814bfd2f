"""``POST /tools/invoke``: auth, the body gate, policy, OpenClaw's HTTP deny list, results."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from .memory import gateway_config, make_gateway, post

PATH = "/tools/invoke"


class ToolsInvokeTests(SynchronousTestCase):
    def serve(self, tools: dict[str, Any] | None = None, beta: Any = None) -> None:
        self.workspace = os.path.abspath(self.mktemp())
        os.makedirs(self.workspace)
        with open(os.path.join(self.workspace, "notes.txt"), "w") as f:
            f.write("line one\nline two\n")
        data = gateway_config(self.mktemp())
        data["agents"]["defaults"]["workspace"] = self.workspace
        if beta is not None:
            data["agents"]["list"][1]["tools"] = beta
        if tools is not None:
            data["tools"] = tools
        self.gateway = make_gateway(self.mktemp(), data=data, reactor=MemoryReactorClock())

    def call(self, body: Any, **kwargs: Any) -> tuple[int, Any]:
        r = post(self.gateway, body, path=PATH, **kwargs)
        return r.status, r.json()

    def test_runs_a_tool(self) -> None:
        self.serve({})
        code, body = self.call({"tool": "read", "args": {"path": "notes.txt"}})
        self.assertEqual(code, 200, body)
        self.assertIs(body["ok"], True)
        self.assertIn("line two", body["result"]["content"])
        self.assertIs(body["result"]["isError"], False)
        code, body = self.call({"tool": "ls", "dryRun": True, "sessionKey": "main"})
        self.assertEqual((code, body["result"]["dryRun"]), (200, True))

    def test_bad_requests(self) -> None:
        self.serve({})
        for body in ({}, {"tool": ""}, {"tool": 3}, {"args": {}}):
            code, got = self.call(body)
            self.assertEqual(code, 400, body)
            self.assertEqual(
                got,
                {
                    "ok": False,
                    "error": {"type": "invalid_request", "message": got["error"]["message"]},
                },
            )
        self.assertEqual(self.call({})[1]["error"]["message"], "tools.invoke requires body.tool")
        self.assertEqual(self.call({"tool": "read", "args": []})[0], 400)
        # A call the tool refuses (a path out of the workspace) is a tool_error.
        code, got = self.call({"tool": "read", "args": {"path": "../../etc/passwd"}})
        self.assertEqual((code, got["error"]["type"]), (400, "tool_error"))
        self.assertIn("outside the agent's workspace", got["error"]["message"])

    def test_unknown_and_denied(self) -> None:
        self.serve({"deny": ["write"], "exec": {"security": "full"}})
        code, got = self.call({"tool": "teleport"})
        self.assertEqual((code, got["error"]["type"]), (404, "not_found"))
        self.assertEqual(got["error"]["message"], "Tool not available: teleport")
        code, got = self.call({"tool": "write", "args": {"path": "x", "content": "y"}})
        self.assertEqual((code, got["error"]["type"]), (403, "forbidden"))
        self.assertIn("policy denies it", got["error"]["message"])
        self.assertFalse(os.path.exists(os.path.join(self.workspace, "x")))
        # exec is on for agents, but never over HTTP (OpenClaw's default HTTP deny list).
        for name in ("exec", "bash", "sessions_spawn", "gateway"):
            code, got = self.call({"tool": name, "args": {"command": "touch pwned"}})
            self.assertEqual(code, 403, name)
            self.assertIn("over HTTP", got["error"]["message"])
        self.assertFalse(os.path.exists(os.path.join(self.workspace, "pwned")))

    def test_per_agent_policy_by_session_key(self) -> None:
        self.serve({}, beta={"deny": ["read"]})
        self.assertEqual(self.call({"tool": "read", "args": {"path": "notes.txt"}})[0], 200)
        key = {"sessionKey": "agent:beta:main"}
        code, got = self.call({"tool": "read", "args": {"path": "notes.txt"}, **key})
        self.assertEqual(code, 403, got)
        self.assertIn("agent 'beta'", got["error"]["message"])

    def test_no_tools_section(self) -> None:
        self.serve(None)
        code, got = self.call({"tool": "read", "args": {"path": "notes.txt"}})
        self.assertEqual(code, 403)
        self.assertIn("no `tools` section", got["error"]["message"])

    def test_auth_method_and_size(self) -> None:
        self.serve({})
        r = post(self.gateway, {"tool": "read"}, path=PATH, token=None)
        self.assertEqual(r.status, 401)
        r = post(self.gateway, {"tool": "read"}, path=PATH, token="wrong")
        self.assertEqual(r.status, 401)
        r = post(self.gateway, None, path=PATH, method="GET")
        self.assertEqual(r.status, 405)
        big = b'{"tool": "read", "args": {"x": "' + b"a" * (2 * 1024 * 1024) + b'"}}'
        r = post(self.gateway, None, path=PATH, raw=big)
        self.assertEqual(r.status, 413)
        r = post(
            self.gateway, None, path=PATH, raw=b"tool=read", headers={"Content-Type": "text/plain"}
        )
        self.assertEqual(r.status, 415)
