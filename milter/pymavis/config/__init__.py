"""Configuration: YAML files validated against a schema into a frozen snapshot."""

from .load import Bank, Config, ConfigError, load

__all__ = ["Bank", "Config", "ConfigError", "load"]
