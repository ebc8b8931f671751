from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class EventType(enum.Enum):
    """The task events the pipeline routes (containerd's ``/tasks/*`` topics)."""

    CREATE = "create"
    START = "start"
    EXIT = "exit"
    OOM = "oom"
    EXEC_ADDED = "exec-added"
    EXEC_STARTED = "exec-started"
    PAUSED = "paused"
    RESUMED = "resumed"
    DELETE = "delete"
    CHECKPOINTED = "checkpointed"


@dataclass(frozen=True, slots=True)
class TaskCreate:
    container_id: str
    pid: int
    bundle: str = ""
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskStart:
    container_id: str
    pid: int
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskExit:
    """A process ended. ``exec_id`` is None for the task's init process.

    ``reconciled`` is true when the exit was not seen on the stream but
    found by asking containerd after a reconnect (or derived from a delete).
    An exit whose status could not be known (the task was deleted while no
    stream was connected) has code 255 and no time, as containerd reports
    for a dead shim.
    """

    container_id: str
    exec_id: str | None
    pid: int
    exit_status: int
    exited_at: datetime | None
    timestamp: datetime | None = None
    reconciled: bool = False


@dataclass(frozen=True, slots=True)
class TaskOOM:
    container_id: str
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskExecAdded:
    container_id: str
    exec_id: str
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskExecStarted:
    container_id: str
    exec_id: str
    pid: int
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskPaused:
    container_id: str
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskResumed:
    container_id: str
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskDelete:
    container_id: str
    exec_id: str | None
    pid: int
    exit_status: int
    exited_at: datetime | None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskCheckpointed:
    container_id: str
    checkpoint: str
    timestamp: datetime | None = None


Event = (
    TaskCreate
    | TaskStart
    | TaskExit
    | TaskOOM
    | TaskExecAdded
    | TaskExecStarted
    | TaskPaused
    | TaskResumed
    | TaskDelete
    | TaskCheckpointed
)


class Backend(Protocol):
    """What the pipeline delivers events to.

    Calls for one container come in order, one at a time; calls for
    different containers run concurrently. An exception is logged (with the
    container and the event) and the container's queue goes on.
    """

    async def process_event(
        self, container_id: str, event_type: EventType, event_info: Event
    ) -> None: ...
