"""Configuration: attrs models, a validating loader, and the default guest profile."""

from .errors import ConfigError
from .loader import find_config_file, load_config, parse_config
from .model import (
    Config,
    EgressPolicy,
    Forward,
    IPv4Profile,
    IPv6Profile,
    NetConfig,
    PolicyRule,
)

__all__ = [
    "Config",
    "ConfigError",
    "EgressPolicy",
    "Forward",
    "IPv4Profile",
    "IPv6Profile",
    "NetConfig",
    "PolicyRule",
    "find_config_file",
    "load_config",
    "parse_config",
]
