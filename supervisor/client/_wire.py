"""Conversions between generated wire messages and the public dataclasses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any as AnyValue

from .._proto.containerd.runc import v1 as runc_pb
from .._proto.containerd.v1 import types as task_pb
from .._proto.google.protobuf import Any
from ..errors import ContainerdError
from ._types import ExitStatus, ProcessInfo, ProcessState, Resources, RuncOptions, Stats, TaskStatus

if TYPE_CHECKING:
    from .._proto.io.containerd.cgroups import v1 as cg1_pb
    from .._proto.io.containerd.cgroups import v2 as cg2_pb

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
RUNC_CHECKPOINT_TYPE_URL = "containerd.runc.v1.CheckpointOptions"

# The kernel reports "no limit" as a huge number (PAGE_COUNTER_MAX pages, or
# max int64); anything this large is no limit at all.
_UNLIMITED = 1 << 62

_STATUS = {
    task_pb.Status.UNKNOWN: TaskStatus.UNKNOWN,
    task_pb.Status.CREATED: TaskStatus.CREATED,
    task_pb.Status.RUNNING: TaskStatus.RUNNING,
    task_pb.Status.STOPPED: TaskStatus.STOPPED,
    task_pb.Status.PAUSED: TaskStatus.PAUSED,
    task_pb.Status.PAUSING: TaskStatus.PAUSING,
}


def type_name(url: str) -> str:
    """containerd sends bare type names; others prefix a host. Keep the name."""
    return url.rsplit("/", 1)[-1]


def pack_json(type_url: str, value: Mapping[str, AnyValue]) -> Any:
    return Any(type_url=type_url, value=json.dumps(value, separators=(",", ":")).encode())


def unpack_json(value: Any | None) -> dict[str, AnyValue]:
    if value is None or not value.value:
        return {}
    try:
        decoded = json.loads(value.value)
    except ValueError as exc:
        raise ContainerdError(f"{value.type_url} is not valid JSON: {exc}") from exc
    if not isinstance(decoded, dict):
        raise ContainerdError(f"{value.type_url} is not a JSON object")
    return decoded


def timestamp(value: datetime | None) -> datetime | None:
    """Go's zero time (year 1) means 'not set'."""
    if value is None or value.year <= 1:
        return None
    return value


def exit_status(code: int, exited_at: datetime | None) -> ExitStatus:
    return ExitStatus(code=code, exited_at=timestamp(exited_at))


def process_state(p: task_pb.Process, container_id: str = "", exec_id: str = "") -> ProcessState:
    """containerd leaves ``container_id`` empty and puts the task's or the
    exec's id in ``id``; the caller says which this record is."""
    status = _STATUS.get(p.status, TaskStatus.UNKNOWN)
    exited = status is TaskStatus.STOPPED
    return ProcessState(
        container_id=container_id or p.container_id or p.id,
        exec_id=exec_id or None,
        pid=p.pid,
        status=status,
        exit_status=exit_status(p.exit_status, p.exited_at) if exited else None,
        terminal=p.terminal,
        stdin=p.stdin,
        stdout=p.stdout,
        stderr=p.stderr,
    )


def process_info(p: task_pb.ProcessInfo) -> ProcessInfo:
    exec_id: str | None = None
    if p.info is not None and type_name(p.info.type_url) == "containerd.runc.v1.ProcessDetails":
        exec_id = runc_pb.ProcessDetails.parse(p.info.value).exec_id or None
    return ProcessInfo(pid=p.pid, exec_id=exec_id)


def runc_options(options: RuncOptions, *, criu_image_path: str = "") -> Any:
    message = runc_pb.Options(
        no_pivot_root=options.no_pivot_root,
        no_new_keyring=options.no_new_keyring,
        shim_cgroup=options.shim_cgroup,
        io_uid=options.io_uid,
        io_gid=options.io_gid,
        binary_name=options.binary_name,
        root=options.root,
        criu_path=options.criu_path,
        systemd_cgroup=options.systemd_cgroup,
        criu_image_path=criu_image_path,
    )
    return Any(type_url=RUNC_OPTIONS_TYPE_URL, value=bytes(message))


def runc_options_from(value: Any | None) -> RuncOptions | None:
    if value is None or type_name(value.type_url) != RUNC_OPTIONS_TYPE_URL:
        return None
    m = runc_pb.Options.parse(value.value)
    return RuncOptions(
        binary_name=m.binary_name,
        root=m.root,
        systemd_cgroup=m.systemd_cgroup,
        no_pivot_root=m.no_pivot_root,
        no_new_keyring=m.no_new_keyring,
        shim_cgroup=m.shim_cgroup,
        io_uid=m.io_uid,
        io_gid=m.io_gid,
        criu_path=m.criu_path,
    )


def checkpoint_options(image_path: str, work_path: str, exit: bool) -> Any:
    message = runc_pb.CheckpointOptions(exit=exit, image_path=image_path, work_path=work_path)
    return Any(type_url=RUNC_CHECKPOINT_TYPE_URL, value=bytes(message))


def linux_resources(resources: Resources) -> dict[str, AnyValue]:
    """The OCI LinuxResources object for Tasks.Update."""
    out: dict[str, AnyValue] = {}
    memory: dict[str, int] = {}
    if resources.memory_limit is not None:
        memory["limit"] = resources.memory_limit
    if resources.memory_swap is not None:
        memory["swap"] = resources.memory_swap
    if memory:
        out["memory"] = memory
    cpu: dict[str, int] = {}
    if resources.cpus is not None:
        period = 100_000
        cpu["period"] = period
        cpu["quota"] = round(resources.cpus * period)
    if resources.cpu_shares is not None:
        cpu["shares"] = resources.cpu_shares
    if cpu:
        out["cpu"] = cpu
    if resources.pids_limit is not None:
        out["pids"] = {"limit": resources.pids_limit}
    return out


def limit(value: int) -> int | None:
    return None if value == 0 or value >= _UNLIMITED else value


def stats(data: Any | None, when: datetime | None) -> Stats:
    """Decode a Metric's payload (cgroup v1 or v2) into one Stats shape."""
    if data is None:
        raise ContainerdError("containerd returned a metric without data")
    # The generated cgroup messages are imported here, on first use: ~10 ms of
    # every start otherwise (the daemon reads cgroup files itself).
    from .._proto.io.containerd.cgroups import v1 as cg1_pb
    from .._proto.io.containerd.cgroups import v2 as cg2_pb

    name = type_name(data.type_url)
    if name == "io.containerd.cgroups.v1.Metrics":
        return _stats_v1(cg1_pb.Metrics.parse(data.value), when)
    if name == "io.containerd.cgroups.v2.Metrics":
        return _stats_v2(cg2_pb.Metrics.parse(data.value), when)
    raise ContainerdError(f"unsupported metrics type {data.type_url!r}")


def _stats_v1(m: cg1_pb.Metrics, when: datetime | None) -> Stats:
    from .._proto.io.containerd.cgroups import v1 as cg1_pb

    cpu = m.cpu or cg1_pb.CpuStat()
    usage = cpu.usage or cg1_pb.CpuUsage()
    throttle = cpu.throttling or cg1_pb.Throttle()
    mem = m.memory or cg1_pb.MemoryStat()
    mem_usage = mem.usage or cg1_pb.MemoryEntry()
    swap = mem.swap or cg1_pb.MemoryEntry()
    pids = m.pids or cg1_pb.PidsStat()
    oom = m.memory_oom_control or cg1_pb.MemoryOomControl()
    return Stats(
        cgroup_version=1,
        cpu_total_ns=usage.total,
        cpu_user_ns=usage.user,
        cpu_kernel_ns=usage.kernel,
        cpu_throttled_periods=throttle.throttled_periods,
        cpu_throttled_ns=throttle.throttled_time,
        memory_usage=mem_usage.usage,
        memory_limit=limit(mem_usage.limit),
        memory_max_usage=mem_usage.max or None,
        memory_cache=mem.cache,
        memory_rss=mem.rss,
        # memsw counts memory plus swap; the swap part is the difference.
        memory_swap_usage=max(swap.usage - mem_usage.usage, 0) if swap.usage else 0,
        oom_kills=oom.oom_kill,
        pids_current=pids.current,
        pids_limit=limit(pids.limit),
        timestamp=timestamp(when),
        per_cpu_ns=tuple(usage.per_cpu),
    )


def _stats_v2(m: cg2_pb.Metrics, when: datetime | None) -> Stats:
    from .._proto.io.containerd.cgroups import v2 as cg2_pb

    cpu = m.cpu or cg2_pb.CpuStat()
    mem = m.memory or cg2_pb.MemoryStat()
    events = m.memory_events or cg2_pb.MemoryEvents()
    pids = m.pids or cg2_pb.PidsStat()
    return Stats(
        cgroup_version=2,
        cpu_total_ns=cpu.usage_usec * 1000,
        cpu_user_ns=cpu.user_usec * 1000,
        cpu_kernel_ns=cpu.system_usec * 1000,
        cpu_throttled_periods=cpu.nr_throttled,
        cpu_throttled_ns=cpu.throttled_usec * 1000,
        memory_usage=mem.usage,
        memory_limit=limit(mem.usage_limit),
        memory_max_usage=None,
        memory_cache=mem.file,
        memory_rss=mem.anon,
        memory_swap_usage=mem.swap_usage,
        oom_kills=events.oom_kill,
        pids_current=pids.current,
        pids_limit=limit(pids.limit),
        timestamp=timestamp(when),
    )
