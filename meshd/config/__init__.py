"""meshd configuration: the YAML loader, its errors, and (in model.py) the config dataclass tree."""

from meshd.config.errors import ConfigError, ConfigProblem
from meshd.config.loader import (
    ConfigField,
    field_yaml_key,
    iter_fields,
    load_config,
    load_config_file,
    to_yaml_dict,
    yaml_key,
)

__all__ = [
    "ConfigError",
    "ConfigField",
    "ConfigProblem",
    "field_yaml_key",
    "iter_fields",
    "load_config",
    "load_config_file",
    "to_yaml_dict",
    "yaml_key",
]
