"""The agent's own tools in the run loop: model → calls → the gateway runs them → model → answer."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from openclaw_twisted import ConfigError, Gateway, parse_config
from openclaw_twisted.agents.events import (
    RunEnded,
    RunEvent,
    RunFailed,
    RunRequest,
    ToolResult,
    ToolStarted,
    to_json,
)
from openclaw_twisted.agents.roster import Roster
from openclaw_twisted.agents.runner import AgentRunner
from openclaw_twisted.agents.store import MemorySessionStore
from openclaw_twisted.cli import agent_local
from openclaw_twisted.providers.interface import ModelRequest, ToolCall, ToolSpec
from openclaw_twisted.providers.registry import Providers
from openclaw_twisted.testing import (
    FakeToolCall,
    FakeUpstream,
    Received,
    Reply,
    Script,
    ScriptedProvider,
)
from openclaw_twisted.tools import ITool, ToolContext, ToolRegistry
from openclaw_twisted.tools import ToolResult as Outcome
from openclaw_twisted.tools.policy import ToolsConfig
from openclaw_twisted.tools.toolbox import Toolbox
from openclaw_twisted.ws.client import run_agent

from ..support import http_client, listen
from ..ws.helpers import TOKEN, open_session, until_end

SECRET = "the launch code is 0000"
NOTES = "The meeting moved to Thursday."
#: ``tools: {}``: the agent's tools on, with the default policy (exec off).
EMPTY: dict[str, Any] = {}


def last_tool_result(body: dict[str, Any]) -> str:
    """The content of the last ``role: tool`` message an OpenAI request carried."""
    return [m for m in body["messages"] if m["role"] == "tool"][-1]["content"]


def answer_from_the_file(received: Received) -> Reply:
    return Reply(deltas=["From the file: ", last_tool_result(received.json)])


class WorkspaceToolTests(TestCase):
    """A real gateway and a real model server on loopback; the agent's workspace on disk."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())

    async def serve(
        self, *replies: Any, tools: dict[str, Any] | None = EMPTY, max_rounds: int = 8
    ) -> str:
        root = self.root
        self.workspace = os.path.join(root, "workspace")
        os.makedirs(self.workspace)
        with open(os.path.join(self.workspace, "notes.txt"), "w") as f:
            f.write(NOTES + "\n")
        with open(os.path.join(root, "secret.txt"), "w") as f:
            f.write(SECRET + "\n")
        self.upstream = await FakeUpstream.start(reactor)
        self.addCleanup(self.upstream.stop)
        self.upstream.script(*replies)
        p = self.upstream.provider("fake", "openai-completions", models=["m"])
        data: dict[str, Any] = {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {
                "defaults": {
                    "model": "fake/m",
                    "workspace": self.workspace,
                    "maxToolRounds": max_rounds,
                },
                "list": [{"id": "main"}],
            },
            "models": {
                "providers": {"fake": {"baseUrl": p.base_url, "apiKey": p.api_key, "api": p.api}}
            },
        }
        if tools is not None:
            data["tools"] = tools
        self.data = data
        config = parse_config(data, {"OPENCLAW_STATE_DIR": os.path.join(root, "state")})
        self.gateway = Gateway(config, reactor)
        self.addCleanup(lambda: self.gateway.shutdown(0))
        self.url = await listen(self, self.gateway)
        self.http = http_client(self)
        return self.url

    async def chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        r = await self.http.post(
            self.url + "/v1/chat/completions",
            json={"model": "openclaw", **body},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        return r.code, json.loads(await r.content())

    async def test_reads_a_workspace_file_and_answers_from_it(self) -> None:
        read = FakeToolCall("read", '{"path": "notes.txt"}')
        await self.serve(Reply(deltas=[], tool_calls=[read]), answer_from_the_file)
        code, body = await self.chat({"messages": [{"role": "user", "content": "When?"}]})
        self.assertEqual(code, 200, body)
        message = body["choices"][0]["message"]
        # Only the final text: the client asked for no tools, so it sees none.
        self.assertEqual(message, {"role": "assistant", "content": f"From the file: {NOTES}\n"})
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")
        first, second = self.upstream.bodies
        offered = {t["function"]["name"] for t in first["tools"]}
        self.assertEqual(offered, {"read", "write", "edit", "ls", "find"})  # exec is off
        call = next(m for m in second["messages"] if m.get("tool_calls"))
        self.assertEqual(call["tool_calls"][0]["function"]["name"], "read")
        self.assertIn(NOTES, last_tool_result(second))
        # Both model calls are counted.
        self.assertEqual(body["usage"]["total_tokens"], 28)

    async def test_path_traversal_refused_through_the_loop(self) -> None:
        secret = os.path.join(self.root, "secret.txt")
        escapes = [
            FakeToolCall("read", '{"path": "../secret.txt"}'),
            FakeToolCall("read", json.dumps({"path": secret})),
            FakeToolCall("read", '{"path": "link.txt"}'),
        ]
        await self.serve(Reply(deltas=[], tool_calls=escapes), Reply(deltas=["Refused."]))
        os.symlink(secret, os.path.join(self.workspace, "link.txt"))
        session = await open_session(self, self.url.replace("http", "ws"))
        s = session.send("agent", {"message": "Read the secret.", "idempotencyKey": "t1"})
        accepted = await session.res(s)
        events = await until_end(session, accepted["payload"]["runId"])
        results = [e["payload"]["data"] for e in events if e["payload"]["stream"] == "tool"]
        self.assertEqual([r["phase"] for r in results], ["start"] * 3 + ["result"] * 3)
        for r in results[3:]:
            self.assertTrue(r["isError"], r)
            self.assertIn("outside the agent's workspace", r["result"])
        second = json.dumps(self.upstream.bodies[1])
        self.assertNotIn(SECRET, second)
        self.assertIn("outside the agent's workspace", second)

    async def test_ws_agent_events_show_the_tool_phases(self) -> None:
        read = FakeToolCall("read", '{"path": "notes.txt"}', id="call-1")
        await self.serve(Reply(deltas=["Let me look. "], tool_calls=[read]), answer_from_the_file)
        session = await open_session(self, self.url.replace("http", "ws"))
        s = session.send("agent", {"message": "When?", "idempotencyKey": "t2"})
        run_id = (await session.res(s))["payload"]["runId"]
        final = await session.res(s)
        self.assertEqual(
            final["payload"]["result"]["payloads"], [{"text": f"From the file: {NOTES}\n"}]
        )
        events = [e["payload"] for e in session.events if e["payload"]["runId"] == run_id]
        tool = [e["data"] for e in events if e["stream"] == "tool"]
        self.assertEqual(
            tool,
            [
                {"phase": "start", "name": "read", "toolCallId": "call-1", "args": read.text},
                {
                    "phase": "result",
                    "name": "read",
                    "toolCallId": "call-1",
                    "isError": False,
                    "result": tool[1]["result"],
                },
            ],
        )
        self.assertIn(NOTES, tool[1]["result"])
        # The transcript keeps the whole loop: the question, the call, its result, the answer.
        records = await self.gateway.store.transcript("main", "agent:main:main")
        roles = [(r["role"], r.get("stopReason")) for r in records]
        self.assertEqual(
            roles,
            [("user", None), ("assistant", "tool_calls"), ("tool", None), ("assistant", "stop")],
        )

    async def test_cli_prints_a_note_per_tool_call(self) -> None:
        """Both CLI paths: in process (``--local``) and through the gateway over WebSocket."""
        read = FakeToolCall("read", '{"path": "notes.txt"}')
        await self.serve(*[Reply(deltas=[], tool_calls=[read]), answer_from_the_file] * 2)
        path = os.path.join(self.root, "openclaw.json")
        with open(path, "w") as f:
            json.dump(self.data, f)
        environ = {"OPENCLAW_STATE_DIR": os.path.join(self.root, "cli-state")}
        options = {"config": path, "message": "When?", "session-key": None, "agent": None}
        for remote in (False, True):
            out, err = io.StringIO(), io.StringIO()
            if remote:
                url = self.url.replace("http", "ws")
                code = await run_agent(
                    reactor, {**options, "url": url, "token": TOKEN}, out, err, environ
                )
            else:
                code = await agent_local(reactor, options, out, err, environ)  # type: ignore[arg-type]
            self.assertEqual(code, 0, err.getvalue())
            self.assertEqual(out.getvalue(), f"From the file: {NOTES}\n\n")
            self.assertEqual(err.getvalue(), '[tool] read {"path": "notes.txt"}\n')

    async def test_mixed_client_and_agent_calls(self) -> None:
        """A client call ends the run with tool_calls; the agent's call in it ran here."""
        calls = [
            FakeToolCall("read", '{"path": "notes.txt"}'),
            FakeToolCall("get_weather", '{"city": "Oslo"}'),
        ]
        await self.serve(Reply(deltas=[], tool_calls=calls))
        weather = {"type": "function", "function": {"name": "get_weather"}}
        code, body = await self.chat(
            {"messages": [{"role": "user", "content": "q"}], "tools": [weather]}
        )
        self.assertEqual(code, 200, body)
        choice = body["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(
            [c["function"]["name"] for c in choice["message"]["tool_calls"]], ["get_weather"]
        )
        self.assertEqual(len(self.upstream.requests), 1)
        names = {t["function"]["name"] for t in self.upstream.bodies[0]["tools"]}
        self.assertEqual(names, {"get_weather", "read", "write", "edit", "ls", "find"})

    async def test_max_tool_rounds(self) -> None:
        read = Reply(deltas=[], tool_calls=[FakeToolCall("ls", "{}")])
        await self.serve(read, read, read, max_rounds=2)
        code, body = await self.chat({"messages": [{"role": "user", "content": "q"}]})
        self.assertEqual(code, 502, body)
        self.assertEqual(body["error"]["code"], "tool_rounds")
        self.assertIn("after 2 rounds", body["error"]["message"])
        choices = [b.get("tool_choice") for b in self.upstream.bodies]
        self.assertEqual(choices, [None, None, "none"])

    async def test_no_tools_section_no_agent_tools(self) -> None:
        """Without a ``tools`` section the model is asked exactly as before tools existed."""
        await self.serve(Reply(), tools=None)
        code, _ = await self.chat({"messages": [{"role": "user", "content": "q"}]})
        self.assertEqual(code, 200)
        self.assertNotIn("tools", self.upstream.bodies[0])


@implementer(ITool)
@attrs.define
class Gate:
    """A tool that answers when the test says so; records its calls and cancels."""

    name: str
    description: str = "waits"
    parameters: dict[str, Any] = attrs.Factory(lambda: {"type": "object"})
    calls: list[Deferred[Outcome]] = attrs.Factory(list)
    cancelled: int = 0

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[Outcome]:
        def cancel(d: Deferred[Outcome]) -> None:
            self.cancelled += 1

        d: Deferred[Outcome] = Deferred(cancel)
        self.calls.append(d)
        return d


class _Box(Toolbox):
    def __init__(self, registry: ToolRegistry, clock: Clock) -> None:
        super().__init__(ToolsConfig(configured=True), clock)
        self._registry = registry

    def registry(self, agent_id: str) -> ToolRegistry:
        return self._registry

    def specs(self, agent_id: str) -> tuple[ToolSpec, ...]:
        return tuple(ToolSpec(t.name, t.description, t.parameters) for t in self._registry)


class LoopUnitTests(SynchronousTestCase):
    """The loop on a Clock: calls run concurrently, and are cancelled with the run."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.a, self.b = Gate("a"), Gate("b")
        calls = (ToolCall("c1", "a", "{}"), ToolCall("c2", "b", "{}"))

        def script(request: ModelRequest) -> Script:
            called = any(m.role == "tool" for m in request.messages)
            return Script(deltas=("done",)) if called else Script(deltas=(), tool_calls=calls)

        self.provider = ScriptedProvider(script, clock=self.clock)
        config = parse_config(
            {"agents": {"defaults": {"model": "scripted/m", "timeoutSeconds": 30}}},
            {"OPENCLAW_STATE_DIR": self.mktemp()},
        )
        self.runner = AgentRunner(
            Roster.from_config(config),
            Providers.of([self.provider]),
            MemorySessionStore(),
            self.clock,
            toolbox=_Box(ToolRegistry([self.a, self.b]), self.clock),
        )
        self.events: list[RunEvent] = []
        self.runner.listeners.append(lambda run, e: self.events.append(e))

    def test_parallel_calls_run_concurrently(self) -> None:
        run = self.runner.start(RunRequest("main", "k", "go"))
        self.assertEqual((len(self.a.calls), len(self.b.calls)), (1, 1))
        self.b.calls[0].callback(Outcome("B"))
        self.assertIsNone(run.result)
        self.a.calls[0].callback(Outcome("A", is_error=True))
        result = self.successResultOf(run.wait())
        self.assertEqual((result.text, result.stop_reason), ("done", "stop"))
        kinds = [type(e).__name__ for e in self.events if isinstance(e, ToolStarted | ToolResult)]
        self.assertEqual(kinds, ["ToolStarted", "ToolStarted", "ToolResult", "ToolResult"])
        # Results reach the model in the order of the calls, whatever order they ended in.
        results = [m.tool_result for m in self.provider.requests[1].messages if m.tool_result]
        self.assertEqual(
            [(r.tool_call_id, r.content, r.is_error) for r in results if r],
            [("c1", "A", True), ("c2", "B", False)],
        )
        self.assertIsInstance(self.events[-1], RunEnded)

    def test_cancel_and_timeout_reach_the_tools(self) -> None:
        run = self.runner.start(RunRequest("main", "k", "go"))
        run.cancel()
        self.assertEqual((self.a.cancelled, self.b.cancelled), (1, 1))
        result = self.successResultOf(run.wait())
        self.assertEqual(result.stop_reason, "aborted")
        self.assertEqual(len(self.provider.requests), 1)

        run = self.runner.start(RunRequest("main", "k2", "go"))
        self.clock.advance(30)
        self.assertEqual((self.a.cancelled, self.b.cancelled), (2, 2))
        result = self.successResultOf(run.wait())
        assert result.error is not None
        self.assertEqual(result.error.kind, "agent_timeout")
        self.assertIsInstance(self.events[-1], RunFailed)
        self.assertEqual(to_json(self.events[-1])["data"]["error"]["kind"], "agent_timeout")


class ToolConfigTests(SynchronousTestCase):
    def test_tools_keys_are_read_and_checked(self) -> None:
        config = parse_config(
            {
                "tools": {"deny": ["write"], "exec": {"security": "full"}},
                "agents": {
                    "defaults": {"maxToolRounds": 3},
                    "list": [{"id": "ops", "tools": {"allow": ["read"]}}],
                },
            },
            {},
        )
        self.assertEqual(config.tools.deny, ("write",))
        self.assertTrue(config.tools.configured)
        self.assertEqual(config.tools.agents["ops"].allow, ("read",))
        self.assertEqual(config.agent_defaults.max_tool_rounds, 3)
        for data, prefix in (
            ({"tools": {"deny": "write"}}, "tools.deny:"),
            ({"agents": {"list": [{"id": "a", "tools": []}]}}, "agents.list[0].tools:"),
            ({"agents": {"defaults": {"maxToolRounds": 0}}}, "agents.defaults.maxToolRounds:"),
        ):
            with self.assertRaises(ConfigError) as e:
                parse_config(data, {})
            self.assertTrue(str(e.exception).startswith(prefix), str(e.exception))
