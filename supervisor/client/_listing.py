"""Fast decoding of the two listings the daemon reads over and over.

``Containers.List`` and ``Tasks.List`` replies grow with the number of
containers (3.5 MB for 1000 containers: every record carries its OCI spec), and
the daemon reads them every second (the relist), at every ``ps`` and scrape. The
generic protobuf decoder spends ~0.4 s of CPU on 1000 containers; this one walks
the wire format for just the fields the client's types hold, and leaves each
spec as JSON bytes until someone reads it. ``tests/unit/test_listing.py`` checks
it against the generated decoder on generated messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import ContainerdError
from . import _wire
from ._types import ContainerInfo, ExitStatus, ProcessState, RuncOptions, Stats, TaskStatus

log = logging.getLogger("supervisor.client")

__all__ = ("LazySpec", "RawReply", "decode_containers", "decode_metrics", "decode_tasks")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATUS = (
    TaskStatus.UNKNOWN,
    TaskStatus.CREATED,
    TaskStatus.RUNNING,
    TaskStatus.STOPPED,
    TaskStatus.PAUSED,
    TaskStatus.PAUSING,
)


class RawReply:
    """A reply type for grpclib's codec that keeps the message's bytes as they came."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def FromString(cls, data: bytes) -> RawReply:
        return cls(data)


class LazySpec(Mapping[str, Any]):
    """An OCI spec read from its JSON on first use."""

    __slots__ = ("_container", "_raw", "_value")

    def __init__(self, raw: bytes, container: str) -> None:
        self._raw = raw
        self._container = container
        self._value: dict[str, Any] | None = None

    def _spec(self) -> dict[str, Any]:
        if self._value is None:
            value: Any = {}
            if self._raw:
                try:
                    value = json.loads(self._raw)
                except ValueError as exc:
                    log.warning(
                        "container %s: its spec is not valid JSON: %s", self._container, exc
                    )
                if not isinstance(value, dict):
                    value = {}
            self._value = value
            self._raw = b""
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._spec()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._spec())

    def __len__(self) -> int:
        return len(self._spec())

    def __repr__(self) -> str:
        return repr(self._spec())


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Each (field number, varint or bytes) of one message level, in order."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield key >> 3, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ContainerdError("malformed listing: a field runs past its message")
            yield key >> 3, buf[pos : pos + size]
            pos += size
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ContainerdError(f"malformed listing: wire type {wire}")
    if pos != end:
        raise ContainerdError("malformed listing: truncated")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = buf[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos + 1
        shift += 7
        if shift >= 70:
            raise ContainerdError("malformed listing: varint too long")


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ContainerdError("malformed listing: a varint where bytes belong")
    return value


def _int(value: int | bytes) -> int:
    if not isinstance(value, int):
        raise ContainerdError("malformed listing: bytes where a varint belongs")
    return value


def _time(value: int | bytes) -> datetime | None:
    seconds = nanos = 0
    for number, item in _fields(_bytes(value)):
        if number == 1:
            seconds = _int(item)
        elif number == 2:
            nanos = _int(item)
    if seconds >= 1 << 63:
        seconds -= 1 << 64
    if seconds <= 0 or seconds > 253402300799:  # Go's zero time (year 1): not set
        return None
    return _EPOCH + timedelta(0, seconds, nanos // 1000)


def _any(value: int | bytes) -> tuple[str, bytes]:
    type_url, data = "", b""
    for number, item in _fields(_bytes(value)):
        if number == 1:
            type_url = _bytes(item).decode()
        elif number == 2:
            data = _bytes(item)
    return type_url, data


def _container(buf: bytes) -> ContainerInfo:
    cid = image = runtime = snapshotter = snapshot_key = ""
    labels: dict[str, str] = {}
    spec = b""
    options: tuple[str, bytes] | None = None
    created = updated = None
    for number, value in _fields(buf):
        if number == 1:
            cid = _bytes(value).decode()
        elif number == 2:
            key = text = ""
            for n, item in _fields(_bytes(value)):
                if n == 1:
                    key = _bytes(item).decode()
                elif n == 2:
                    text = _bytes(item).decode()
            labels[key] = text
        elif number == 3:
            image = _bytes(value).decode()
        elif number == 4:
            for n, item in _fields(_bytes(value)):
                if n == 1:
                    runtime = _bytes(item).decode()
                elif n == 2:
                    options = _any(item)
        elif number == 5:
            spec = _any(value)[1]
        elif number == 6:
            snapshotter = _bytes(value).decode()
        elif number == 7:
            snapshot_key = _bytes(value).decode()
        elif number == 8:
            created = _time(value)
        elif number == 9:
            updated = _time(value)
    return ContainerInfo(
        id=cid,
        labels=labels,
        runtime=runtime,
        spec=LazySpec(spec, cid),
        image=image,
        created_at=created,
        updated_at=updated,
        runtime_options=_runc_options(options),
        snapshotter=snapshotter,
        snapshot_key=snapshot_key,
    )


def _runc_options(options: tuple[str, bytes] | None) -> RuncOptions | None:
    if options is None:
        return None
    return _wire.runc_options_from(_AnyLike(*options))


class _AnyLike:
    def __init__(self, type_url: str, value: bytes) -> None:
        self.type_url = type_url
        self.value = value


def decode_containers(data: bytes) -> list[ContainerInfo]:
    """A ``ListContainersResponse``'s containers."""
    try:
        return [_container(_bytes(v)) for n, v in _fields(data) if n == 1]
    except (IndexError, UnicodeDecodeError) as exc:
        raise ContainerdError(f"malformed container listing: {exc}") from exc


def decode_container(data: bytes, what: str) -> ContainerInfo:
    """The container of a Get, Create or Update reply (its field 1)."""
    try:
        found = [_container(_bytes(v)) for n, v in _fields(data) if n == 1]
    except (IndexError, UnicodeDecodeError) as exc:
        raise ContainerdError(f"malformed {what} reply: {exc}") from exc
    except ContainerdError as exc:
        why = str(exc).removeprefix("malformed listing: ")
        raise ContainerdError(f"malformed {what} reply: {why}") from None
    if not found:
        raise ContainerdError(f"malformed {what} reply: no container")
    return found[-1]


def _process(buf: bytes) -> ProcessState:
    cid = pid_id = stdin = stdout = stderr = ""
    pid = code = status = 0
    terminal = False
    exited_at = None
    for number, value in _fields(buf):
        if number == 1:
            cid = _bytes(value).decode()
        elif number == 2:
            pid_id = _bytes(value).decode()
        elif number == 3:
            pid = _int(value)
        elif number == 4:
            status = _int(value)
        elif number == 5:
            stdin = _bytes(value).decode()
        elif number == 6:
            stdout = _bytes(value).decode()
        elif number == 7:
            stderr = _bytes(value).decode()
        elif number == 8:
            terminal = bool(_int(value))
        elif number == 9:
            code = _int(value)
        elif number == 10:
            exited_at = _time(value)
    state = _STATUS[status] if status < len(_STATUS) else TaskStatus.UNKNOWN
    return ProcessState(
        container_id=cid or pid_id,
        exec_id=None,
        pid=pid,
        status=state,
        exit_status=ExitStatus(code, exited_at) if state is TaskStatus.STOPPED else None,
        terminal=terminal,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
    )


def decode_tasks(data: bytes) -> list[ProcessState]:
    """A ``ListTasksResponse``'s tasks."""
    try:
        return [_process(_bytes(v)) for n, v in _fields(data) if n == 1]
    except (IndexError, UnicodeDecodeError) as exc:
        raise ContainerdError(f"malformed task listing: {exc}") from exc


# -- Tasks.Metrics: the cgroup figures of every task, read at each scrape and `stats` --


def _message(value: int | bytes) -> dict[int, int | bytes]:
    """One level, last value of each field wins (what proto3 says of scalars)."""
    return dict(_fields(_bytes(value)))


def _u(message: dict[int, int | bytes], number: int) -> int:
    return _int(message.get(number, 0))


def _sub(message: dict[int, int | bytes], number: int) -> dict[int, int | bytes]:
    value = message.get(number)
    return {} if value is None else _message(value)


def _packed(message_bytes: bytes, number: int) -> tuple[int, ...]:
    """A repeated uint64, packed or not."""
    out: list[int] = []
    for n, value in _fields(message_bytes):
        if n != number:
            continue
        if isinstance(value, int):
            out.append(value)
        else:
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                out.append(item)
    return tuple(out)


def _stats_v1(data: bytes, when: datetime | None) -> Stats:
    m = dict(_fields(data))
    cpu = _sub(m, 3)
    usage_bytes = cpu.get(1, b"")
    usage = _message(usage_bytes) if usage_bytes else {}
    throttle = _sub(cpu, 2)
    mem = _sub(m, 4)
    mem_usage, swap = _sub(mem, 33), _sub(mem, 34)
    pids, oom = _sub(m, 2), _sub(m, 9)
    used, swapped = _u(mem_usage, 2), _u(swap, 2)
    return Stats(
        cgroup_version=1,
        cpu_total_ns=_u(usage, 1),
        cpu_user_ns=_u(usage, 3),
        cpu_kernel_ns=_u(usage, 2),
        cpu_throttled_periods=_u(throttle, 2),
        cpu_throttled_ns=_u(throttle, 3),
        memory_usage=used,
        memory_limit=_wire.limit(_u(mem_usage, 1)),
        memory_max_usage=_u(mem_usage, 3) or None,
        memory_cache=_u(mem, 1),
        memory_rss=_u(mem, 2),
        memory_swap_usage=max(swapped - used, 0) if swapped else 0,
        oom_kills=_u(oom, 3),
        pids_current=_u(pids, 1),
        pids_limit=_wire.limit(_u(pids, 2)),
        timestamp=when,
        per_cpu_ns=_packed(_bytes(usage_bytes), 4) if usage_bytes else (),
    )


def _stats_v2(data: bytes, when: datetime | None) -> Stats:
    m = dict(_fields(data))
    cpu, mem, events, pids = _sub(m, 2), _sub(m, 4), _sub(m, 8), _sub(m, 1)
    return Stats(
        cgroup_version=2,
        cpu_total_ns=_u(cpu, 1) * 1000,
        cpu_user_ns=_u(cpu, 2) * 1000,
        cpu_kernel_ns=_u(cpu, 3) * 1000,
        cpu_throttled_periods=_u(cpu, 5),
        cpu_throttled_ns=_u(cpu, 6) * 1000,
        memory_usage=_u(mem, 32),
        memory_limit=_wire.limit(_u(mem, 33)),
        memory_max_usage=None,
        memory_cache=_u(mem, 2),
        memory_rss=_u(mem, 1),
        memory_swap_usage=_u(mem, 34),
        oom_kills=_u(events, 5),
        pids_current=_u(pids, 1),
        pids_limit=_wire.limit(_u(pids, 2)),
        timestamp=when,
    )


def _metric(buf: bytes) -> tuple[str, Stats]:
    cid, when, data = "", None, None
    for number, value in _fields(buf):
        if number == 1:
            when = _time(value)
        elif number == 2:
            cid = _bytes(value).decode()
        elif number == 3:
            data = _any(value)
    if data is None:
        raise ContainerdError("containerd returned a metric without data")
    type_url, payload = data
    name = type_url.rsplit("/", 1)[-1]
    if name == "io.containerd.cgroups.v1.Metrics":
        return cid, _stats_v1(payload, when)
    if name == "io.containerd.cgroups.v2.Metrics":
        return cid, _stats_v2(payload, when)
    raise ContainerdError(f"unsupported metrics type {type_url!r}")


def decode_metrics(data: bytes) -> dict[str, Stats]:
    """A ``MetricsResponse``'s figures, by container id."""
    try:
        return dict(_metric(_bytes(v)) for n, v in _fields(data) if n == 1)
    except (IndexError, UnicodeDecodeError) as exc:
        raise ContainerdError(f"malformed metrics: {exc}") from exc
