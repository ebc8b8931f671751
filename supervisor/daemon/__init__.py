"""The supervisor daemon: managed containerd, container definitions, restart
policies, live restore, logs and systemd integration."""

from ._config import ConfigError as ConfigError
from ._config import DaemonConfig as DaemonConfig
from ._config import load_config as load_config
from ._containerd import ManagedContainerd as ManagedContainerd
from ._daemon import Daemon as Daemon
from ._daemon import DaemonError as DaemonError
from ._definitions import ContainerDefinition as ContainerDefinition
from ._definitions import DefinitionError as DefinitionError
from ._definitions import load_definitions as load_definitions
from ._logs import RotatingJsonLog as RotatingJsonLog
from ._logs import iter_records as iter_records
from ._logs import read_records as read_records
from ._notify import Notifier as Notifier
from ._policy import RestartPolicy as RestartPolicy
from ._policy import RestartState as RestartState
from ._policy import decide as decide

__all__ = (
    "ConfigError",
    "ContainerDefinition",
    "Daemon",
    "DaemonConfig",
    "DaemonError",
    "DefinitionError",
    "ManagedContainerd",
    "Notifier",
    "RestartPolicy",
    "RestartState",
    "RotatingJsonLog",
    "decide",
    "iter_records",
    "load_config",
    "load_definitions",
    "read_records",
)
