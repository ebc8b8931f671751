"""The sync scheduler: one sync at a time per container, others in parallel,
failures retried (never dropped), requested times honoured."""

from __future__ import annotations

import time

import anyio
import pytest

from supervisor.daemon._scheduler import SyncScheduler
from supervisor.errors import Unavailable

pytestmark = pytest.mark.anyio


async def test_failed_sync_is_retried_until_it_succeeds() -> None:
    calls: list[str] = []
    done = anyio.Event()

    async def sync(cid: str) -> float | None:
        calls.append(cid)
        if len(calls) < 3:
            raise Unavailable("containerd away")
        done.set()
        return None

    scheduler = SyncScheduler(sync)
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        scheduler.request("a")
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert calls == ["a", "a", "a"]
    assert scheduler.errors == 2


async def test_one_container_at_a_time_and_a_request_while_running_runs_again() -> None:
    running: set[str] = set()
    overlaps = 0
    calls: dict[str, int] = {"a": 0, "b": 0}
    release = anyio.Event()
    finished = anyio.Event()

    async def sync(cid: str) -> float | None:
        nonlocal overlaps
        if cid in running:
            overlaps += 1
        running.add(cid)
        calls[cid] += 1
        if cid == "a" and calls["a"] == 1:
            await release.wait()  # "a" is slow; "b" must not wait for it
        running.discard(cid)
        if calls["a"] == 2:
            finished.set()
        return None

    scheduler = SyncScheduler(sync)
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        scheduler.request("a")
        scheduler.request("b")
        with anyio.fail_after(5):
            while calls["b"] == 0 or calls["a"] == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        scheduler.request("a")  # while "a" runs
        scheduler.request("a")
        release.set()
        with anyio.fail_after(5):
            await finished.wait()
        tg.cancel_scope.cancel()
    assert overlaps == 0
    assert calls == {"a": 2, "b": 1}


async def test_a_sync_runs_again_at_the_time_it_asks() -> None:
    times: list[float] = []
    done = anyio.Event()

    async def sync(cid: str) -> float | None:
        times.append(time.monotonic())
        if len(times) == 1:
            return time.time() + 0.3
        done.set()
        return None

    scheduler = SyncScheduler(sync)
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        scheduler.request("a")
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert times[1] - times[0] >= 0.29


async def test_an_unexpected_error_is_retried_too() -> None:
    calls = 0
    done = anyio.Event()

    async def sync(cid: str) -> float | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug")
        done.set()
        return None

    scheduler = SyncScheduler(sync)
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        scheduler.request("a")
        with anyio.fail_after(10):
            await done.wait()
        tg.cancel_scope.cancel()
    assert calls == 2
