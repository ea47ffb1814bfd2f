"""What the config and the packages that read a part of it share: its error, the id rule."""

from __future__ import annotations

import re


class ConfigError(Exception):
    """The config cannot be used; the message names the key and the problem, on one line."""


def normalize_agent_id(raw: str) -> str:
    """OpenClaw's agent id rule: lowercase, other runs to ``-``, trimmed, <= 64, else ``main``."""
    s = re.sub(r"[^a-z0-9_-]+", "-", raw.strip().lower()).strip("-")[:64].strip("-")
    return s or "main"
