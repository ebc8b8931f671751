from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._proto.containerd.services.events import v1 as events_pb
from .._proto.google.protobuf import Any as AnyPb
from ..client import Client, ProcessState
from ..errors import NotFound, SupervisorError, Unavailable, map_errors
from ._decode import DecodeError, decode
from ._h2stream import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, ServerStream
from ._h2stream import ProtocolError as H2ProtocolError
from ._ledger import FORGET_AFTER, ExitLedger, Known, reconcile
from ._queue import DEFAULT_MAX_QUEUED, SerialQueues
from ._types import (
    Backend,
    Event,
    EventType,
    TaskDelete,
    TaskExecStarted,
    TaskExit,
    TaskStart,
)

log = logging.getLogger("supervisor.events")

_SUBSCRIBE = "/containerd.services.events.v1.Events/Subscribe"
#: Our own marker, published to prove the subscription is live before we list.
SYNC_TOPIC = "/containerd-supervisor/sync"
SYNC_TYPE = "containerd-supervisor.Sync"

#: Health-check backoff while containerd is away: 10 ms doubling to 1 s.
RECONNECT_DELAY_MIN = 0.01
RECONNECT_DELAY_MAX = 1.0
#: How long a fresh subscription may take to show our marker before it is
#: abandoned and made again; the marker is republished meanwhile.
SYNC_TIMEOUT = 10.0
SYNC_REPUBLISH_MIN = 0.02
#: How long shutdown waits for queued events to reach the backend.
DRAIN_TIMEOUT = 5.0

_STREAM_ERRORS = (H2ProtocolError, OSError, SupervisorError)


class ConnectionState(enum.Enum):
    """Where the event stream stands."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass
class PipelineStats:
    """Counters for observability and tests."""

    received: int = 0
    duplicate_exits: int = 0
    reconciled_exits: int = 0
    skipped: int = 0
    subscriptions: int = 0
    #: How long the last reconcile took: listing tasks and queueing the exits found.
    last_reconcile_seconds: float = 0.0


class _SyncTimeout(Exception):
    pass


class _Sync:
    def __init__(self, nonce: bytes) -> None:
        self.nonce = nonce
        self.seen = anyio.Event()
        self.timed_out = False


class EventPipeline:
    """Subscribes to a namespace's task events and delivers them to a backend.

    Run it with :meth:`run` in a task group you own; :meth:`stop` ends it,
    giving queued events up to 5 s to reach the backend. When the stream
    drops it waits for containerd to serve again, subscribes again and
    reconciles, so that every process exit reaches the backend exactly once.
    A subscription that stays silent ``keepalive_interval`` seconds is pinged,
    and dropped as lost if containerd does not answer within
    ``keepalive_timeout`` (see :meth:`ServerStream.keepalive`).
    """

    def __init__(
        self,
        client: Client,
        backend: Backend,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        report_stopped_on_start: bool = True,
        forget_after: float = FORGET_AFTER,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.client = client
        self.backend = backend
        self.stats = PipelineStats()
        self.report_stopped_on_start = report_stopped_on_start
        self._max_queued = max_queued
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        #: The level of the line that says the stream was lost (an embedder
        #: that reports containerd's outages itself can lower it).
        self.outage_level = logging.WARNING
        self._ledger = ExitLedger(forget_after)
        self._first_listing: list[ProcessState] | None = None
        self._known = Known()
        self._queues: SerialQueues | None = None
        self._state = ConnectionState.CONNECTING
        self._changed = anyio.Event()
        self._stats_changed = anyio.Event()
        self._stop = anyio.CancelScope()
        self._logged_types: set[str] = set()
        self._lost_at = time.monotonic()

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            self._state = state
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for_state(self, state: ConnectionState) -> None:
        """Wait until the stream is in ``state`` (bound it with ``fail_after``)."""
        while self._state is not state:
            await self._changed.wait()

    async def wait_connected(self) -> None:
        """Wait until subscribed and reconciled."""
        await self.wait_for_state(ConnectionState.CONNECTED)

    async def wait_stats(self, predicate: Callable[[PipelineStats], bool]) -> None:
        """Wait until ``predicate(self.stats)`` holds; re-checked whenever a
        duplicate, reconciled or skipped event or a new subscription is counted
        (bound it with ``fail_after``)."""
        while not predicate(self.stats):
            await self._stats_changed.wait()

    def _counted(self) -> None:
        self._stats_changed.set()
        self._stats_changed = anyio.Event()

    @property
    def queued(self) -> int:
        return self._queues.queued if self._queues else 0

    # -- running ---------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; :meth:`run` then drains the queues (bounded) and returns."""
        self._stop.cancel()

    def take_first_listing(self) -> list[ProcessState] | None:
        """The tasks as containerd listed them for the first reconcile, once
        the subscription was live (every change since comes as an event), for
        one taker: a caller that would list them again at start can save the
        call (at 1000 tasks containerd asks each shim: ~0.2 s). None after."""
        listing, self._first_listing = self._first_listing, None
        return listing

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop` or cancellation. ``task_status.started()`` is
        called once the first subscription is live and reconciled."""
        try:
            async with anyio.create_task_group() as tg:
                self._queues = SerialQueues(tg, self.backend.process_event, self._max_queued)
                with self._stop:
                    await self._read_forever(task_status)
                self._queues.close()
                with anyio.move_on_after(DRAIN_TIMEOUT, shield=True) as drain:
                    await self._queues.join()
                if drain.cancelled_caught:
                    log.warning("%d events not delivered at shutdown", self._queues.queued)
                tg.cancel_scope.cancel()
        finally:
            self._set_state(ConnectionState.CLOSED)

    async def _read_forever(self, task_status: TaskStatus[None]) -> None:
        first = True
        said_waiting = False
        retry = RECONNECT_DELAY_MIN
        while True:
            began = time.monotonic()
            try:
                await self._subscribe(first, task_status)
                reason = "containerd ended the stream"
            except _SyncTimeout:
                reason = f"our sync marker did not come back within {SYNC_TIMEOUT:.0f}s"
            except _STREAM_ERRORS as exc:
                reason = str(exc) or type(exc).__name__
            self.client.outage_seen = True
            if self._state is ConnectionState.CONNECTED:
                first = False
                self._lost_at = time.monotonic()
                # outage_level is for containerd's own absence; a stream lost while
                # containerd serves (a reset, no keepalive answer) is a warning.
                level = logging.WARNING
                if self.outage_level != logging.WARNING and not await self.client.is_serving():
                    level = self.outage_level
                log.log(level, "event stream lost (%s); waiting for containerd", reason)
                self._set_state(ConnectionState.RECONNECTING)
            elif not said_waiting:
                said_waiting = True
                log.log(
                    self.outage_level, "no event stream yet (%s); waiting for containerd", reason
                )
            await self._wait_serving()
            # A stream that fails at once while containerd serves (a reset, a
            # failing reconcile) is retried with a backoff, not in a tight loop.
            if time.monotonic() - began < RECONNECT_DELAY_MAX:
                await anyio.sleep(retry)
                retry = min(retry * 2, RECONNECT_DELAY_MAX)
            else:
                retry = RECONNECT_DELAY_MIN

    async def _wait_serving(self) -> None:
        delay = RECONNECT_DELAY_MIN
        while not await self.client.is_serving():
            await anyio.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAY_MAX)

    async def _subscribe(self, first: bool, task_status: TaskStatus[None]) -> None:
        ns = self.client.namespace
        request = events_pb.SubscribeRequest(
            filters=[
                f"namespace=={ns},topic~=|^/tasks/|",
                f'namespace=={ns},topic=="{SYNC_TOPIC}"',
            ]
        )
        sync = _Sync(uuid.uuid4().hex.encode())
        error: BaseException | None = None
        async with ServerStream(
            self.client.address,
            _SUBSCRIBE,
            bytes(request),
            {"containerd-namespace": ns},
            keepalive_interval=self.keepalive_interval,
            keepalive_timeout=self.keepalive_timeout,
        ) as stream:
            self.stats.subscriptions += 1
            self._counted()
            async with anyio.create_task_group() as tg:
                try:
                    tg.start_soon(self._announce, sync, tg)
                    tg.start_soon(stream.keepalive)
                    await self._read(stream, sync, tg, first, task_status)
                except _STREAM_ERRORS as exc:
                    error = exc
                tg.cancel_scope.cancel()
        if sync.timed_out:
            raise _SyncTimeout
        if error is not None:
            raise error

    async def _announce(self, sync: _Sync, tg: TaskGroup) -> None:
        """Publish our marker until it comes back on the stream (bounded).

        Subscribe has no acknowledgement: seeing our own marker is what proves
        the subscription is live, so nothing published after it can be missed.
        """
        request = events_pb.PublishRequest(
            topic=SYNC_TOPIC, event=AnyPb(type_url=SYNC_TYPE, value=sync.nonce)
        )
        delay = SYNC_REPUBLISH_MIN
        with anyio.move_on_after(SYNC_TIMEOUT):
            while not sync.seen.is_set():
                try:
                    with map_errors("publish sync marker"):
                        await self.client._events_stub.publish(request)
                except SupervisorError as exc:
                    log.debug("sync marker not published: %s", exc)
                with anyio.move_on_after(delay):
                    await sync.seen.wait()
                delay = min(delay * 2, 1.0)
            return
        sync.timed_out = True
        tg.cancel_scope.cancel()

    async def _read(
        self,
        stream: ServerStream,
        sync: _Sync,
        tg: TaskGroup,
        first: bool,
        task_status: TaskStatus[None],
    ) -> None:
        stats = self.stats
        route = self._route
        async for batch in stream:
            stats.received += len(batch)
            for data in batch:
                try:
                    type_name, value, event_type, event = decode(data)
                except DecodeError as exc:
                    self._skip(exc.type_name, f"undecodable ({exc})")
                    continue
                if event is None:
                    if type_name != SYNC_TYPE:
                        self._skip(type_name, "not a routed event type")
                    elif value == sync.nonce and not sync.seen.is_set():
                        sync.seen.set()
                        tg.start_soon(self._reconcile, first, task_status, tg)
                    continue
                assert event_type is not None
                if not route(event_type, event):
                    await self._route_slowly(event_type, event)

    def _skip(self, type_name: str, why: str) -> None:
        self.stats.skipped += 1
        self._counted()
        if type_name not in self._logged_types:
            self._logged_types.add(type_name)
            log.warning(
                "skipped a %s event: %s (logged once per type; stats.skipped counts them all)",
                type_name,
                why,
            )

    async def _dispatch(self, event_type: EventType, event: Event) -> None:
        if not self._route(event_type, event):
            await self._route_slowly(event_type, event)

    def _route(self, event_type: EventType, event: Event) -> bool:
        """The hot path: ledger, bookkeeping, queue. False when the event needs
        :meth:`_route_slowly` (a task delete, or the container's queue is full)."""
        cid = event.container_id
        if event_type is EventType.EXIT:
            assert isinstance(event, TaskExit)
            if not self._ledger.first(cid, event.exec_id, event.pid):
                self.stats.duplicate_exits += 1
                self._counted()
                return True
            self._known.ended(cid, event.exec_id, event.pid)
        elif event_type is EventType.START:
            assert isinstance(event, TaskStart)
            self._known.started(cid, None, event.pid)
            self._ledger.discard(cid, None, event.pid)  # a reused pid is a new process
        elif event_type is EventType.EXEC_STARTED:
            assert isinstance(event, TaskExecStarted)
            self._known.started(cid, event.exec_id, event.pid)
            self._ledger.discard(cid, event.exec_id, event.pid)
        elif event_type is EventType.DELETE:
            return False
        assert self._queues is not None
        return self._queues.put_nowait(cid, event_type, event)

    async def _route_slowly(self, event_type: EventType, event: Event) -> None:
        try:
            await self._route_slowly_inner(event_type, event)
        except BaseException:
            # Cancelled while waiting for room (the stream is being dropped):
            # the exit was recorded but not queued, so let a copy through later.
            if isinstance(event, TaskExit):
                self._ledger.discard(event.container_id, event.exec_id, event.pid)
            raise

    async def _route_slowly_inner(self, event_type: EventType, event: Event) -> None:
        assert self._queues is not None
        cid = event.container_id
        if isinstance(event, TaskDelete) and event.exec_id is None:
            pid = event.pid
            if self._known.processes.get((cid, None)) == pid and self._ledger.first(cid, None, pid):
                # Its exit was lost while no stream was connected; the delete carries it.
                self.stats.reconciled_exits += 1
                self._counted()
                exit_event = TaskExit(
                    cid, None, pid, event.exit_status, event.exited_at, event.timestamp,
                    reconciled=True,
                )  # fmt: skip
                await self._queues.put(cid, EventType.EXIT, exit_event)
            self._known.task_deleted(cid)
            self._ledger.task_deleted(cid)
        await self._queues.put(cid, event_type, event)

    async def _reconcile(self, first: bool, task_status: TaskStatus[None], tg: TaskGroup) -> None:
        snapshot = dict(self._known.processes)
        began = time.monotonic()
        try:
            tasks = await self.client.list_tasks()
            execs: dict[tuple[str, str], ProcessState | None] = {}
            for (cid, exec_id), _pid in snapshot.items():
                if exec_id is None:
                    continue
                try:
                    execs[(cid, exec_id)] = await self.client.process_state(cid, exec_id)
                except NotFound:
                    execs[(cid, exec_id)] = None
        except SupervisorError as exc:
            level = self.outage_level if isinstance(exc, Unavailable) else logging.WARNING
            log.log(level, "reconcile failed (%s); subscribing again", exc)
            tg.cancel_scope.cancel()
            return
        exits, alive = reconcile(snapshot, tasks, execs)
        assert self._queues is not None
        delivered = 0
        for exit_event in exits:
            key = (exit_event.container_id, exit_event.exec_id, exit_event.pid)
            if not self._ledger.first(*key):
                self.stats.duplicate_exits += 1
                self._counted()
                continue
            self._known.ended(*key)
            if first and not self.report_stopped_on_start:
                continue
            delivered += 1
            await self._queues.put(exit_event.container_id, EventType.EXIT, exit_event)
        self.stats.reconciled_exits += delivered
        self.stats.last_reconcile_seconds = time.monotonic() - began
        self._counted()
        for (cid, exec_id), pid in alive.items():
            if (cid, exec_id) not in self._known.processes and not self._ledger.delivered(
                cid, exec_id, pid
            ):
                self._known.started(cid, exec_id, pid)
        if self._state is ConnectionState.RECONNECTING:
            log.info(
                "event stream restored after %.1fs; %d exits reconciled",
                time.monotonic() - self._lost_at,
                delivered,
            )
        self._set_state(ConnectionState.CONNECTED)
        if first:
            self._first_listing = tasks
            task_status.started()
