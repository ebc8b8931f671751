"""The event pipeline: subscribe, decode, per-container serial queues,
reconnect and reconcile, so that every process exit reaches the backend once."""

from ._decode import DecodeError as DecodeError
from ._ledger import ExitLedger as ExitLedger
from ._ledger import reconcile as reconcile
from ._pipeline import ConnectionState as ConnectionState
from ._pipeline import EventPipeline as EventPipeline
from ._pipeline import PipelineStats as PipelineStats
from ._queue import DEFAULT_MAX_QUEUED as DEFAULT_MAX_QUEUED
from ._queue import SerialQueues as SerialQueues
from ._types import Backend as Backend
from ._types import Event as Event
from ._types import EventType as EventType
from ._types import TaskCheckpointed as TaskCheckpointed
from ._types import TaskCreate as TaskCreate
from ._types import TaskDelete as TaskDelete
from ._types import TaskExecAdded as TaskExecAdded
from ._types import TaskExecStarted as TaskExecStarted
from ._types import TaskExit as TaskExit
from ._types import TaskOOM as TaskOOM
from ._types import TaskPaused as TaskPaused
from ._types import TaskResumed as TaskResumed
from ._types import TaskStart as TaskStart

__all__ = (
    "DEFAULT_MAX_QUEUED",
    "Backend",
    "ConnectionState",
    "DecodeError",
    "Event",
    "EventPipeline",
    "EventType",
    "ExitLedger",
    "PipelineStats",
    "SerialQueues",
    "TaskCheckpointed",
    "TaskCreate",
    "TaskDelete",
    "TaskExecAdded",
    "TaskExecStarted",
    "TaskExit",
    "TaskOOM",
    "TaskPaused",
    "TaskResumed",
    "TaskStart",
    "reconcile",
)
