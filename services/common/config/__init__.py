"""The one federation config schema, shared by the server, the clients, the local runner and
the Pulumi program. It imports pydantic and PyYAML only: never TensorFlow.

A config comes from (lowest to highest precedence): the defaults, a YAML file (``--config PATH``
or ``$TFF_K8S_CONFIG``), the environment (``SERVER_ADDRESS``), and ``--set dotted.key=value``
overrides. Every error names the offending key and says how to fix it. One module per section;
this package's name is what callers import.
"""

from services.common.config.base import ConfigError, MiB, Strict, format_errors, problems
from services.common.config.client import ClientSettings
from services.common.config.federation import FederationConfig
from services.common.config.loading import (
    CONFIG_ENV,
    SERVER_ADDRESS_ENV,
    config_from_argv,
    entrypoint_parser,
    from_mapping,
    load_config,
    parse_set,
)
from services.common.config.security import SecuritySettings, SiloIdentity
from services.common.config.server import ServerSettings
from services.common.config.task import (
    BUILTIN_TASKS,
    DataSettings,
    EvaluationSettings,
    ModelSettings,
    TaskSettings,
)
from services.common.config.training import SecureSettings, TrainingSettings

__all__ = [
    "BUILTIN_TASKS", "CONFIG_ENV", "SERVER_ADDRESS_ENV", "ClientSettings", "ConfigError", "DataSettings",
    "EvaluationSettings", "FederationConfig", "MiB", "ModelSettings", "SecureSettings", "SecuritySettings",
    "ServerSettings", "SiloIdentity", "Strict", "TaskSettings", "TrainingSettings", "config_from_argv",
    "entrypoint_parser", "format_errors", "from_mapping", "load_config", "parse_set", "problems",
]
