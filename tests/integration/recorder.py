from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from supervisor.events import Event, EventType, TaskExit


@dataclass(frozen=True)
class Delivery:
    at: float  # time.time() when the backend got it
    container_id: str
    event_type: EventType
    event: Event


class Recorder:
    """A backend that records every call and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._changed = anyio.Event()

    async def process_event(self, container_id: str, event_type: EventType, event: Event) -> None:
        self.deliveries.append(Delivery(time.time(), container_id, event_type, event))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[Recorder], bool]) -> None:
        """Wait (bound it with fail_after) until ``predicate(self)`` holds."""
        while not predicate(self):
            await self._changed.wait()

    def types(self, container_id: str) -> list[EventType]:
        return [d.event_type for d in self.deliveries if d.container_id == container_id]

    def exits(self) -> list[TaskExit]:
        return [d.event for d in self.deliveries if isinstance(d.event, TaskExit)]

    def count(self, event_type: EventType) -> int:
        return sum(1 for d in self.deliveries if d.event_type is event_type)
