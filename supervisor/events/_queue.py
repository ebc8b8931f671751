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

Handler = Callable[[str, EventType, Event], Awaitable[None]]


class SerialQueues:
    """Per-container serial queues.

    Events for one container are handled in order, one at a time, by a
    worker task that exists only while the container has events queued: an
    idle container holds no task and no memory. Different containers run
    concurrently in ``task_group``.

    The bound: at most ``max_queued`` events wait for one container. When a
    container is at the bound, :meth:`put` waits for its worker to take the
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
        self._space: dict[str, anyio.Event] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self._warned_full = False

    def __len__(self) -> int:
        """Containers with events queued or being handled."""
        return len(self._queues)

    @property
    def queued(self) -> int:
        """Events waiting, over all containers (not counting ones being handled)."""
        return sum(len(q) for q in self._queues.values())

    async def put(self, container_id: str, event_type: EventType, event: Event) -> None:
        """Queue an event; waits only while this container is at the bound."""
        queue = self._queues.get(container_id)
        if queue is None:
            queue = self._queues[container_id] = deque()
            queue.append((event_type, event))
            if self._idle.is_set():
                self._idle = anyio.Event()
            self._tg.start_soon(self._drain, container_id, queue)
            return
        while len(queue) >= self.max_queued:
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "container %s has %d events queued; reading events waits for its handler",
                    container_id,
                    len(queue),
                )
            space = self._space.get(container_id)
            if space is None:
                space = self._space[container_id] = anyio.Event()
            await space.wait()
            queue = self._queues.get(container_id)
            if queue is None:
                await self.put(container_id, event_type, event)
                return
        queue.append((event_type, event))

    async def _drain(self, container_id: str, queue: deque[tuple[EventType, Event]]) -> None:
        handler = self._handler
        try:
            while queue:
                event_type, event = queue.popleft()
                space = self._space.pop(container_id, None)
                if space is not None:
                    space.set()
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
