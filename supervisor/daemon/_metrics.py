"""Prometheus metrics, opt-in (``[metrics] address``): ``GET /metrics`` in the official
exposition format, served by a small HTTP/1.1 responder on the daemon's own event loop.

A scrape takes the containers and their tasks from the daemon's view (what
`ps` shows: see _view), reads each live task's CPU, memory and pids from its
cgroup files (_cgroups; containerd's ``Tasks.Metrics`` only for a container
whose files cannot be read), then renders the text in a thread, so that a
scrape of 1000 containers never stalls supervision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..client import ContainerInfo, ProcessState, Stats, TaskStatus
from . import _cgroups as cgroups
from ._cgroups import Figures
from ._labels import EXIT_CODE, ROOTFS
from ._plan import lenient_state

if TYPE_CHECKING:
    from ._daemon import Daemon

log = logging.getLogger("supervisor.metrics")

#: How long a scrape may wait for containerd before it answers with what it has.
SCRAPE_TIMEOUT = 5.0
#: A request's head: the longest accepted, and the longest wait for it.
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 10.0
#: Scrapes served at once; more wait their turn.
CONCURRENT_SCRAPES = 4

_STATES = ("created", "running", "paused", "pausing", "stopped", "exited", "unknown")
_LIVE = (TaskStatus.CREATED, TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.PAUSING)


@dataclass
class Snapshot:
    """What containerd said at one scrape."""

    containers: list[ContainerInfo] = field(default_factory=list)
    tasks: dict[str, ProcessState] = field(default_factory=dict)
    stats: dict[str, Stats | Figures] = field(default_factory=dict)
    #: Bytes received and sent through each container's interfaces (not lo).
    network: dict[str, tuple[int, int]] = field(default_factory=dict)
    containerd_up: bool = False
    took: float = 0.0


class DaemonMetrics:
    """The daemon's metrics registry: live figures read at each scrape, and the
    control API's calls timed as they happen."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=False)
        self.control_seconds = Histogram(
            "supervisor_control_call_seconds",
            "Control API calls by method and status code, and their duration.",
            ("method", "code"),
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self._snapshot = Snapshot()
        self.registry.register(_Live(self))
        self._scrapes = anyio.Semaphore(CONCURRENT_SCRAPES)
        self._cgroup_paths: dict[tuple[str, Any], str] = {}

    # -- the control API ---------------------------------------------------------

    def observe_control(self, event: RecvRequest) -> None:
        """Time every call the control server dispatches (a grpclib RecvRequest hook)."""
        method = event.method_name.rsplit("/", 1)[-1]
        inner = event.method_func
        histogram = self.control_seconds

        async def timed(stream: Any) -> None:
            began = time.monotonic()
            code = "OK"
            try:
                await inner(stream)
            except GRPCError as exc:
                code = exc.status.name
                raise
            except BaseException:
                code = "UNKNOWN"
                raise
            finally:
                histogram.labels(method, code).observe(time.monotonic() - began)

        event.method_func = timed

    # -- scrapes -------------------------------------------------------------------

    async def render(self) -> bytes:
        """The exposition text: containerd read on the loop, text made in a thread."""
        async with self._scrapes:
            snapshot = await self._read()
            return await anyio.to_thread.run_sync(self._render, snapshot)

    def _render(self, snapshot: Snapshot) -> bytes:
        self._snapshot = snapshot
        return generate_latest(self.registry)

    async def _read(self) -> Snapshot:
        daemon = self.daemon
        began = time.monotonic()
        snapshot = Snapshot()
        with anyio.move_on_after(SCRAPE_TIMEOUT), contextlib.suppress(Exception):
            # From the daemon's view (what `ps` shows), then each live task's
            # cgroup files; containerd's Tasks.Metrics, which asks every shim
            # in turn (~1 ms a task), only for what those files cannot give.
            current = await daemon.current()
            snapshot.containers = [info for info, _, _ in current.values()]
            snapshot.tasks = {c: t for c, (_, t, _) in current.items() if t is not None}
            snapshot.containerd_up = True
            paths = {
                cid: self._cgroup_path(info)
                for cid, (info, task, _) in current.items()
                if task is not None and task.pid > 0 and task.status in _LIVE
            }
            snapshot.stats = await anyio.to_thread.run_sync(_read_cgroups, paths)
            missing = [f"id=={cid}" for cid in paths if cid not in snapshot.stats]
            if missing:
                snapshot.stats |= await daemon.client.metrics(*missing)
        pids = {
            cid: task.pid
            for cid, task in snapshot.tasks.items()
            if task.pid > 0
            and task.status is TaskStatus.RUNNING
            and (attachment := self.daemon.attachment(cid)) is not None
            and attachment.mode.kind != "host"
        }
        if pids:
            snapshot.network = await anyio.to_thread.run_sync(_network_counters, pids)
        snapshot.took = time.monotonic() - began
        return snapshot

    def _cgroup_path(self, info: ContainerInfo) -> str:
        """The container's linux.cgroupsPath, kept: reading the spec parses its JSON."""
        key = (info.id, info.created_at)
        path = self._cgroup_paths.get(key)
        if path is None:
            path = str((info.spec.get("linux") or {}).get("cgroupsPath") or "")
            if len(self._cgroup_paths) > 4 * len(self.daemon.definitions) + 64:
                self._cgroup_paths.clear()  # ids gone long ago
            self._cgroup_paths[key] = path
        return path


def _read_cgroups(paths: Mapping[str, str]) -> dict[str, Stats | Figures]:
    v2 = cgroups.unified()
    out: dict[str, Stats | Figures] = {}
    for cid, path in paths.items():
        figures = cgroups.read(path, v2=v2)
        if figures is not None:
            out[cid] = figures
    return out


def _network_counters(pids: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Each container's interface counters, from /proc/<its pid>/net/dev (the
    kernel's view of the process's namespace, not a file of the container's):
    one read a container, where a netlink dump in its namespace costs a thread."""
    out = {}
    for cid, pid in pids.items():
        try:
            with open(f"/proc/{pid}/net/dev", "rb") as f:
                lines = f.read(1 << 16).splitlines()[2:]
        except OSError:
            continue
        rx = tx = 0
        for line in lines:
            name, _, figures = line.partition(b":")
            fields = figures.split()
            if name.strip() == b"lo" or len(fields) < 9:
                continue
            rx += int(fields[0])
            tx += int(fields[8])
        out[cid] = (rx, tx)
    return out


class _Live(Collector):
    """Figures computed from the daemon's state and the last snapshot, at collect time."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        daemon = self._metrics.daemon
        snapshot = self._metrics._snapshot
        yield from _containers(snapshot, daemon.definitions.keys())
        yield from _daemon(daemon, snapshot)


def _containers(snapshot: Snapshot, known: Any) -> Iterator[Metric]:
    labels = ("id", "image", "rootfs")
    state = GaugeMetricFamily(
        "supervisor_container_state",
        "1 for the state the container's task is in (stopped: no task).",
        labels=(*labels, "state"),
    )
    restarts = CounterMetricFamily(
        "supervisor_container_restarts", "Restarts by the restart policy.", labels=labels
    )
    ooms = CounterMetricFamily(
        "supervisor_container_oom_kills", "Processes killed for lack of memory.", labels=labels
    )
    exit_code = GaugeMetricFamily(
        "supervisor_container_last_exit_code", "Exit code of the last run.", labels=labels
    )
    cpu = CounterMetricFamily(
        "supervisor_container_cpu_seconds", "CPU time used by the container.", labels=labels
    )
    memory = GaugeMetricFamily(
        "supervisor_container_memory_usage_bytes", "Memory in use.", labels=labels
    )
    limit = GaugeMetricFamily(
        "supervisor_container_memory_limit_bytes", "Memory limit (absent: none).", labels=labels
    )
    pids = GaugeMetricFamily("supervisor_container_pids", "Processes running.", labels=labels)
    received = CounterMetricFamily(
        "supervisor_container_network_receive_bytes",
        "Bytes received by the container's interfaces (lo aside).", labels=labels,
    )  # fmt: skip
    sent = CounterMetricFamily(
        "supervisor_container_network_transmit_bytes",
        "Bytes sent by the container's interfaces (lo aside).", labels=labels,
    )  # fmt: skip
    for info in snapshot.containers:
        if info.id not in known:
            continue
        tags: Mapping[str, str] = info.labels
        values = (info.id, info.image, "" if info.image else tags.get(ROOTFS, ""))
        task = snapshot.tasks.get(info.id)
        current = "stopped" if task is None else task.status.value
        if task is not None and task.status is TaskStatus.STOPPED:
            current = "exited"
        for name in _STATES:
            state.add_metric((*values, name), 1.0 if name == current else 0.0)
        figures = lenient_state(tags)
        restarts.add_metric(values, figures.restart_count)
        ooms.add_metric(values, figures.oom_kills)
        code = tags.get(EXIT_CODE, "")
        if code.isdigit():
            exit_code.add_metric(values, int(code))
        stats = snapshot.stats.get(info.id)
        if stats is not None:
            cpu.add_metric(values, stats.cpu_total_ns / 1e9)
            memory.add_metric(values, stats.memory_usage)
            if stats.memory_limit:
                limit.add_metric(values, stats.memory_limit)
            pids.add_metric(values, stats.pids_current)
        counters = snapshot.network.get(info.id)
        if counters is not None:
            received.add_metric(values, counters[0])
            sent.add_metric(values, counters[1])
    yield from (state, restarts, ooms, exit_code, cpu, memory, limit, pids, received, sent)


def _daemon(daemon: Daemon, snapshot: Snapshot) -> Iterator[Metric]:
    stats = daemon.pipeline_stats()
    yield _counter("supervisor_events_received", "Events read from containerd.", stats.received)
    yield _counter(
        "supervisor_events_duplicates_dropped",
        "Exit events dropped as repeats (the exactly-once ledger).",
        stats.duplicate_exits,
    )
    yield _counter(
        "supervisor_events_reconnects",
        "Event subscriptions made again after the stream dropped.",
        max(stats.subscriptions - 1, 0),
    )
    yield _counter(
        "supervisor_events_reconciled_exits",
        "Exits found by reconciling after a reconnect.",
        stats.reconciled_exits,
    )
    yield _gauge(
        "supervisor_reconcile_seconds",
        "How long the last reconcile took, from subscribing to every exit handed on.",
        stats.last_reconcile_seconds,
    )
    scheduler = daemon.scheduler
    yield _gauge("supervisor_sync_queue_depth", "Syncs due or running.", scheduler.pending())
    yield _counter("supervisor_sync_errors", "Syncs that failed (retried).", scheduler.errors)
    yield _gauge("supervisor_containers", "Containers supervised.", len(daemon.definitions))
    yield _gauge(
        "supervisor_containerd_up", "1 if containerd answered this scrape.", snapshot.containerd_up
    )
    yield _gauge(
        "supervisor_scrape_containerd_seconds",
        "How long this scrape's calls to containerd took.",
        snapshot.took,
    )


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=float(value))


# -- the HTTP side -------------------------------------------------------------------------


async def serve_metrics(
    render: Callable[[], Awaitable[bytes]],
    address: tuple[str, int] | Path,
    *,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` on ``address`` until cancelled; reports where it listens."""
    listener: anyio.abc.Listener[Any]
    if isinstance(address, Path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)  # a stale socket
        listener = await anyio.create_unix_listener(address)
        where = str(address)
    else:
        host, port = address
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_address)
        where = f"{host}:{bound[1]}"
    try:
        async with listener:
            task_status.started(where)
            await listener.serve(lambda stream: _answer(stream, render))
    finally:
        if isinstance(address, Path):
            with contextlib.suppress(OSError):
                os.unlink(address)


async def _answer(stream: anyio.abc.ByteStream, render: Callable[[], Awaitable[bytes]]) -> None:
    async with stream:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            head = b""
            with anyio.move_on_after(REQUEST_TIMEOUT):
                while b"\r\n\r\n" not in head and len(head) <= MAX_REQUEST:
                    head += await stream.receive(4096)
            if b"\r\n\r\n" not in head:
                return  # too slow, too long or cut short: just close
            method, _, rest = head.partition(b" ")
            target = rest.partition(b" ")[0].partition(b"?")[0]
            if method not in (b"GET", b"HEAD"):
                await _reply(stream, b"405 Method Not Allowed", b"text/plain", b"GET only\n")
            elif target != b"/metrics":
                await _reply(stream, b"404 Not Found", b"text/plain", b"see /metrics\n")
            else:
                body = await render()
                await _reply(
                    stream, b"200 OK", CONTENT_TYPE_LATEST.encode(), body, head=method == b"HEAD"
                )


async def _reply(
    stream: anyio.abc.ByteStream, status: bytes, kind: bytes, body: bytes, *, head: bool = False
) -> None:
    await stream.send(
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
        + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n" + (b"" if head else body)
    )  # fmt: skip
