import contextlib
from datetime import UTC, datetime

import betterproto2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from supervisor._proto.containerd import events as ev_pb
from supervisor._proto.containerd.services.events.v1 import Envelope
from supervisor._proto.google.protobuf import Any
from supervisor.events import (
    DecodeError,
    Event,
    EventType,
    TaskCheckpointed,
    TaskCreate,
    TaskDelete,
    TaskExecAdded,
    TaskExecStarted,
    TaskExit,
    TaskOOM,
    TaskPaused,
    TaskResumed,
    TaskStart,
)
from supervisor.events._decode import DECODERS, decode, decode_event, envelope

GO_ZERO = datetime(1, 1, 1, tzinfo=UTC)
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
STAMP = datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
UINT32 = st.integers(0, 2**32 - 1)
IDS = st.text(min_size=1, max_size=40)
# The decoder reads every time at or before the epoch as "no time" (Go's zero time).
TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1, 0, 0, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
)


def wrap(
    msg: betterproto2.Message,
    type_name: str,
    topic: str = "/tasks/x",
    timestamp: datetime | None = STAMP,
    prefix: str = "",
) -> bytes:
    any_ = Any(type_url=prefix + "containerd.events." + type_name, value=bytes(msg))
    return bytes(Envelope(timestamp=timestamp, namespace="ns", topic=topic, event=any_))


def roundtrip(data: bytes) -> tuple[EventType, Event]:
    _topic, type_name, value, ts = envelope(data)
    return decode_event(type_name, value, ts)


CASES: list[tuple[betterproto2.Message, str, EventType, Event]] = [
    (
        ev_pb.TaskCreate(container_id="c1", bundle="/run/b/c1", pid=41, checkpoint="x"),
        "TaskCreate",
        EventType.CREATE,
        TaskCreate("c1", 41, "/run/b/c1", STAMP),
    ),
    (
        ev_pb.TaskStart(container_id="c1", pid=42),
        "TaskStart",
        EventType.START,
        TaskStart("c1", 42, STAMP),
    ),
    (
        ev_pb.TaskExit(container_id="c1", id="e1", pid=43, exit_status=137, exited_at=WHEN),
        "TaskExit",
        EventType.EXIT,
        TaskExit("c1", "e1", 43, 137, WHEN, STAMP),
    ),
    (ev_pb.TaskOom(container_id="c1"), "TaskOOM", EventType.OOM, TaskOOM("c1", STAMP)),
    (
        ev_pb.TaskExecAdded(container_id="c1", exec_id="e2"),
        "TaskExecAdded",
        EventType.EXEC_ADDED,
        TaskExecAdded("c1", "e2", STAMP),
    ),
    (
        ev_pb.TaskExecStarted(container_id="c1", exec_id="e2", pid=44),
        "TaskExecStarted",
        EventType.EXEC_STARTED,
        TaskExecStarted("c1", "e2", 44, STAMP),
    ),
    (ev_pb.TaskPaused(container_id="c1"), "TaskPaused", EventType.PAUSED, TaskPaused("c1", STAMP)),
    (
        ev_pb.TaskResumed(container_id="c1"),
        "TaskResumed",
        EventType.RESUMED,
        TaskResumed("c1", STAMP),
    ),
    (
        ev_pb.TaskDelete(container_id="c1", pid=45, exit_status=2, exited_at=WHEN, id="c1"),
        "TaskDelete",
        EventType.DELETE,
        TaskDelete("c1", None, 45, 2, WHEN, STAMP),
    ),
    (
        ev_pb.TaskCheckpointed(container_id="c1", checkpoint="sha256:abc"),
        "TaskCheckpointed",
        EventType.CHECKPOINTED,
        TaskCheckpointed("c1", "sha256:abc", STAMP),
    ),
]


def test_cases_cover_every_routed_type() -> None:
    assert {"containerd.events." + name for _, name, _, _ in CASES} == set(DECODERS)


@pytest.mark.parametrize(("msg", "type_name", "event_type", "expected"), CASES)
def test_round_trip(
    msg: betterproto2.Message, type_name: str, event_type: EventType, expected: Event
) -> None:
    data = wrap(msg, type_name, topic="/tasks/" + event_type.value)
    topic, name, value, ts = envelope(data)
    assert (topic, name, value, ts) == (
        "/tasks/" + event_type.value,
        "containerd.events." + type_name,
        bytes(msg),
        STAMP,
    )
    assert decode_event(name, value, ts) == (event_type, expected)


@given(
    cid=IDS,
    exec_id=st.one_of(st.just(""), IDS),
    pid=UINT32,
    status=UINT32,
    exited_at=st.one_of(st.none(), st.just(GO_ZERO), TIMES),
    stamp=st.one_of(st.none(), st.just(GO_ZERO), TIMES),
)
def test_task_exit_fields(
    cid: str,
    exec_id: str,
    pid: int,
    status: int,
    exited_at: datetime | None,
    stamp: datetime | None,
) -> None:
    msg = ev_pb.TaskExit(
        container_id=cid, id=exec_id, pid=pid, exit_status=status, exited_at=exited_at
    )
    event_type, event = roundtrip(wrap(msg, "TaskExit", timestamp=stamp))
    assert event_type is EventType.EXIT
    assert event == TaskExit(
        cid,
        exec_id if exec_id and exec_id != cid else None,
        pid,
        status,
        None if exited_at == GO_ZERO else exited_at,
        None if stamp == GO_ZERO else stamp,
    )


def test_go_zero_time_is_none() -> None:
    msg = ev_pb.TaskExit(container_id="c1", id="c1", pid=7, exit_status=1, exited_at=GO_ZERO)
    _, event = roundtrip(wrap(msg, "TaskExit", timestamp=GO_ZERO))
    assert isinstance(event, TaskExit)
    assert (event.exited_at, event.timestamp) == (None, None)


def test_init_process_has_no_exec_id() -> None:
    for type_name, msg in (
        ("TaskExit", ev_pb.TaskExit(container_id="c1", id="c1", pid=7)),
        ("TaskDelete", ev_pb.TaskDelete(container_id="c1", id="c1", pid=7)),
    ):
        _, event = roundtrip(wrap(msg, type_name))
        assert isinstance(event, TaskExit | TaskDelete)
        assert (event.container_id, event.exec_id, event.pid) == ("c1", None, 7)


def test_exec_process_keeps_exec_id() -> None:
    _, event = roundtrip(wrap(ev_pb.TaskDelete(container_id="c1", id="e1", pid=8), "TaskDelete"))
    assert isinstance(event, TaskDelete)
    assert event.exec_id == "e1"


def test_type_url_with_host_prefix() -> None:
    msg = ev_pb.TaskExit(container_id="c1", id="c1", pid=9, exit_status=3, exited_at=WHEN)
    data = wrap(msg, "TaskExit", prefix="type.googleapis.com/")
    _topic, name, _value, _ts = envelope(data)
    assert name == "containerd.events.TaskExit"
    assert roundtrip(data) == (EventType.EXIT, TaskExit("c1", None, 9, 3, WHEN, STAMP))


def test_unknown_type_raises_key_error() -> None:
    data = bytes(
        Envelope(
            topic="/snapshot/prepare",
            event=Any(type_url="containerd.events.SnapshotPrepare", value=b"\x0a\x01k"),
        )
    )
    _topic, name, value, ts = envelope(data)
    assert name == "containerd.events.SnapshotPrepare"
    with pytest.raises(KeyError):
        decode_event(name, value, ts)


def test_truncated_body_raises_decode_error() -> None:
    data = wrap(ev_pb.TaskExit(container_id="c1", id="e1", pid=1, exited_at=WHEN), "TaskExit")
    # Cut inside the Any: the envelope's length-delimited field 4 runs past the end.
    with pytest.raises(DecodeError):
        envelope(data[:-1])
    _topic, _name, value, _ts = envelope(data)
    with pytest.raises(DecodeError):
        decode_event("containerd.events.TaskExit", value[:-1], None)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0b",  # wire type 3 (start group)
        b"\x0e",  # wire type 6
        b"\x0d\x01\x02",  # fixed32 cut short
        b"\x09\x01",  # fixed64 cut short
        b"\x08\x80\x80",  # varint cut short
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint too long
        b"\x0a\x05ab",  # string cut short
    ],
)
def test_garbage_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_event("containerd.events.TaskExit", data, None)


def test_wrong_wire_type_raises_decode_error() -> None:
    with pytest.raises(DecodeError, match="not a string"):
        decode_event("containerd.events.TaskExit", b"\x08\x01", None)
    with pytest.raises(DecodeError, match="not a varint"):
        decode_event("containerd.events.TaskExit", b"\x1a\x01x", None)
    with pytest.raises(DecodeError, match="not a timestamp"):
        decode_event("containerd.events.TaskExit", b"\x28\x01", None)
    with pytest.raises(DecodeError, match="not a message"):
        envelope(b"\x20\x01")


def test_prefixes_of_a_valid_envelope_raise_decode_error() -> None:
    data = wrap(ev_pb.TaskExit(container_id="c1", id="e1", pid=1, exited_at=WHEN), "TaskExit")
    for end in range(1, len(data)):
        with pytest.raises(DecodeError):
            envelope(data[:end])


def test_key_without_value_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_event("containerd.events.TaskExit", b"\x18", None)


def test_out_of_range_timestamp_raises_decode_error() -> None:
    ts = b"\x08" + b"\xff" * 8 + b"\x7f"  # seconds = 2**63 - 1
    with pytest.raises(DecodeError):
        decode_event("containerd.events.TaskExit", b"\x2a" + bytes([len(ts)]) + ts, None)


def _parse_or_decode_error(data: bytes, type_name: str) -> None:
    try:
        topic, name, value, ts = envelope(data)
    except (DecodeError, UnicodeDecodeError):
        pass
    else:
        assert isinstance(topic, str) and isinstance(name, str) and isinstance(value, bytes)
        assert ts is None or ts > datetime(1970, 1, 1, tzinfo=UTC)
    try:
        event_type, event = decode_event(type_name, data, None)
    except (DecodeError, UnicodeDecodeError):
        pass
    else:
        assert event_type is DECODERS[type_name][0]
        assert type(event).__name__.lower() == type_name.rsplit(".", 1)[1].lower()


@given(data=st.binary(max_size=64), type_name=st.sampled_from(sorted(DECODERS)))
@example(data=b"\x0a", type_name="containerd.events.TaskExit")
def test_random_bytes_raise_only_decode_error(data: bytes, type_name: str) -> None:
    _parse_or_decode_error(data, type_name)


@given(data=st.binary(max_size=64), type_name=st.sampled_from(sorted(DECODERS)))
def test_random_bytes_parse_or_fail_with_a_known_error(data: bytes, type_name: str) -> None:
    # The property above with its two open bugs tolerated, so that any other
    # exception type or a malformed result still fails the suite meanwhile.
    with contextlib.suppress(IndexError, OverflowError):
        _parse_or_decode_error(data, type_name)


def _careful(data: bytes) -> tuple[str, bytes, EventType | None, Event | None]:
    _topic, name, value, ts = envelope(data)
    if name not in DECODERS:
        return name, value, None, None
    return (name, value, *decode_event(name, value, ts))


@pytest.mark.parametrize(("msg", "type_name", "event_type", "expected"), CASES)
def test_decode_agrees_with_the_careful_path(
    msg: betterproto2.Message, type_name: str, event_type: EventType, expected: Event
) -> None:
    for prefix in ("", "type.googleapis.com/"):
        data = wrap(msg, type_name, prefix=prefix)
        assert decode(data) == _careful(data) == (
            "containerd.events." + type_name,
            bytes(msg),
            event_type,
            expected,
        )


@given(
    cid=IDS,
    exec_id=st.one_of(st.just(""), IDS),
    pid=UINT32,
    status=UINT32,
    exited_at=st.one_of(st.none(), st.just(GO_ZERO), TIMES),
    stamp=st.one_of(st.none(), st.just(GO_ZERO), TIMES),
    topic=st.text(max_size=20),
)
def test_decode_of_task_exits_agrees(
    cid: str,
    exec_id: str,
    pid: int,
    status: int,
    exited_at: datetime | None,
    stamp: datetime | None,
    topic: str,
) -> None:
    msg = ev_pb.TaskExit(
        container_id=cid, id=exec_id, pid=pid, exit_status=status, exited_at=exited_at
    )
    data = wrap(msg, "TaskExit", topic=topic, timestamp=stamp)
    assert decode(data) == _careful(data)


def test_decode_of_other_types_agrees() -> None:
    data = bytes(Envelope(topic="/x", event=Any(type_url="containerd-supervisor.Sync", value=b"n")))
    assert decode(data) == ("containerd-supervisor.Sync", b"n", None, None)


def _same_outcome(data: bytes) -> None:
    try:
        expected = _careful(data)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as raised:
            decode(data)
        assert str(raised.value) == str(exc)
    else:
        assert decode(data) == expected


@given(data=st.binary(max_size=64))
def test_decode_of_random_bytes_agrees(data: bytes) -> None:
    _same_outcome(data)


@given(data=st.data())
def test_decode_of_damaged_envelopes_agrees(data: st.DataObject) -> None:
    # Valid envelopes with one byte changed, cut or inserted: near the fast
    # path's assumptions, where a disagreement would hide.
    msg, type_name, _, _ = data.draw(st.sampled_from(CASES))
    good = bytearray(wrap(msg, type_name, timestamp=WHEN))
    at = data.draw(st.integers(0, len(good) - 1))
    how = data.draw(st.sampled_from(["set", "cut", "insert"]))
    byte = data.draw(st.integers(0, 255))
    if how == "set":
        good[at] = byte
    elif how == "cut":
        del good[at:]
    else:
        good.insert(at, byte)
    _same_outcome(bytes(good))
