"""The registry: OpenAI tool specs, lookup errors, argument parsing, errors as results, cancel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from openclaw_twisted.tools import (
    ITool,
    ToolContext,
    ToolRegistry,
    ToolResult,
    UnknownToolError,
    fs_tools,
)
from openclaw_twisted.tools.runtime import ExecTool


@implementer(ITool)
@attrs.frozen
class Waits:
    """A tool that finishes when its clock says so, and notes when it was cancelled."""

    cancelled: list[bool] = attrs.field(factory=list)
    name = "waits"
    description = "Waits a second."
    parameters = {"type": "object", "properties": {}}

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        d: Deferred[ToolResult] = Deferred(lambda _: self.cancelled.append(True))
        context.clock.callLater(1, lambda: d.called or d.callback(ToolResult("done")))
        return d


@implementer(ITool)
class Async:
    name = "async_one"
    description = "An async def tool."
    parameters = {"type": "object", "properties": {"x": {"type": "integer"}}}

    async def invoke(self, args: Mapping[str, Any], context: ToolContext) -> ToolResult:
        await deferLater(context.clock, 1, lambda: None)  # type: ignore[arg-type]
        return ToolResult(f"x={args['x']}")


@implementer(ITool)
class Broken:
    name = "broken"
    description = "Has a bug."
    parameters = {"type": "object", "properties": {}}

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        raise KeyError("oops")


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.context = ToolContext(workspace=self.mktemp(), clock=self.clock)

    def test_builtins_provide_the_interface(self) -> None:
        for tool in (*fs_tools(), ExecTool()):
            self.assertTrue(verifyObject(ITool, tool))

    def test_specs_are_openai_function_tools(self) -> None:
        specs = ToolRegistry(fs_tools()).specs()
        self.assertEqual(
            [s["function"]["name"] for s in specs], ["read", "write", "edit", "ls", "find"]
        )
        read = specs[0]
        self.assertEqual(read["type"], "function")
        self.assertEqual(set(read["function"]), {"name", "description", "parameters"})
        params = read["function"]["parameters"]
        self.assertEqual(params["type"], "object")
        self.assertEqual(params["required"], ["path"])
        self.assertEqual(set(params["properties"]), {"path", "offset", "limit"})

    def test_lookup_error_names_the_tools_there_are(self) -> None:
        registry = ToolRegistry(fs_tools())
        with self.assertRaises(UnknownToolError) as e:
            registry.get("exec")
        self.assertEqual(
            str(e.exception),
            "unknown tool 'exec'; the tools available are: read, write, edit, ls, find",
        )
        self.assertNotIn("exec", registry)
        result = self.successResultOf(registry.invoke("exec", {}, self.context))
        self.assertTrue(result.is_error)
        self.assertIn("unknown tool 'exec'", result.content)

    def test_registration_checks(self) -> None:
        registry = ToolRegistry(fs_tools())
        with self.assertRaises(ValueError) as e:
            registry.register(fs_tools()[0])
        self.assertIn("already registered", str(e.exception))
        bad = Broken()
        bad.name = "has space"  # type: ignore[misc]
        self.assertRaises(ValueError, registry.register, bad)
        self.assertRaises(TypeError, registry.register, object())  # type: ignore[arg-type]

    def test_json_text_arguments(self) -> None:
        registry = ToolRegistry([Async()])
        d = registry.invoke("async_one", '{"x": 7}', self.context)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d).content, "x=7")
        bad = self.successResultOf(registry.invoke("async_one", "{x: 7", self.context))
        self.assertTrue(bad.is_error)
        self.assertIn("async_one: the arguments are not valid JSON", bad.content)
        array = self.successResultOf(registry.invoke("async_one", "[1]", self.context))
        self.assertIn("must be a JSON object", array.content)

    def test_a_tool_bug_is_an_error_result_and_logged(self) -> None:
        result = self.successResultOf(ToolRegistry([Broken()]).invoke("broken", {}, self.context))
        self.assertEqual(
            result, ToolResult.error("broken: the tool failed unexpectedly; see the gateway log")
        )
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_cancelling_the_deferred_cancels_the_tool(self) -> None:
        tool = Waits()
        d = ToolRegistry([tool]).invoke("waits", {}, self.context)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(tool.cancelled, [True])

    def test_the_runs_cancellation_hook_cancels_every_call(self) -> None:
        tool = Waits()
        registry = ToolRegistry([tool])
        calls = [registry.invoke("waits", {}, self.context) for _ in range(3)]
        self.context.cancellation.cancel()
        for d in calls:
            self.failureResultOf(d, CancelledError)
        self.assertEqual(tool.cancelled, [True, True, True])
        # A call started after the run was cancelled is cancelled at once.
        late = registry.invoke("waits", {}, self.context)
        self.failureResultOf(late, CancelledError)

    def test_a_finished_call_unsubscribes_from_the_hook(self) -> None:
        tool = Waits()
        d = ToolRegistry([tool]).invoke("waits", {}, self.context)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d).content, "done")
        # The run's hook keeps no reference to finished calls (long runs make many).
        self.assertEqual(self.context.cancellation._callbacks, [])
