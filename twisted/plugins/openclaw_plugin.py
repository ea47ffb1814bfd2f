"""twistd plugin: ``twistd -n openclaw``."""

from twisted.application.service import ServiceMaker

openclaw = ServiceMaker(
    "OpenClaw Gateway",
    "openclaw_twisted.tap",
    "OpenAI-compatible chat completions and the Gateway WebSocket protocol on one port.",
    "openclaw",
)
