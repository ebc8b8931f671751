"""containerd-supervisor: an asyncio container supervisor for containerd.

The names below load on first use, so that the command line (and anything
else that needs one part) does not pay for importing the whole library.
"""

from __future__ import annotations

from ._lazy import load

TYPE_CHECKING = False  # not typing's: importing typing is a tenth of the CLI's start-up

__version__ = "0.1.0"

_WHERE = {
    "Supervisor": "._supervisor",
    "Client": ".client",
    "Container": ".client",
    "ExitStatus": ".client",
    "FifoIO": ".client",
    "FileIO": ".client",
    "NullIO": ".client",
    "Process": ".client",
    "Task": ".client",
    "TaskStatus": ".client",
    "oci_spec": ".client",
    "AlreadyExists": ".errors",
    "ContainerdError": ".errors",
    "DigestMismatch": ".errors",
    "ImageError": ".errors",
    "PlatformNotFound": ".errors",
    "RegistryAuthError": ".errors",
    "RegistryError": ".errors",
    "FailedPrecondition": ".errors",
    "InvalidArgument": ".errors",
    "NotFound": ".errors",
    "SupervisorError": ".errors",
    "Unavailable": ".errors",
    "Unimplemented": ".errors",
    "Backend": ".events",
    "ConnectionState": ".events",
    "Event": ".events",
    "EventType": ".events",
    "TaskExit": ".events",
}

if TYPE_CHECKING:
    from typing import Any

    from ._supervisor import Supervisor as Supervisor
    from .client import Client as Client
    from .client import Container as Container
    from .client import ExitStatus as ExitStatus
    from .client import FifoIO as FifoIO
    from .client import FileIO as FileIO
    from .client import NullIO as NullIO
    from .client import Process as Process
    from .client import Task as Task
    from .client import TaskStatus as TaskStatus
    from .client import oci_spec as oci_spec
    from .errors import AlreadyExists as AlreadyExists
    from .errors import ContainerdError as ContainerdError
    from .errors import DigestMismatch as DigestMismatch
    from .errors import FailedPrecondition as FailedPrecondition
    from .errors import ImageError as ImageError
    from .errors import InvalidArgument as InvalidArgument
    from .errors import NotFound as NotFound
    from .errors import PlatformNotFound as PlatformNotFound
    from .errors import RegistryAuthError as RegistryAuthError
    from .errors import RegistryError as RegistryError
    from .errors import SupervisorError as SupervisorError
    from .errors import Unavailable as Unavailable
    from .errors import Unimplemented as Unimplemented
    from .events import Backend as Backend
    from .events import ConnectionState as ConnectionState
    from .events import Event as Event
    from .events import EventType as EventType
    from .events import TaskExit as TaskExit


def __getattr__(name: str) -> Any:
    return load(globals(), _WHERE, name)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = (
    "AlreadyExists",
    "Backend",
    "Client",
    "ConnectionState",
    "Container",
    "ContainerdError",
    "DigestMismatch",
    "Event",
    "EventType",
    "ExitStatus",
    "FailedPrecondition",
    "FifoIO",
    "FileIO",
    "ImageError",
    "InvalidArgument",
    "NotFound",
    "NullIO",
    "PlatformNotFound",
    "Process",
    "RegistryAuthError",
    "RegistryError",
    "Supervisor",
    "SupervisorError",
    "Task",
    "TaskExit",
    "TaskStatus",
    "Unavailable",
    "Unimplemented",
    "__version__",
    "oci_spec",
)
