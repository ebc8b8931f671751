"""The fast listing decoder says what the generated decoder says, on generated messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor._proto.containerd import types as types_pb
from supervisor._proto.containerd.runc import v1 as runc_pb
from supervisor._proto.containerd.services.containers import v1 as containers_pb
from supervisor._proto.containerd.services.tasks import v1 as tasks_pb
from supervisor._proto.containerd.v1 import types as task_pb
from supervisor._proto.google.protobuf import Any as AnyPb
from supervisor._proto.io.containerd.cgroups import v1 as cg1_pb
from supervisor._proto.io.containerd.cgroups import v2 as cg2_pb
from supervisor.client import _wire
from supervisor.client._client import container_info
from supervisor.client._listing import (
    LazySpec,
    decode_container,
    decode_containers,
    decode_metrics,
    decode_tasks,
)
from supervisor.errors import ContainerdError

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNC_URL = "containerd.runc.v1.Options"

text = st.text(max_size=20)
times = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
    ),
)
specs = st.dictionaries(
    text, st.one_of(st.integers(), text, st.lists(text, max_size=3)), max_size=4
)


@st.composite
def containers(draw: st.DrawFn) -> containers_pb.Container:
    options = draw(st.none() | st.builds(runc_pb.Options, binary_name=text, root=text))
    runtime = containers_pb.ContainerRuntime(
        name=draw(text),
        options=None if options is None else AnyPb(type_url=RUNC_URL, value=bytes(options)),
    )
    spec = draw(specs)
    return containers_pb.Container(
        id=draw(text),
        labels=draw(st.dictionaries(text, text, max_size=6)),
        image=draw(text),
        runtime=draw(st.none() | st.just(runtime)),
        spec=AnyPb(type_url=SPEC_URL, value=json.dumps(spec).encode()) if spec else None,
        snapshotter=draw(text),
        created_at=draw(times),
        updated_at=draw(times),
    )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(containers(), max_size=5))
def test_containers_as_the_generated_decoder_reads_them(
    items: list[containers_pb.Container],
) -> None:
    data = bytes(containers_pb.ListContainersResponse(containers=items))
    expected = [
        container_info(c) for c in containers_pb.ListContainersResponse.parse(data).containers
    ]
    got = decode_containers(data)
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected, strict=True):
        assert isinstance(ours.spec, LazySpec)
        assert (ours.id, ours.labels, ours.image, ours.runtime) == (
            theirs.id, theirs.labels, theirs.image, theirs.runtime,
        )  # fmt: skip
        assert dict(ours.spec) == dict(theirs.spec)
        assert (ours.created_at, ours.updated_at) == (theirs.created_at, theirs.updated_at)
        assert ours.runtime_options == theirs.runtime_options


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(containers())
def test_a_get_create_or_update_reply_as_the_generated_decoder_reads_it(
    item: containers_pb.Container,
) -> None:
    for reply in (
        containers_pb.GetContainerResponse(container=item),
        containers_pb.CreateContainerResponse(container=item),
        containers_pb.UpdateContainerResponse(container=item),
    ):
        data = bytes(reply)
        theirs = container_info(type(reply).parse(data).container)
        ours = decode_container(data, "get container")
        assert (ours.id, ours.labels, ours.image, ours.runtime, ours.snapshotter) == (
            theirs.id, theirs.labels, theirs.image, theirs.runtime, theirs.snapshotter,
        )  # fmt: skip
        assert dict(ours.spec) == dict(theirs.spec)
        assert (ours.created_at, ours.updated_at) == (theirs.created_at, theirs.updated_at)
        assert ours.runtime_options == theirs.runtime_options


@pytest.mark.parametrize("data", [b"", b"\x12\x00", b"\x0a\x05abc"])
def test_a_container_reply_without_a_container_is_a_containerd_error(data: bytes) -> None:
    with pytest.raises(ContainerdError, match="malformed get container reply"):
        decode_container(data, "get container")


@st.composite
def processes(draw: st.DrawFn) -> task_pb.Process:
    return task_pb.Process(
        container_id=draw(text),
        id=draw(text),
        pid=draw(st.integers(0, 2**32 - 1)),
        status=draw(st.sampled_from(list(task_pb.Status))),
        stdin=draw(text),
        stdout=draw(text),
        stderr=draw(text),
        terminal=draw(st.booleans()),
        exit_status=draw(st.integers(0, 2**32 - 1)),
        exited_at=draw(times),
    )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(processes(), max_size=5))
def test_tasks_as_the_generated_decoder_reads_them(items: list[task_pb.Process]) -> None:
    data = bytes(tasks_pb.ListTasksResponse(tasks=items))
    expected = [_wire.process_state(t) for t in tasks_pb.ListTasksResponse.parse(data).tasks]
    assert decode_tasks(data) == expected


def test_a_spec_that_is_not_json_reads_as_empty() -> None:
    item = containers_pb.Container(id="x", spec=AnyPb(type_url=SPEC_URL, value=b"{nope"))
    [info] = decode_containers(bytes(containers_pb.ListContainersResponse(containers=[item])))
    assert dict(info.spec) == {}


@pytest.mark.parametrize("data", [b"\x0a\x05abc", b"\x0a\x02\x0a", b"\x0f", b"\x0a\xff"])
def test_malformed_listings_are_containerd_errors(data: bytes) -> None:
    with pytest.raises(ContainerdError):
        decode_containers(data)
    with pytest.raises(ContainerdError):
        decode_tasks(data)


u64 = st.integers(0, 2**64 - 1)


def _v1() -> st.SearchStrategy[cg1_pb.Metrics]:
    entry = st.builds(cg1_pb.MemoryEntry, limit=u64, usage=u64, max=u64, failcnt=u64)
    return st.builds(
        cg1_pb.Metrics,
        pids=st.none() | st.builds(cg1_pb.PidsStat, current=u64, limit=u64),
        cpu=st.none() | st.builds(
            cg1_pb.CpuStat,
            usage=st.none() | st.builds(cg1_pb.CpuUsage, total=u64, kernel=u64, user=u64,
                                        per_cpu=st.lists(u64, max_size=4)),
            throttling=st.none() | st.builds(cg1_pb.Throttle, periods=u64,
                                             throttled_periods=u64, throttled_time=u64),
        ),
        memory=st.none() | st.builds(cg1_pb.MemoryStat, cache=u64, rss=u64,
                                     usage=st.none() | entry, swap=st.none() | entry),
        memory_oom_control=st.none() | st.builds(cg1_pb.MemoryOomControl, oom_kill=u64),
    )  # fmt: skip


def _v2() -> st.SearchStrategy[cg2_pb.Metrics]:
    small = st.integers(0, 2**50)
    return st.builds(
        cg2_pb.Metrics,
        pids=st.none() | st.builds(cg2_pb.PidsStat, current=u64, limit=u64),
        cpu=st.none() | st.builds(cg2_pb.CpuStat, usage_usec=small, user_usec=small,
                                  system_usec=small, nr_throttled=u64, throttled_usec=small),
        memory=st.none() | st.builds(cg2_pb.MemoryStat, anon=u64, file=u64, usage=u64,
                                     usage_limit=u64, swap_usage=u64),
        memory_events=st.none() | st.builds(cg2_pb.MemoryEvents, oom_kill=u64),
    )  # fmt: skip


@st.composite
def metrics(draw: st.DrawFn) -> types_pb.Metric:
    if draw(st.booleans()):
        data = AnyPb(type_url="io.containerd.cgroups.v1.Metrics", value=bytes(draw(_v1())))
    else:
        data = AnyPb(type_url="io.containerd.cgroups.v2.Metrics", value=bytes(draw(_v2())))
    return types_pb.Metric(timestamp=draw(times), id=draw(text), data=data)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.lists(metrics(), max_size=4, unique_by=lambda m: m.id))
def test_metrics_as_the_generated_decoder_reads_them(items: list[types_pb.Metric]) -> None:
    data = bytes(tasks_pb.MetricsResponse(metrics=items))
    parsed = tasks_pb.MetricsResponse.parse(data).metrics
    assert decode_metrics(data) == {m.id: _wire.stats(m.data, m.timestamp) for m in parsed}
