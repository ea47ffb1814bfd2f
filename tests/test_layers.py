"""The package's import graph: no cycle, and nothing below the composition root names it."""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

import openclaw_twisted

PACKAGE = "openclaw_twisted"
ROOT = os.path.dirname(openclaw_twisted.__file__)
#: The composition root, and what builds it (the package's front door, the entry points).
ABOVE_THE_ROOT = frozenset(
    {
        PACKAGE,
        f"{PACKAGE}.gateway",
        f"{PACKAGE}.tap",
        f"{PACKAGE}.cli",
        f"{PACKAGE}.testing",
        # ``--workers``: the supervisor (it starts gateways), and a worker process's main.
        f"{PACKAGE}.workers",
        f"{PACKAGE}.worker",
    }
)


def above_the_root(name: str) -> bool:
    """Whether ``name`` may build a gateway: the root, its builders, the testing package."""
    return name in ABOVE_THE_ROOT or name.startswith(f"{PACKAGE}.testing.")


def modules() -> dict[str, str]:
    """Every module of the package, by dotted name, with its file."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([PACKAGE, *parts])] = path
    return found


def imports(name: str, path: str, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere (also in functions, under TYPE_CHECKING)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.split(".")[0] != PACKAGE:
                continue
            # ``from . import methods`` imports a module; ``from .. import x`` an attribute.
            subs = {f"{module}.{a.name}" for a in node.names} & known
            out.update(subs or {module})
    out.discard(name)
    return out & known


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


class LayerTests(SynchronousTestCase):
    def test_nothing_below_the_root_imports_the_gateway(self) -> None:
        offenders = sorted(
            name
            for name, deps in graph().items()
            if not above_the_root(name) and (f"{PACKAGE}.gateway" in deps or PACKAGE in deps)
        )
        self.assertEqual(offenders, [])

    def test_the_import_graph_has_no_cycle(self) -> None:
        deps = graph()
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        cycles: list[list[str]] = []

        def visit(name: str, path: list[str]) -> None:
            state[name] = 1
            for dep in sorted(deps[name]):
                if state.get(dep) == 1:
                    cycles.append([*path[path.index(dep) :], dep])
                elif dep not in state:
                    visit(dep, [*path, dep])
            state[name] = 2

        for name in sorted(deps):
            if name not in state:
                visit(name, [name])
        self.assertEqual(cycles, [])
