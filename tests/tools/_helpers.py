"""Shared helpers for the tool tests: a workspace on disk and a synchronous tool context."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from openclaw_twisted.tools import ToolContext, ToolRegistry, ToolResult, fs_tools


class WorkspaceCase(SynchronousTestCase):
    """A real temp dir: ``outside`` holds a secret, ``ws`` (inside it) is the workspace."""

    def setUp(self) -> None:
        self.outside = os.path.realpath(self.mktemp())
        os.makedirs(self.outside)
        self.secret = os.path.join(self.outside, "secret.txt")
        with open(self.secret, "w") as f:
            f.write("TOP SECRET\n")
        self.ws = os.path.join(self.outside, "ws")
        os.makedirs(self.ws)
        self.clock = Clock()
        self.context = ToolContext(workspace=self.ws, clock=self.clock)
        self.registry = ToolRegistry(fs_tools())

    def put(self, rel: str, content: str | bytes) -> str:
        path = os.path.join(self.ws, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        return path

    def text(self, rel: str) -> str:
        with open(os.path.join(self.ws, rel)) as f:
            return f.read()

    def call(self, name: str, **args: Any) -> ToolResult:
        return self.successResultOf(self.registry.invoke(name, args, self.context))

    def ok(self, name: str, **args: Any) -> ToolResult:
        result = self.call(name, **args)
        self.assertFalse(result.is_error, result.content)
        return result

    def refused(self, name: str, **args: Any) -> str:
        result = self.call(name, **args)
        self.assertTrue(result.is_error, result.content)
        self.assertNotIn("TOP SECRET", result.content)
        return result.content
