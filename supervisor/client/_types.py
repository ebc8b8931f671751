from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..errors import InvalidArgument


class TaskStatus(enum.Enum):
    """Status of a task or exec process as containerd reports it."""

    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"
    PAUSING = "pausing"


@dataclass(frozen=True, slots=True)
class Version:
    """containerd's version and git revision."""

    version: str
    revision: str


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: its exit code and when, as containerd recorded it."""

    code: int
    exited_at: datetime | None

    @property
    def signal(self) -> signal.Signals | None:
        """The signal that killed the process, when the code says one did (128+n)."""
        if 128 < self.code < 128 + 65:
            try:
                return signal.Signals(self.code - 128)
            except ValueError:
                return None
        return None


@dataclass(frozen=True, slots=True)
class ProcessState:
    """A task or exec process as containerd reports it (Tasks.Get / List)."""

    container_id: str
    exec_id: str | None
    pid: int
    status: TaskStatus
    exit_status: ExitStatus | None
    terminal: bool
    stdin: str
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One pid inside a task; ``exec_id`` is set when the pid is an exec process."""

    pid: int
    exec_id: str | None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container record: its metadata, runtime and OCI spec."""

    id: str
    labels: Mapping[str, str]
    runtime: str
    spec: Mapping[str, Any]
    image: str
    created_at: datetime | None
    updated_at: datetime | None
    runtime_options: RuncOptions | None = None
    #: The container's own snapshot (of ``snapshotter``), if it has one.
    snapshotter: str = ""
    snapshot_key: str = ""


@dataclass(frozen=True, slots=True)
class Resources:
    """Limits to apply to a running task; ``None`` leaves a limit as it is."""

    memory_limit: int | None = None
    memory_swap: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("memory_limit", "memory_swap", "cpus", "cpu_shares", "pids_limit"):
            value = getattr(self, name)
            if value is not None and not value > 0 and not (name == "memory_swap" and value == -1):
                raise InvalidArgument(f"{name} must be positive, not {value}")


@dataclass(frozen=True, slots=True)
class Stats:
    """A task's cgroup statistics, the same shape on cgroup v1 and v2.

    CPU times are nanoseconds, memory in bytes; a limit of ``None`` means none.
    """

    cgroup_version: int
    cpu_total_ns: int
    cpu_user_ns: int
    cpu_kernel_ns: int
    cpu_throttled_periods: int
    cpu_throttled_ns: int
    memory_usage: int
    memory_limit: int | None
    memory_max_usage: int | None
    memory_cache: int
    memory_rss: int
    memory_swap_usage: int
    oom_kills: int
    pids_current: int
    pids_limit: int | None
    timestamp: datetime | None = None
    per_cpu_ns: tuple[int, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class RuncOptions:
    """Options for the ``io.containerd.runc.v2`` shim."""

    binary_name: str = ""
    root: str = ""
    systemd_cgroup: bool = False
    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    io_uid: int = 0
    io_gid: int = 0
    criu_path: str = ""


#: The snapshotter containers and images use unless told otherwise.
DEFAULT_SNAPSHOTTER = "overlayfs"
#: How long a lease lives if its holder never deletes it (a killed process).
DEFAULT_LEASE_EXPIRY = timedelta(hours=24)
