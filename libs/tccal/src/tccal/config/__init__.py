"""The connector's configuration: one schema (schema.py), one loader (loader.py)."""

from tccal.config.loader import ConfigError, ConfigProblem, load_config, parse_config_text
from tccal.config.schema import (
    CacheConfig,
    CalendarProvider,
    Config,
    Credential,
    DbConnectionConfig,
    ServiceEndpoint,
    TcsServer,
)

__all__ = [
    "CacheConfig",
    "CalendarProvider",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Credential",
    "DbConnectionConfig",
    "ServiceEndpoint",
    "TcsServer",
    "load_config",
    "parse_config_text",
]
