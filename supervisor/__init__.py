"""containerd-supervisor: an asyncio container supervisor for containerd."""

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
from .errors import FailedPrecondition as FailedPrecondition
from .errors import InvalidArgument as InvalidArgument
from .errors import NotFound as NotFound
from .errors import SupervisorError as SupervisorError
from .errors import Unavailable as Unavailable
from .errors import Unimplemented as Unimplemented
from .events import Backend as Backend
from .events import ConnectionState as ConnectionState
from .events import Event as Event
from .events import EventType as EventType
from .events import TaskExit as TaskExit

__version__ = "0.1.0"

__all__ = (
    "AlreadyExists",
    "Backend",
    "Client",
    "ConnectionState",
    "Container",
    "ContainerdError",
    "Event",
    "EventType",
    "ExitStatus",
    "FailedPrecondition",
    "FifoIO",
    "FileIO",
    "InvalidArgument",
    "NotFound",
    "NullIO",
    "Process",
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
