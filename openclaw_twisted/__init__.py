"""A Twisted-native OpenClaw Gateway: OpenAI-compatible chat completions and the WS protocol."""

from .config import Config, ConfigError, load_config, parse_config
from .gateway import Gateway

__all__ = ["Config", "ConfigError", "Gateway", "load_config", "parse_config"]
__version__ = "0.1.0"
