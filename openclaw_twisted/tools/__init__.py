"""The agent's own tools: the ITool interface, a registry, the policy, and the built-ins.

Not yet reachable from HTTP or WebSocket: the agent runner's tool-call loop comes later and
builds on this package.
"""

from .fs import EditTool, FindTool, LsTool, ReadTool, WriteTool, fs_tools
from .interface import (
    Cancellation,
    ITool,
    ThreadRunner,
    ToolContext,
    ToolError,
    ToolResult,
    run_inline,
    thread_pool_runner,
)
from .policy import (
    TOOL_GROUPS,
    TOOL_PROFILES,
    AgentToolsConfig,
    EffectivePolicy,
    ExecConfig,
    ToolPolicy,
    ToolsConfig,
    effective_tools,
    expand_groups,
    normalize_tool_name,
    tools_for_agent,
)
from .registry import ToolRegistry, UnknownToolError
from .runtime import ExecProtocol, ExecTool

__all__ = [
    "TOOL_GROUPS",
    "TOOL_PROFILES",
    "AgentToolsConfig",
    "Cancellation",
    "EditTool",
    "EffectivePolicy",
    "ExecConfig",
    "ExecProtocol",
    "ExecTool",
    "FindTool",
    "ITool",
    "LsTool",
    "ReadTool",
    "ThreadRunner",
    "ToolContext",
    "ToolError",
    "ToolPolicy",
    "ToolRegistry",
    "ToolResult",
    "ToolsConfig",
    "UnknownToolError",
    "WriteTool",
    "effective_tools",
    "expand_groups",
    "fs_tools",
    "normalize_tool_name",
    "run_inline",
    "thread_pool_runner",
    "tools_for_agent",
]
