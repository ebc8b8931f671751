"""The pipeline's routing decisions, without containerd: exits through the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from supervisor.events import (
    Event,
    EventPipeline,
    EventType,
    SerialQueues,
    TaskDelete,
    TaskExit,
    TaskStart,
)

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, EventType, Event]] = []

    async def process_event(self, cid: str, event_type: EventType, event: Event) -> None:
        self.seen.append((cid, event_type, event))


class NoClient:
    address = "/nonexistent"
    namespace = "ns"


@asynccontextmanager
async def pipeline() -> AsyncIterator[tuple[EventPipeline, Recorder]]:
    backend = Recorder()
    p = EventPipeline(NoClient(), backend)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            p._queues = SerialQueues(tg, backend.process_event)
            yield p, backend
            await p._queues.join()
            p._queues.close()


def exit_(pid: int, code: int = 0, exec_id: str | None = None) -> TaskExit:
    return TaskExit("c1", exec_id, pid, code, None)


async def route(p: EventPipeline, event_type: EventType, event: Any) -> None:
    await p._dispatch(event_type, event)


async def test_duplicate_exits_are_dropped() -> None:
    async with pipeline() as (p, backend):
        for _ in range(3):
            await route(p, EventType.EXIT, exit_(5, 1))
    assert [e for _, t, e in backend.seen if t is EventType.EXIT] == [exit_(5, 1)]
    assert p.stats.duplicate_exits == 2


async def test_a_reused_pid_is_a_new_process() -> None:
    async with pipeline() as (p, backend):
        await route(p, EventType.START, TaskStart("c1", 5))
        await route(p, EventType.EXIT, exit_(5, 1))
        await route(p, EventType.START, TaskStart("c1", 5))  # the pid came round again
        await route(p, EventType.EXIT, exit_(5, 2))
    codes = [e.exit_status for _, t, e in backend.seen if isinstance(e, TaskExit)]
    assert codes == [1, 2]


async def test_a_delete_carries_a_lost_exit_once() -> None:
    async with pipeline() as (p, backend):
        await route(p, EventType.START, TaskStart("c1", 9))
        # The exit was lost in an outage; the delete has its status.
        await route(p, EventType.DELETE, TaskDelete("c1", None, 9, 3, None))
        await route(p, EventType.EXIT, exit_(9, 3))  # a late shim retry
    types = [t for _, t, _ in backend.seen]
    assert types == [EventType.START, EventType.EXIT, EventType.DELETE]
    [ex] = [e for _, _, e in backend.seen if isinstance(e, TaskExit)]
    assert (ex.exit_status, ex.reconciled) == (3, True)


async def test_a_delete_of_a_never_started_task_has_no_exit() -> None:
    async with pipeline() as (p, backend):
        await route(p, EventType.DELETE, TaskDelete("c1", None, 9, 0, None))
    assert [t for _, t, _ in backend.seen] == [EventType.DELETE]
