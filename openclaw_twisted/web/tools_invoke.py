"""``POST /tools/invoke``: one of an agent's own tools, run directly (as OpenClaw has it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from ..agents.roster import RouteError
from ..agents.store import session_key_error
from ..tools.interface import Cancellation
from ..tools.policy import normalize_tool_name
from .chat import InvalidRequest, decode_body
from .errors import json_body

if TYPE_CHECKING:
    from ..edge import Edge

#: OpenClaw's default deny list for tools over HTTP (its ``DEFAULT_GATEWAY_HTTP_TOOL_DENY``):
#: command execution, host file mutation, session orchestration and control-plane tools,
#: whatever the agent's own policy says.  Only ``exec`` of these exists here today.
HTTP_DENY = frozenset(
    {
        "exec",
        "spawn",
        "shell",
        "fs_write",
        "fs_delete",
        "fs_move",
        "apply_patch",
        "terminal",
        "portal",
        "sessions_spawn",
        "sessions_send",
        "conversations_list",
        "conversations_send",
        "conversations_turn",
        "cron",
        "automations",
        "gateway",
        "plugins",
        "nodes",
        "computer",
        "mobile_ui",
        "openclaw",
    }
)
#: Every tool this gateway has (whether or not an agent's policy lets it use one).
KNOWN_TOOLS = frozenset({"read", "write", "edit", "ls", "find", "exec"})
MAX_BODY_BYTES = 2 * 1024 * 1024


def _error(request: IRequest, status: int, type_: str, message: str) -> bytes:
    return json_body(request, status, {"ok": False, "error": {"type": type_, "message": message}})


class ToolsInvoke:
    """The endpoint of one gateway: auth and the body gate come first (``web/app.py``)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    async def invoke(self, request: IRequest) -> bytes:
        content: Any = request.content
        content.seek(0)
        try:
            body = decode_body(content.read())
        except InvalidRequest as e:
            return _error(request, 400, "invalid_request", e.message)
        tool = body.get("tool")
        if not isinstance(tool, str) or not tool.strip():
            return _error(request, 400, "invalid_request", "tools.invoke requires body.tool")
        args = body.get("args")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return _error(request, 400, "invalid_request", "`args` must be an object.")
        action = body.get("action")
        if action is not None and not isinstance(action, str):
            return _error(request, 400, "invalid_request", "`action` must be a string.")
        dry_run = body.get("dryRun")
        if dry_run is not None and not isinstance(dry_run, bool):
            return _error(request, 400, "invalid_request", "`dryRun` must be a boolean.")
        key = body.get("sessionKey")
        if key is not None and not isinstance(key, str):
            return _error(request, 400, "invalid_request", "`sessionKey` must be a string.")
        if key is not None and (problem := session_key_error(key, "sessionKey")):
            return _error(request, 400, "invalid_request", problem)
        try:
            # "main" (or none): the default agent's main session, as OpenClaw reads it.
            route = self.edge.roster.route(
                "tools", session_key=None if key in (None, "main") else key
            )
        except RouteError as e:
            return _error(request, 400, "invalid_request", e.message)

        name = normalize_tool_name(tool)
        if name in HTTP_DENY:
            return _error(
                request,
                403,
                "forbidden",
                f"Tool '{name}' cannot be invoked over HTTP (the gateway's default deny list).",
            )
        toolbox = self.edge.runner.toolbox
        registry = toolbox.registry(route.agent_id) if toolbox is not None else None
        if registry is None or name not in registry:
            if name in KNOWN_TOOLS:
                why = (
                    "its tool policy denies it"
                    if registry is not None and len(registry)
                    else "it has no tools (the config has no `tools` section)"
                )
                return _error(
                    request,
                    403,
                    "forbidden",
                    f"Tool '{name}' is not available to agent '{route.agent_id}': {why}.",
                )
            return _error(request, 404, "not_found", f"Tool not available: {tool.strip()}")
        parameters = registry.get(name).parameters or {}
        if (
            action is not None
            and "action" not in args
            and "action" in parameters.get("properties", {})
        ):
            args = {**args, "action": action}
        if dry_run:
            return json_body(
                request, 200, {"ok": True, "result": {"dryRun": True, "tool": name, "args": args}}
            )
        assert toolbox is not None
        cancellation = Cancellation()
        # A client that leaves cancels the call (``exec`` is killed).
        cast(Request, request).notifyFinish().addErrback(lambda _: cancellation.cancel())
        context = toolbox.context(
            route.agent_id,
            self.edge.roster.require(route.agent_id).workspace,
            route.session_key,
            cancellation,
        )
        try:
            result = await registry.invoke(name, args, context)
        except CancelledError:
            cancellation.cancel()
            raise
        out = {
            "content": result.content,
            "isError": result.is_error,
            "details": dict(result.details),
        }
        if result.is_error:
            return json_body(
                request,
                400,
                {
                    "ok": False,
                    "error": {"type": "tool_error", "message": result.content},
                    "result": out,
                },
            )
        return json_body(request, 200, {"ok": True, "result": out})
