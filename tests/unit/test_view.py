"""The daemon's view for `ps`: a read is kept only if nothing touched the
container while it was made; an operation's lock makes it stale."""

from __future__ import annotations

import anyio
import pytest

from supervisor.client import ContainerInfo, ProcessState, TaskStatus
from supervisor.daemon._view import TouchingLock, View

pytestmark = pytest.mark.anyio


def _info(cid: str) -> ContainerInfo:
    return ContainerInfo(cid, {"x": "1"}, "io.containerd.runc.v2", {}, "", None, None)


def _task(cid: str, status: TaskStatus = TaskStatus.RUNNING) -> ProcessState:
    return ProcessState(cid, None, 42, status, None, False, "", "", "")


def test_a_read_is_kept_until_touched() -> None:
    view = View()
    view.touch("a")
    view.store("a", view.generation("a"), _info("a"), _task("a"))
    entry = view.fresh("a")
    assert entry is not None and entry.task is not None and entry.task.pid == 42
    view.touch("a")
    assert view.fresh("a") is None


def test_a_read_touched_while_it_was_made_is_not_kept() -> None:
    view = View()
    began = view.generation("a")
    view.touch("a")  # an exit event arrives while the read is in flight
    view.store("a", began, _info("a"), _task("a"))
    assert view.fresh("a") is None


def test_a_forgotten_container_made_again_never_finds_its_old_read() -> None:
    view = View()
    began = view.generation("a")  # 0: never touched
    view.store("a", began, _info("a"), _task("a", TaskStatus.STOPPED))
    assert view.fresh("a") is not None
    view.forget("a")
    assert view.fresh("a") is None
    in_flight = view.generation("a")
    view.touch("a")  # made again, under its lock
    view.store("a", in_flight, _info("a"), _task("a", TaskStatus.STOPPED))
    assert view.fresh("a") is None
    view.store("a", view.generation("a"), _info("a"), _task("a"))
    entry = view.fresh("a")
    assert entry is not None and entry.task is not None
    assert entry.task.status is TaskStatus.RUNNING


def test_touch_all_makes_every_entry_stale() -> None:
    view = View()
    for cid in "abc":
        view.store(cid, view.generation(cid), _info(cid), None)
    assert all(view.fresh(c) is not None for c in "abc")
    view.touch_all()
    assert all(view.fresh(c) is None for c in "abc")


async def test_the_lock_touches_on_entry_and_on_exit() -> None:
    view = View()
    lock = TouchingLock(view, "a")
    view.store("a", view.generation("a"), _info("a"), _task("a"))
    inside = anyio.Event()
    release = anyio.Event()

    async def operation() -> None:
        async with lock:
            inside.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(operation)
        await inside.wait()
        assert lock.locked()
        assert view.fresh("a") is None  # the operation may be changing it
        during = view.generation("a")
        view.store("a", during, _info("a"), _task("a"))  # a read while it works
        assert view.fresh("a") is not None
        release.set()
    assert not lock.locked()
    assert view.fresh("a") is None  # what was read during the operation is stale


async def test_the_lock_does_not_bring_back_a_container_forgotten_under_it() -> None:
    view = View()
    lock = TouchingLock(view, "a")
    async with lock:
        view.forget("a")
    assert view.generation("a") == 0
    assert view.entries == {}


async def test_touches_count_what_may_have_changed_since_a_listing() -> None:
    """The restore keeps a listing's read of a container only when nothing but
    its own sync's lock touched it since the daemon started."""
    view = View()
    assert view.touches("a") == 0
    async with TouchingLock(view, "a"):
        pass
    assert view.touches("a") == TouchingLock.TOUCHES  # the sync alone: keep the listing
    view.touch("b")  # an event for b
    async with TouchingLock(view, "b"):
        pass
    assert view.touches("b") == TouchingLock.TOUCHES + 1  # read b again
    view.forget("a")
    assert view.touches("a") == 0
