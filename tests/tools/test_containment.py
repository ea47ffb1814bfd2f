"""Paths that lead out of the workspace are refused by every tool: ../, absolute, links, NUL."""

from __future__ import annotations

import os

from ._helpers import WorkspaceCase


class TraversalTests(WorkspaceCase):
    def test_dotdot_refused_by_every_file_tool(self) -> None:
        for name, args in [
            ("read", {"path": "../secret.txt"}),
            ("write", {"path": "../secret.txt", "content": "pwned"}),
            ("edit", {"path": "../secret.txt", "oldText": "TOP", "newText": "NOT"}),
            ("ls", {"path": ".."}),
            ("find", {"pattern": "*.txt", "path": ".."}),
            ("read", {"path": "sub/../../secret.txt"}),
        ]:
            message = self.refused(name, **args)
            self.assertIn("outside the agent's workspace", message, name)
        with open(self.secret) as f:
            self.assertEqual(f.read(), "TOP SECRET\n")

    def test_absolute_path_outside_refused_inside_allowed(self) -> None:
        self.assertIn("outside", self.refused("read", path=self.secret))
        self.assertIn("outside", self.refused("read", path="/etc/passwd"))
        self.assertIn("outside", self.refused("write", path=self.secret, content="x"))
        self.assertIn("outside", self.refused("ls", path="/"))
        self.put("notes.txt", "inside\n")
        result = self.ok("read", path=os.path.join(self.ws, "notes.txt"))
        self.assertEqual(result.content, "inside\n")

    def test_symlinked_file_pointing_out_refused(self) -> None:
        os.symlink(self.secret, os.path.join(self.ws, "leak.txt"))
        self.assertIn("outside", self.refused("read", path="leak.txt"))
        self.assertIn("outside", self.refused("write", path="leak.txt", content="pwned"))
        self.assertIn("outside", self.refused("edit", path="leak.txt", oldText="T", newText="N"))
        with open(self.secret) as f:
            self.assertEqual(f.read(), "TOP SECRET\n")

    def test_symlinked_directory_pointing_out_refused(self) -> None:
        os.symlink(self.outside, os.path.join(self.ws, "up"))
        self.assertIn("outside", self.refused("read", path="up/secret.txt"))
        self.assertIn("outside", self.refused("ls", path="up"))
        self.assertIn("outside", self.refused("find", pattern="*", path="up"))
        # A file that does not exist yet, under a linked parent: resolved through the parent.
        self.assertIn("outside", self.refused("write", path="up/new/planted.txt", content="x"))
        self.assertFalse(os.path.exists(os.path.join(self.outside, "new")))

    def test_dangling_symlink_pointing_out_refused_for_write(self) -> None:
        target = os.path.join(self.outside, "planted.txt")
        os.symlink(target, os.path.join(self.ws, "trap.txt"))
        self.assertIn("outside", self.refused("write", path="trap.txt", content="x"))
        self.assertFalse(os.path.lexists(target))

    def test_find_does_not_walk_into_a_link_out(self) -> None:
        os.symlink(self.outside, os.path.join(self.ws, "up"))
        self.put("mine.txt", "x")
        result = self.ok("find", pattern="*.txt")
        self.assertEqual(result.content.splitlines(), ["mine.txt"])

    def test_nul_byte_refused(self) -> None:
        for name, args in [
            ("read", {"path": "a\x00b"}),
            ("write", {"path": "a\x00b", "content": "x"}),
            ("ls", {"path": "\x00"}),
        ]:
            self.assertIn("NUL byte", self.refused(name, **args), name)

    def test_symlink_inside_the_workspace_is_fine(self) -> None:
        self.put("real/data.txt", "data\n")
        os.symlink(os.path.join(self.ws, "real"), os.path.join(self.ws, "alias"))
        self.assertEqual(self.ok("read", path="alias/data.txt").content, "data\n")

    def test_workspace_reached_through_a_symlink(self) -> None:
        """A workspace configured as a link works; containment is checked on real paths."""
        link = os.path.join(self.outside, "ws-link")
        os.symlink(self.ws, link)
        self.context = type(self.context)(workspace=link, clock=self.clock)
        self.put("a.txt", "a\n")
        self.assertEqual(self.ok("read", path="a.txt").content, "a\n")
        self.assertIn("outside", self.refused("read", path="../secret.txt"))

    def test_sibling_with_the_workspace_as_prefix_refused(self) -> None:
        """``ws-other`` starts with ``ws``: containment is by path part, not by string prefix."""
        os.makedirs(self.ws + "-other")
        with open(os.path.join(self.ws + "-other", "x.txt"), "w") as f:
            f.write("other\n")
        self.assertIn("outside", self.refused("read", path="../ws-other/x.txt"))
