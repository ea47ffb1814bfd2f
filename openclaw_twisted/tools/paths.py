"""Workspace containment: a tool's path argument resolved, or refused if it leaves the workspace."""

from __future__ import annotations

import os

import attrs

from .interface import ToolError


@attrs.frozen
class Resolved:
    """A path argument after resolution: the workspace's real root and the real target."""

    root: str
    real: str

    @property
    def shown(self) -> str:
        """How to name it to the model: relative to the workspace, with ``/``."""
        return display(self.root, self.real)


def resolve(workspace: str, path: str, tool: str) -> Resolved:
    """Resolve ``path`` against the workspace, refusing anything that ends up outside it.

    Blocking (``realpath`` touches the disk): call it from the thread runner. Relative paths
    are taken from the workspace; absolute ones must point into it. Symlinks are resolved,
    including those in the parents of a file that does not exist yet, and the result must
    still be inside the workspace, so neither ``../`` nor a link can lead out. Callers act on
    ``real`` (never on ``path`` again), so what was checked is what is used; they open it
    with ``O_NOFOLLOW`` so a link swapped in afterwards is not followed either.
    """
    if "\x00" in path:
        raise ToolError(f"{tool}: the path contains a NUL byte")
    if not path.strip():
        raise ToolError(f"{tool}: the path is empty; give a path relative to the workspace")
    root = os.path.realpath(workspace)
    real = os.path.realpath(os.path.join(root, path))
    if not inside(root, real):
        raise ToolError(
            f"{tool}: {path!r} is outside the agent's workspace; "
            "give a path inside the workspace (relative to it)"
        )
    return Resolved(root, real)


def inside(root: str, real: str) -> bool:
    """Whether the real path ``real`` is ``root`` or below it."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def display(root: str, real: str) -> str:
    """A path inside the workspace as the model should see it: relative, with ``/``."""
    return os.path.relpath(real, root).replace(os.sep, "/")
