from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from ._types import Event, EventType

log = logging.getLogger("supervisor.events")

#: Events held for one container before the pipeline stops reading.
DEFAULT_MAX_QUEUED = 1024
#: Idle workers kept for the next burst; the rest exit.
MAX_IDLE_WORKERS = 16

Handler = Callable[[str, EventType, Event], Awaitable[None]]


class SerialQueues:
    """Per-container serial queues, served by an elastic pool of workers.

    Events for one container are handled in order, one at a time; different
    containers are handled concurrently. A container with nothing queued has
    no queue and no task: workers belong to the pool, not to containers, and
    a worker takes a container with events waiting, drains it, then moves on.
    When every worker is inside a handler and a container has events waiting,
    the pool grows by one, so a slow handler for one container never holds up
    another. Idle workers beyond 16 exit. (A task per container activation
    would cost ~13 us of anyio bookkeeping an event in a busy stream.)

    The bound: at most ``max_queued`` events wait for one container. When a
    container is at the bound, :meth:`put` waits for its handler to take the
    next event, so the pipeline stops reading the stream until the slow
    handler catches up; containerd buffers meanwhile and nothing is dropped.
    Other containers' queued events keep flowing, but their new events wait
    behind the stalled read. With the default of 1024 that takes a handler
    stuck on one container for 1024 events.
    """

    def __init__(
        self, task_group: TaskGroup, handler: Handler, max_queued: int = DEFAULT_MAX_QUEUED
    ) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self._tg = task_group
        self._handler = handler
        self.max_queued = max_queued
        self._queues: dict[str, deque[tuple[EventType, Event]]] = {}
        self._ready: deque[str] = deque()
        self._space: dict[str, anyio.Event] = {}
        self._sleeping: deque[anyio.Event] = deque()
        self._workers = 0
        self._free = 0  # workers not inside a handler
        self._idle = anyio.Event()
        self._idle.set()
        self._warned_full = False
        self._closed = False

    def __len__(self) -> int:
        """Containers with events queued or being handled."""
        return len(self._queues)

    @property
    def queued(self) -> int:
        """Events waiting, over all containers (not counting ones being handled)."""
        return sum(len(q) for q in self._queues.values())

    @property
    def workers(self) -> int:
        """Worker tasks in the pool now."""
        return self._workers

    def put_nowait(self, container_id: str, event_type: EventType, event: Event) -> bool:
        """Queue an event unless this container is at the bound (then False)."""
        queue = self._queues.get(container_id)
        if queue is None:
            if self._closed:
                raise RuntimeError("the queues are closed")
            self._queues[container_id] = deque(((event_type, event),))
            self._ready.append(container_id)
            if self._idle.is_set():
                self._idle = anyio.Event()
            if self._sleeping:
                self._sleeping.popleft().set()
            elif self._free == 0:
                self._spawn()
            return True
        if len(queue) >= self.max_queued:
            return False
        queue.append((event_type, event))
        return True

    async def put(self, container_id: str, event_type: EventType, event: Event) -> None:
        """Queue an event; waits only while this container is at the bound."""
        while not self.put_nowait(container_id, event_type, event):
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "container %s has %d events queued; reading events waits for its handler",
                    container_id,
                    self.max_queued,
                )
            space = self._space.get(container_id)
            if space is None:
                space = self._space[container_id] = anyio.Event()
            await space.wait()

    def close(self) -> None:
        """Let idle workers exit (the pool's task group can then end).
        Events still queued are handled first; nothing may be put after."""
        self._closed = True
        while self._sleeping:
            self._sleeping.popleft().set()

    def _spawn(self) -> None:
        self._workers += 1
        self._free += 1
        self._tg.start_soon(self._worker)

    async def _worker(self) -> None:
        try:
            while True:
                while self._ready:
                    container_id = self._ready.popleft()
                    await self._drain(container_id, self._queues[container_id])
                if self._closed or len(self._sleeping) >= MAX_IDLE_WORKERS:
                    return
                wake = anyio.Event()
                self._sleeping.append(wake)
                await wake.wait()
        finally:
            self._workers -= 1
            self._free -= 1

    async def _drain(self, container_id: str, queue: deque[tuple[EventType, Event]]) -> None:
        handler = self._handler
        try:
            while queue:
                event_type, event = queue.popleft()
                if self._space:
                    space = self._space.pop(container_id, None)
                    if space is not None:
                        space.set()
                self._free -= 1
                if self._free == 0 and self._ready:
                    self._spawn()  # others are waiting and we may be slow
                try:
                    await handler(container_id, event_type, event)
                except Exception:
                    log.exception(
                        "backend failed on %s event for container %s: %r",
                        event_type.value,
                        container_id,
                        event,
                    )
                finally:
                    self._free += 1
        finally:
            del self._queues[container_id]
            space = self._space.pop(container_id, None)
            if space is not None:
                space.set()
            if not self._queues:
                self._idle.set()

    async def join(self) -> None:
        """Wait until every queue is empty and every handler has returned."""
        while not self._idle.is_set():
            await self._idle.wait()
