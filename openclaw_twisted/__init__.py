"""A Twisted-native OpenClaw Gateway: OpenAI-compatible chat completions and the WS protocol."""

from ._version import __version__
from .config import Config, ConfigError, load_config, parse_config
from .gateway import Gateway

__all__ = ["Config", "ConfigError", "Gateway", "__version__", "load_config", "parse_config"]
