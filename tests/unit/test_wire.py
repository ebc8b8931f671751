from datetime import UTC, datetime

from supervisor._proto.containerd.runc import v1 as runc_pb
from supervisor._proto.containerd.v1 import types as task_pb
from supervisor._proto.google.protobuf import Any
from supervisor._proto.io.containerd.cgroups import v1 as cg1
from supervisor._proto.io.containerd.cgroups import v2 as cg2
from supervisor.client import Resources, TaskStatus, _wire

GO_ZERO = datetime(1, 1, 1, tzinfo=UTC)
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_type_name_takes_last_segment() -> None:
    assert _wire.type_name("containerd.events.TaskExit") == "containerd.events.TaskExit"
    assert _wire.type_name("type.googleapis.com/a.B") == "a.B"


def test_go_zero_time_is_none() -> None:
    assert _wire.timestamp(GO_ZERO) is None
    assert _wire.timestamp(None) is None
    assert _wire.timestamp(WHEN) == WHEN


def test_running_process_has_no_exit() -> None:
    p = task_pb.Process(id="c1", pid=42, status=task_pb.Status.RUNNING, exited_at=GO_ZERO)
    state = _wire.process_state(p)
    assert (state.container_id, state.exec_id, state.pid) == ("c1", None, 42)
    assert state.status is TaskStatus.RUNNING and state.exit_status is None


def test_stopped_with_go_zero_time_has_no_exit_time() -> None:
    p = task_pb.Process(id="c1", status=task_pb.Status.STOPPED, exit_status=1, exited_at=GO_ZERO)
    state = _wire.process_state(p)
    assert state.exit_status is not None
    assert (state.exit_status.code, state.exit_status.exited_at) == (1, None)


def test_stopped_exec_has_exit() -> None:
    p = task_pb.Process(id="e1", status=task_pb.Status.STOPPED, exit_status=3, exited_at=WHEN)
    state = _wire.process_state(p, "c1", "e1")
    assert (state.container_id, state.exec_id) == ("c1", "e1")
    assert state.exit_status is not None
    assert (state.exit_status.code, state.exit_status.exited_at) == (3, WHEN)


def test_process_details_give_exec_id() -> None:
    info = Any(
        type_url="containerd.runc.v1.ProcessDetails",
        value=bytes(runc_pb.ProcessDetails(exec_id="e1")),
    )
    assert _wire.process_info(task_pb.ProcessInfo(pid=9, info=info)).exec_id == "e1"
    assert _wire.process_info(task_pb.ProcessInfo(pid=9)).exec_id is None


def test_stats_v1() -> None:
    m = cg1.Metrics(
        pids=cg1.PidsStat(current=3, limit=0),
        cpu=cg1.CpuStat(
            usage=cg1.CpuUsage(total=500, user=300, kernel=200, per_cpu=[250, 250]),
            throttling=cg1.Throttle(throttled_periods=2, throttled_time=9),
        ),
        memory=cg1.MemoryStat(
            cache=10,
            rss=20,
            usage=cg1.MemoryEntry(usage=100, limit=9223372036854771712, max=150),
            swap=cg1.MemoryEntry(usage=130),
        ),
        memory_oom_control=cg1.MemoryOomControl(oom_kill=1),
    )
    s = _wire.stats(Any(type_url="io.containerd.cgroups.v1.Metrics", value=bytes(m)), WHEN)
    assert s.cgroup_version == 1
    assert (s.cpu_total_ns, s.cpu_user_ns, s.cpu_kernel_ns) == (500, 300, 200)
    assert s.per_cpu_ns == (250, 250)
    assert (s.cpu_throttled_periods, s.cpu_throttled_ns) == (2, 9)
    assert (s.memory_usage, s.memory_limit, s.memory_max_usage) == (100, None, 150)
    assert (s.memory_cache, s.memory_rss, s.memory_swap_usage) == (10, 20, 30)
    assert (s.oom_kills, s.pids_current, s.pids_limit) == (1, 3, None)
    assert s.timestamp == WHEN


def test_stats_v2() -> None:
    m = cg2.Metrics(
        pids=cg2.PidsStat(current=2, limit=10),
        cpu=cg2.CpuStat(usage_usec=5, user_usec=3, system_usec=2),
        memory=cg2.MemoryStat(usage=100, usage_limit=200, anon=40, file=60, swap_usage=7),
        memory_events=cg2.MemoryEvents(oom_kill=4),
    )
    s = _wire.stats(Any(type_url="io.containerd.cgroups.v2.Metrics", value=bytes(m)), None)
    assert s.cgroup_version == 2
    assert (s.cpu_total_ns, s.cpu_user_ns, s.cpu_kernel_ns) == (5000, 3000, 2000)
    assert (s.memory_usage, s.memory_limit, s.memory_rss, s.memory_cache) == (100, 200, 40, 60)
    assert (s.memory_swap_usage, s.oom_kills, s.pids_limit) == (7, 4, 10)


def test_unknown_metrics_type_is_an_error() -> None:
    import pytest

    from supervisor.errors import ContainerdError

    with pytest.raises(ContainerdError, match="unsupported"):
        _wire.stats(Any(type_url="x.Y", value=b""), None)


def test_linux_resources() -> None:
    assert _wire.linux_resources(Resources(memory_limit=5, cpus=0.25, pids_limit=3)) == {
        "memory": {"limit": 5},
        "cpu": {"period": 100000, "quota": 25000},
        "pids": {"limit": 3},
    }
    assert _wire.linux_resources(Resources()) == {}


def test_runc_options_round_trip() -> None:
    from supervisor.client import RuncOptions

    opts = RuncOptions(binary_name="crun", systemd_cgroup=True, io_uid=5)
    packed = _wire.runc_options(opts, criu_image_path="/img")
    assert packed.type_url == "containerd.runc.v1.Options"
    assert runc_pb.Options.parse(packed.value).criu_image_path == "/img"
    assert _wire.runc_options_from(packed) == opts
