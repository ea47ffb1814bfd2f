"""The workspace file tools: read, write, edit, ls, find (blocking work on the thread runner)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ._args import Args
from .interface import ITool, ToolContext, ToolError, ToolResult
from .paths import Resolved, display, inside, resolve

#: ``read`` returns at most this many lines, and this many bytes, per call.
READ_MAX_LINES = 2000
READ_MAX_BYTES = 50 * 1024
#: ``write`` and ``edit`` refuse to produce files bigger than this.
WRITE_MAX_BYTES = 10 * 1024 * 1024
LS_MAX_ENTRIES = 500
FIND_MAX_RESULTS = 1000
#: ``find`` stops walking after this many directory entries, however few matched.
FIND_MAX_VISITED = 100_000
#: A NUL in the first block read means binary; ``read`` refuses to dump it at the model.
_SNIFF_BYTES = 8192

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_PATH = {"type": "string", "description": "A path relative to the agent's workspace."}


def _os_error(tool: str, shown: str, e: OSError) -> ToolError:
    """An OS failure in words: what the model should do about it where it can do something."""
    if isinstance(e, FileNotFoundError):
        return ToolError(f"{tool}: {shown!r} does not exist")
    if isinstance(e, IsADirectoryError):
        return ToolError(f"{tool}: {shown!r} is a directory; use ls or find to look inside")
    if isinstance(e, NotADirectoryError):
        return ToolError(f"{tool}: a part of {shown!r} is a file, not a directory")
    if isinstance(e, PermissionError):
        return ToolError(f"{tool}: permission denied for {shown!r}")
    if e.errno == errno.ELOOP:
        return ToolError(f"{tool}: {shown!r} is a symbolic link that cannot be followed")
    return ToolError(f"{tool}: {shown!r} cannot be used: {e.strerror or e}")


def _open_read(r: Resolved) -> int:
    return os.open(r.real, os.O_RDONLY | _O_NOFOLLOW)


def _write_file(tool: str, r: Resolved, data: bytes) -> None:
    """Write ``data`` to the resolved path, creating its parent directories."""
    if r.real == r.root:
        raise ToolError(f"{tool}: the workspace itself is a directory; name a file inside it")
    try:
        os.makedirs(os.path.dirname(r.real), exist_ok=True)
        fd = os.open(r.real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError as e:
        raise _os_error(tool, r.shown, e) from None


@implementer(ITool)
@attrs.frozen
class ReadTool:
    """``read``: a text file's lines, from ``offset`` (1-based) for at most ``limit`` lines."""

    max_lines: int = READ_MAX_LINES
    max_bytes: int = READ_MAX_BYTES

    name = "read"
    description = (
        "Read a text file in the workspace. Long files come in pages: pass offset (the first "
        "line, 1-based) and limit (how many lines) to read further."
    )

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "path": _PATH,
                "offset": {"type": "integer", "minimum": 1, "description": "First line (1-based)."},
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_lines,
                    "description": f"How many lines (at most {self.max_lines}).",
                },
            },
            "required": ["path"],
        }

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        a = Args(self.name, args, {"path": ("file_path",), "offset": (), "limit": ()})
        path = a.string("path", required=True)
        offset = a.integer("offset", default=1, lo=1)
        limit = a.integer("limit", default=self.max_lines, lo=1, hi=self.max_lines)
        return context.run_in_thread(lambda: self._read(context.workspace, path, offset, limit))

    def _read(self, workspace: str, path: str, offset: int, limit: int) -> ToolResult:
        r = resolve(workspace, path, self.name)
        try:
            with os.fdopen(_open_read(r), "rb") as f:
                if b"\x00" in f.read(_SNIFF_BYTES):
                    size = os.fstat(f.fileno()).st_size
                    raise ToolError(f"read: {r.shown!r} is a binary file ({size} bytes)")
                f.seek(0)
                return self._page(f, r.shown, offset, limit)
        except OSError as e:
            raise _os_error(self.name, r.shown, e) from None

    def _page(self, f: BinaryIO, shown: str, offset: int, limit: int) -> ToolResult:
        lines: list[str] = []
        used = 0
        number = 0
        more = cut = False
        for raw, long in _lines(f, self.max_bytes):
            number += 1
            if number < offset:
                continue
            room = self.max_bytes - used
            if len(lines) == limit or (lines and len(raw) > room):
                more = True
                break
            line = raw[:room].decode("utf-8", errors="replace")
            if long or len(raw) > room:
                # One line longer than a whole page: its start, and say so.
                line = line.rstrip("\n") + f" [line {number} cut at {room} bytes]\n"
                cut = True
            lines.append(line)
            used += len(raw[:room])
        if not lines and number < offset and offset > 1:
            raise ToolError(f"read: offset {offset} is past the end of {shown!r} ({number} lines)")
        text = "".join(lines)
        end = offset + len(lines) - 1
        if more:
            text += (
                f"\n\n[{shown}: showing lines {offset}-{end}; more follows, "
                f"continue with offset={end + 1}]"
            )
        return ToolResult(
            text,
            details={"path": shown, "startLine": offset, "endLine": end, "truncated": more or cut},
        )


def _lines(f: BinaryIO, cap: int) -> Iterator[tuple[bytes, bool]]:
    """Each line's first ``cap`` bytes, and whether it was longer: memory stays bounded."""
    while chunk := f.readline(cap):
        long = len(chunk) == cap and not chunk.endswith(b"\n")
        if long:
            while (rest := f.readline(cap)) and not rest.endswith(b"\n"):
                pass
        yield chunk, long


@implementer(ITool)
@attrs.frozen
class WriteTool:
    """``write``: create or replace a file with ``content``, creating parent directories."""

    max_bytes: int = WRITE_MAX_BYTES

    name = "write"
    description = (
        "Create or overwrite a file in the workspace with the given content; "
        "missing parent directories are created."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "content": {"type": "string", "description": "The whole new content of the file."},
        },
        "required": ["path", "content"],
    }

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        a = Args(self.name, args, {"path": ("file_path",), "content": ()})
        path = a.string("path", required=True)
        data = a.string("content", required=True).encode()
        if len(data) > self.max_bytes:
            raise ToolError(f"write: the content is over the {self.max_bytes}-byte limit")

        def job() -> ToolResult:
            r = resolve(context.workspace, path, self.name)
            _write_file(self.name, r, data)
            return ToolResult(
                f"Wrote {len(data)} bytes to {r.shown}",
                details={"path": r.shown, "bytes": len(data)},
            )

        return context.run_in_thread(job)


@implementer(ITool)
@attrs.frozen
class EditTool:
    """``edit``: replace one exact, unique occurrence of ``oldText`` with ``newText``."""

    max_bytes: int = WRITE_MAX_BYTES

    name = "edit"
    description = (
        "Edit a text file in the workspace by replacing exact text: oldText must match the "
        "file exactly (whitespace and newlines included) and occur exactly once."
    )
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "oldText": {"type": "string", "description": "The exact text to replace."},
            "newText": {"type": "string", "description": "The text to put in its place."},
        },
        "required": ["path", "oldText", "newText"],
    }

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        # The Claude-style names are OpenClaw's accepted aliases.
        a = Args(
            self.name,
            args,
            {"path": ("file_path",), "oldText": ("old_string",), "newText": ("new_string",)},
        )
        path = a.string("path", required=True)
        old = a.string("oldText", required=True)
        new = a.string("newText", required=True)
        if not old:
            raise ToolError("edit: oldText is empty; give the exact text to replace")
        return context.run_in_thread(lambda: self._edit(context.workspace, path, old, new))

    def _edit(self, workspace: str, path: str, old: str, new: str) -> ToolResult:
        r = resolve(workspace, path, self.name)
        try:
            with os.fdopen(_open_read(r), "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as e:
            raise _os_error(self.name, r.shown, e) from None
        if len(data) > self.max_bytes:
            raise ToolError(f"edit: {r.shown!r} is over the {self.max_bytes}-byte limit")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"edit: {r.shown!r} is not UTF-8 text") from None
        count = text.count(old)
        if count == 0:
            raise ToolError(
                f"edit: could not find the exact text in {r.shown}; oldText must match "
                "exactly, including whitespace and newlines (read the file first)"
            )
        if count > 1:
            raise ToolError(
                f"edit: found {count} occurrences of the text in {r.shown}; oldText must be "
                "unique, so include more of the surrounding text"
            )
        if old == new:
            raise ToolError(f"edit: oldText and newText are the same; {r.shown} is unchanged")
        at = text.index(old)
        result = text[:at] + new + text[at + len(old) :]
        encoded = result.encode()
        if len(encoded) > self.max_bytes:
            raise ToolError(f"edit: the result would be over the {self.max_bytes}-byte limit")
        _write_file(self.name, r, encoded)
        line = text.count("\n", 0, at) + 1
        return ToolResult(
            f"Edited {r.shown}: replaced 1 occurrence at line {line}",
            details={"path": r.shown, "firstChangedLine": line},
        )


@implementer(ITool)
@attrs.frozen
class LsTool:
    """``ls``: a directory's entries, sorted, directories marked with a trailing ``/``."""

    max_entries: int = LS_MAX_ENTRIES

    name = "ls"
    description = (
        "List a directory in the workspace (default: the workspace itself); "
        "directories end with '/'."
    )

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "path": {**_PATH, "description": "A directory relative to the workspace."},
                "limit": {"type": "integer", "minimum": 1, "maximum": self.max_entries},
            },
        }

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        a = Args(self.name, args, {"path": (), "limit": ()})
        path = a.string("path", default=".") or "."
        limit = a.integer("limit", default=self.max_entries, lo=1, hi=self.max_entries)
        return context.run_in_thread(lambda: self._ls(context.workspace, path, limit))

    def _ls(self, workspace: str, path: str, limit: int) -> ToolResult:
        r = resolve(workspace, path, self.name)
        if os.path.isfile(r.real):
            raise ToolError(f"ls: {r.shown!r} is a file, not a directory; use read to see it")
        try:
            with os.scandir(r.real) as it:
                entries = sorted((e.name + ("/" if _is_dir(e) else "") for e in it), key=str.lower)
        except OSError as e:
            raise _os_error(self.name, r.shown, e) from None
        shown = entries[:limit]
        text = "\n".join(shown) if shown else "(empty directory)"
        if len(entries) > limit:
            text += f"\n\n[{len(entries) - limit} more entries not shown; raise limit]"
        return ToolResult(
            text,
            details={"path": r.shown, "count": len(entries), "truncated": len(entries) > limit},
        )


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A ``find`` glob as a regex: ``*`` and ``?`` stay in one path part, ``**`` crosses parts."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z", re.DOTALL)
    except re.error as e:
        raise ToolError(f"find: the pattern {pattern!r} is not a valid glob ({e})") from None


@implementer(ITool)
@attrs.frozen
class FindTool:
    """``find``: files matching a glob under a directory, as workspace-relative paths."""

    max_results: int = FIND_MAX_RESULTS
    max_visited: int = FIND_MAX_VISITED

    name = "find"
    description = (
        "Find files in the workspace by glob pattern: '*.py' matches file names anywhere below "
        "path, 'src/**/*.py' matches paths relative to it. Returns workspace-relative paths."
    )

    @property
    def parameters(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "description": "A glob: *, ?, [abc], **."},
                "path": {**_PATH, "description": "The directory to search (default: all)."},
                "limit": {"type": "integer", "minimum": 1, "maximum": self.max_results},
            },
            "required": ["pattern"],
        }

    def invoke(self, args: Mapping[str, Any], context: ToolContext) -> Deferred[ToolResult]:
        a = Args(self.name, args, {"pattern": (), "path": (), "limit": ()})
        pattern = a.string("pattern", required=True).strip()
        if not pattern or "\x00" in pattern:
            raise ToolError("find: the pattern is empty; give a glob such as '*.md'")
        path = a.string("path", default=".") or "."
        limit = a.integer("limit", default=self.max_results, lo=1, hi=self.max_results)
        regex = glob_regex(pattern.lstrip("/") if "/" in pattern else pattern)
        by_path = "/" in pattern
        return context.run_in_thread(
            lambda: self._find(context.workspace, path, regex, by_path, limit)
        )

    def _find(
        self, workspace: str, path: str, regex: re.Pattern[str], by_path: bool, limit: int
    ) -> ToolResult:
        r = resolve(workspace, path, self.name)
        if not os.path.isdir(r.real):
            raise ToolError(f"find: {r.shown!r} is not a directory")
        found: list[str] = []
        visited = 0
        stopped = False
        # followlinks=False: a link to a directory outside would otherwise be walked into.
        for top, dirs, files in os.walk(r.real, followlinks=False):
            if not inside(r.root, top):
                dirs[:] = []
                continue
            dirs.sort()
            for name, mark in [(f, "") for f in sorted(files)] + [(d, "/") for d in dirs]:
                visited += 1
                full = os.path.join(top, name)
                if regex.match(display(r.real, full) if by_path else name):
                    found.append(display(r.root, full) + mark)
                if len(found) > limit or visited >= self.max_visited:
                    stopped = True
                    break
            if stopped:
                break
        more = len(found) > limit
        found = found[:limit]
        text = "\n".join(found) if found else f"no matches under {r.shown}"
        if more:
            text += f"\n\n[more matches not shown; raise limit (at most {self.max_results})]"
        elif stopped:
            text += f"\n\n[search stopped after {self.max_visited} entries; narrow path]"
        return ToolResult(text, details={"count": len(found), "truncated": more or stopped})


def fs_tools() -> tuple[ITool, ...]:
    """The file tools with their default caps."""
    return (ReadTool(), WriteTool(), EditTool(), LsTool(), FindTool())
