"""The file tools on a real temp dir: read, write, edit, ls, find; their caps and errors."""

from __future__ import annotations

import os

from openclaw_twisted.tools import FindTool, LsTool, ReadTool, ToolRegistry

from ._helpers import WorkspaceCase


class ReadTests(WorkspaceCase):
    def test_whole_file(self) -> None:
        self.put("notes.md", "one\ntwo\nthree\n")
        result = self.ok("read", path="notes.md")
        self.assertEqual(result.content, "one\ntwo\nthree\n")
        self.assertEqual(result.details["endLine"], 3)
        self.assertFalse(result.details["truncated"])

    def test_offset_and_limit_page_through(self) -> None:
        self.put("n.txt", "".join(f"line {i}\n" for i in range(1, 11)))
        result = self.ok("read", path="n.txt", offset=4, limit=3)
        self.assertTrue(result.content.startswith("line 4\nline 5\nline 6\n"))
        self.assertIn("showing lines 4-6", result.content)
        self.assertIn("continue with offset=7", result.content)
        tail = self.ok("read", path="n.txt", offset=9)
        self.assertEqual(tail.content, "line 9\nline 10\n")

    def test_file_path_alias(self) -> None:
        self.put("a.txt", "a\n")
        self.assertEqual(self.ok("read", file_path="a.txt").content, "a\n")

    def test_byte_cap_pages_big_files(self) -> None:
        self.registry = ToolRegistry([ReadTool(max_bytes=100)])
        self.put("big.txt", "".join(f"{i:09d}\n" for i in range(1000)))  # 10 KB
        result = self.ok("read", path="big.txt")
        body = result.content.split("\n\n[")[0]
        self.assertLessEqual(len(body.encode()), 100)
        self.assertEqual(body.splitlines(), [f"{i:09d}" for i in range(10)])
        self.assertIn("continue with offset=11", result.content)

    def test_one_huge_line_is_cut_not_loaded(self) -> None:
        self.registry = ToolRegistry([ReadTool(max_bytes=64)])
        self.put("min.js", "x" * 100_000 + "\nsecond\n")
        result = self.ok("read", path="min.js")
        self.assertIn("[line 1 cut at 64 bytes]", result.content)
        self.assertIn("continue with offset=2", result.content)
        self.assertEqual(self.ok("read", path="min.js", offset=2).content, "second\n")

    def test_line_limit_is_capped(self) -> None:
        message = self.refused("read", path="x", limit=5000)
        self.assertIn("'limit' must be between 1 and 2000", message)

    def test_errors(self) -> None:
        self.put("bin.dat", b"\x89PNG\x00\x00\x01")
        self.put("d/x.txt", "x")
        self.put("short.txt", "a\nb\n")
        self.assertIn("binary file", self.refused("read", path="bin.dat"))
        self.assertIn("'nope.txt' does not exist", self.refused("read", path="nope.txt"))
        self.assertIn("is a directory", self.refused("read", path="d"))
        self.assertIn("past the end", self.refused("read", path="short.txt", offset=10))
        self.assertIn("'path' is required", self.refused("read"))
        self.assertIn("unknown argument 'lines'", self.refused("read", path="a", lines=3))
        self.assertIn("'offset' must be a whole number", self.refused("read", path="a", offset="x"))


class WriteTests(WorkspaceCase):
    def test_creates_parents_and_overwrites(self) -> None:
        result = self.ok("write", path="deep/er/new.txt", content="hello\n")
        self.assertEqual(self.text("deep/er/new.txt"), "hello\n")
        self.assertEqual(result.details, {"path": "deep/er/new.txt", "bytes": 6})
        self.ok("write", path="deep/er/new.txt", content="bye")
        self.assertEqual(self.text("deep/er/new.txt"), "bye")

    def test_empty_content_is_allowed_missing_is_not(self) -> None:
        self.ok("write", path="empty.txt", content="")
        self.assertEqual(self.text("empty.txt"), "")
        self.assertIn("'content' is required", self.refused("write", path="x.txt"))

    def test_workspace_itself_and_directories_refused(self) -> None:
        os.makedirs(os.path.join(self.ws, "d"))
        self.assertIn("the workspace itself", self.refused("write", path=".", content="x"))
        self.assertIn("is a directory", self.refused("write", path="d", content="x"))


class EditTests(WorkspaceCase):
    def test_replaces_the_unique_occurrence(self) -> None:
        self.put("app.py", "def f():\n    return 1\n")
        result = self.ok("edit", path="app.py", oldText="return 1", newText="return 2")
        self.assertEqual(self.text("app.py"), "def f():\n    return 2\n")
        self.assertEqual(result.details["firstChangedLine"], 2)

    def test_claude_style_aliases(self) -> None:
        self.put("a.txt", "old")
        self.ok("edit", file_path="a.txt", old_string="old", new_string="new")
        self.assertEqual(self.text("a.txt"), "new")

    def test_missing_old_text_is_an_error_and_the_file_is_unchanged(self) -> None:
        self.put("a.txt", "alpha beta\n")
        message = self.refused("edit", path="a.txt", oldText="gamma", newText="x")
        self.assertIn("could not find the exact text in a.txt", message)
        self.assertEqual(self.text("a.txt"), "alpha beta\n")

    def test_ambiguous_old_text_is_an_error_and_the_file_is_unchanged(self) -> None:
        self.put("a.txt", "x = 1\nx = 1\nx = 1\n")
        message = self.refused("edit", path="a.txt", oldText="x = 1", newText="x = 2")
        self.assertIn("found 3 occurrences", message)
        self.assertIn("must be unique", message)
        self.assertEqual(self.text("a.txt"), "x = 1\nx = 1\nx = 1\n")

    def test_whitespace_must_match_exactly(self) -> None:
        self.put("a.py", "    indented\n")
        message = self.refused("edit", path="a.py", oldText="indented  ", newText="x")
        self.assertIn("could not find", message)
        self.assertEqual(self.text("a.py"), "    indented\n")

    def test_other_errors(self) -> None:
        self.put("a.txt", "same")
        self.put("latin1.txt", b"caf\xe9")
        self.assertIn(
            "oldText is empty", self.refused("edit", path="a.txt", oldText="", newText="x")
        )
        self.assertIn(
            "are the same", self.refused("edit", path="a.txt", oldText="same", newText="same")
        )
        self.assertIn(
            "does not exist", self.refused("edit", path="no.txt", oldText="a", newText="b")
        )
        self.assertIn(
            "not UTF-8", self.refused("edit", path="latin1.txt", oldText="caf", newText="x")
        )


class LsTests(WorkspaceCase):
    def test_lists_sorted_with_directories_marked(self) -> None:
        self.put("b.txt", "")
        self.put("A.md", "")
        self.put("sub/x", "")
        result = self.ok("ls")
        self.assertEqual(result.content.splitlines(), ["A.md", "b.txt", "sub/"])
        self.assertEqual(self.ok("ls", path="sub").content, "x")

    def test_limit_and_empty(self) -> None:
        self.registry = ToolRegistry([LsTool(max_entries=3)])
        for i in range(5):
            self.put(f"f{i}", "")
        result = self.ok("ls")
        self.assertEqual(result.content.splitlines()[:3], ["f0", "f1", "f2"])
        self.assertIn("2 more entries not shown", result.content)
        os.makedirs(os.path.join(self.ws, "empty"))
        self.assertEqual(self.ok("ls", path="empty").content, "(empty directory)")

    def test_missing_and_file(self) -> None:
        self.put("f.txt", "")
        self.assertIn("does not exist", self.refused("ls", path="nope"))
        self.assertIn("not a directory", self.refused("ls", path="f.txt"))


class FindTests(WorkspaceCase):
    def setUp(self) -> None:
        super().setUp()
        for rel in ["README.md", "src/app.py", "src/pkg/util.py", "docs/guide.md", "x.pyc"]:
            self.put(rel, "")

    def test_name_glob_anywhere(self) -> None:
        result = self.ok("find", pattern="*.py")
        self.assertEqual(result.content.splitlines(), ["src/app.py", "src/pkg/util.py"])

    def test_path_glob_with_double_star(self) -> None:
        self.assertEqual(
            self.ok("find", pattern="src/**/*.py").content.splitlines(),
            ["src/app.py", "src/pkg/util.py"],
        )
        self.assertEqual(self.ok("find", pattern="src/*.py").content, "src/app.py")

    def test_under_a_directory_paths_stay_workspace_relative(self) -> None:
        self.assertEqual(self.ok("find", pattern="*.md", path="docs").content, "docs/guide.md")

    def test_bounded(self) -> None:
        for i in range(20):
            self.put(f"many/f{i:02d}.log", "")
        self.registry = ToolRegistry([FindTool(max_results=5)])
        result = self.ok("find", pattern="*.log")
        self.assertEqual(len(result.content.split("\n\n")[0].splitlines()), 5)
        self.assertIn("more matches not shown", result.content)
        self.registry = ToolRegistry([FindTool(max_visited=4)])
        self.assertIn("search stopped after 4 entries", self.ok("find", pattern="*.log").content)

    def test_no_match_and_errors(self) -> None:
        self.assertEqual(self.ok("find", pattern="*.rs").content, "no matches under .")
        self.assertIn("pattern is empty", self.refused("find", pattern=" "))
        self.assertIn("not a directory", self.refused("find", pattern="*", path="README.md"))
