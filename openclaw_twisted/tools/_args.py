"""Reading a tool call's arguments: each problem named, in words a model can act on."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .interface import ToolError


def parse_arguments(raw: str | Mapping[str, Any] | None, tool: str) -> dict[str, Any]:
    """The arguments object, from a mapping or OpenAI's JSON-text ``function.arguments``."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise ToolError(f"{tool}: the arguments are not valid JSON ({e})") from None
    if not isinstance(raw, Mapping):
        raise ToolError(f"{tool}: the arguments must be a JSON object")
    return dict(raw)


class Args:
    """Typed reads of one call's arguments, accepting OpenClaw's aliases for a name.

    Unknown arguments are refused with the list of known ones, so a model that guessed a
    name learns the right one instead of having its intent silently dropped.
    """

    def __init__(
        self, tool: str, args: Mapping[str, Any], known: Mapping[str, tuple[str, ...]]
    ) -> None:
        self.tool = tool
        self.args = args
        self._names = {alias: name for name, aliases in known.items() for alias in aliases}
        self._names.update({name: name for name in known})
        unknown = sorted(k for k in args if k not in self._names)
        if unknown:
            raise ToolError(
                f"{tool}: unknown argument {', '.join(map(repr, unknown))}; "
                f"the arguments are {', '.join(known)}"
            )

    def _raw(self, name: str) -> Any:
        for key, canonical in self._names.items():
            if canonical == name and self.args.get(key) is not None:
                return self.args[key]
        return None

    def string(self, name: str, *, required: bool = False, default: str = "") -> str:
        value = self._raw(name)
        if value is None:
            if required:
                raise ToolError(f"{self.tool}: the argument {name!r} is required")
            return default
        if not isinstance(value, str):
            raise ToolError(f"{self.tool}: {name!r} must be a string")
        return value

    def integer(self, name: str, *, default: int, lo: int = 0, hi: int | None = None) -> int:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ToolError(f"{self.tool}: {name!r} must be a whole number")
        n = int(value)
        if n < lo or (hi is not None and n > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ToolError(f"{self.tool}: {name!r} must be {bound}, got {n}")
        return n

    def number(self, name: str, *, lo: float) -> float | None:
        value = self._raw(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= lo:
            raise ToolError(f"{self.tool}: {name!r} must be a number above {lo:g}")
        return float(value)
