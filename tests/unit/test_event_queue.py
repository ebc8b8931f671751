import logging
from collections import defaultdict

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.events import Event, EventType, SerialQueues, TaskStart

pytestmark = pytest.mark.anyio

#: A bound on every wait, so that a broken queue fails the test instead of hanging it.
TIMEOUT = 5


def start(cid: str, n: int) -> TaskStart:
    return TaskStart(cid, n)


class Gated:
    """A handler that records calls and blocks each (container, n) until released."""

    def __init__(self, blocked: set[tuple[str, int]] | None = None) -> None:
        self.blocked = blocked if blocked is not None else set()
        self.gates: dict[tuple[str, int], anyio.Event] = defaultdict(anyio.Event)
        self.started: list[tuple[str, int]] = []
        self.done: list[tuple[str, int]] = []
        self.active: dict[str, int] = defaultdict(int)
        self.max_active: dict[str, int] = defaultdict(int)

    def release(self, cid: str, n: int) -> None:
        self.gates[(cid, n)].set()

    async def __call__(self, cid: str, event_type: EventType, event: Event) -> None:
        assert event_type is EventType.START and isinstance(event, TaskStart)
        key = (cid, event.pid)
        self.started.append(key)
        self.active[cid] += 1
        self.max_active[cid] = max(self.max_active[cid], self.active[cid])
        try:
            if key in self.blocked:
                await self.gates[key].wait()
            await anyio.lowlevel.checkpoint()
        finally:
            self.active[cid] -= 1
        self.done.append(key)


def test_max_queued_must_be_positive() -> None:
    async def handler(cid: str, event_type: EventType, event: Event) -> None:
        pass

    with pytest.raises(ValueError, match="at least 1"):
        SerialQueues(None, handler, max_queued=0)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    puts=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 3)), max_size=40),
    yields=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    max_queued=st.integers(1, 4),
)
async def test_order_kept_per_container(
    puts: list[tuple[str, int]], yields: list[int], max_queued: int
) -> None:
    handled: dict[str, list[int]] = defaultdict(list)
    active: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    calls = 0

    async def handler(cid: str, event_type: EventType, event: Event) -> None:
        nonlocal calls
        assert isinstance(event, TaskStart)
        active[cid] += 1
        if active[cid] > 1:
            overlaps.append(cid)
        for _ in range(yields[calls % len(yields)]):
            await anyio.lowlevel.checkpoint()
        calls += 1
        handled[cid].append(event.pid)
        active[cid] -= 1

    expected: dict[str, list[int]] = defaultdict(list)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler, max_queued=max_queued)
            for n, (cid, pause) in enumerate(puts):
                expected[cid].append(n)
                await queues.put(cid, EventType.START, start(cid, n))
                for _ in range(pause):
                    await anyio.lowlevel.checkpoint()
            await queues.join()
            assert len(queues) == 0
            queues.close()
    assert handled == expected
    assert overlaps == []


async def test_containers_run_concurrently() -> None:
    handler = Gated(blocked={("a", 1)})
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler)
            await queues.put("a", EventType.START, start("a", 1))
            await queues.put("a", EventType.START, start("a", 2))
            await queues.put("b", EventType.START, start("b", 1))
            await queues.put("b", EventType.START, start("b", 2))
            await anyio.wait_all_tasks_blocked()
            assert handler.done == [("b", 1), ("b", 2)]
            assert handler.started == [("a", 1), ("b", 1), ("b", 2)]
            assert len(queues) == 1  # b's worker is gone, a's waits on its handler
            handler.release("a", 1)
            await queues.join()
            queues.close()
    assert handler.done == [("b", 1), ("b", 2), ("a", 1), ("a", 2)]


async def test_one_handler_at_a_time_per_container() -> None:
    handler = Gated(blocked={("a", 1), ("a", 2), ("a", 3)})
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler)
            for n in (1, 2, 3):
                await queues.put("a", EventType.START, start("a", n))
            for n in (1, 2, 3):
                await anyio.wait_all_tasks_blocked()
                assert handler.started == [("a", i) for i in range(1, n + 1)]
                assert handler.active["a"] == 1
                assert queues.queued == 3 - n
                handler.release("a", n)
            await queues.join()
            queues.close()
    assert handler.done == [("a", 1), ("a", 2), ("a", 3)]
    assert handler.max_active["a"] == 1


async def test_handler_exception_is_logged_and_queue_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[int] = []

    async def handler(cid: str, event_type: EventType, event: Event) -> None:
        assert isinstance(event, TaskStart)
        if event.pid == 2:
            raise RuntimeError("backend broke")
        handled.append(event.pid)

    caplog.set_level(logging.ERROR, logger="supervisor.events")
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler)
            for n in (1, 2, 3):
                await queues.put("ctr-7f3a", EventType.START, start("ctr-7f3a", n))
            await queues.join()
            queues.close()
    assert handled == [1, 3]
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "supervisor.events"
    assert "ctr-7f3a" in record.getMessage()
    assert "start" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_idle_containers_hold_no_queue() -> None:
    handler = Gated(blocked={("a", 1)})
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler)
            assert len(queues) == 0
            await queues.put("a", EventType.START, start("a", 1))
            await queues.put("b", EventType.START, start("b", 1))
            await queues.put("c", EventType.START, start("c", 1))
            assert len(queues) == 3
            await anyio.wait_all_tasks_blocked()
            assert len(queues) == 1
            handler.release("a", 1)
            await queues.join()
            assert (len(queues), queues.queued) == (0, 0)
            # A container seen before gets a fresh worker on its next event.
            await queues.put("a", EventType.START, start("a", 2))
            assert len(queues) == 1
            await queues.join()
            assert len(queues) == 0
            queues.close()
    assert handler.done == [("b", 1), ("c", 1), ("a", 1), ("a", 2)]


async def test_put_waits_at_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    handler = Gated(blocked={("a", 1), ("a", 2)})
    put_done = anyio.Event()

    async def put_over_bound() -> None:
        await queues.put("a", EventType.START, start("a", 5))
        put_done.set()

    caplog.set_level(logging.WARNING, logger="supervisor.events")
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler, max_queued=3)
            await queues.put("a", EventType.START, start("a", 1))
            await anyio.wait_all_tasks_blocked()  # a's handler holds event 1
            for n in (2, 3, 4):
                await queues.put("a", EventType.START, start("a", n))
            assert queues.queued == 3
            tg.start_soon(put_over_bound)
            await anyio.wait_all_tasks_blocked()
            assert not put_done.is_set()
            assert queues.queued == 3
            assert any("reading events waits" in r.getMessage() for r in caplog.records)

            # Another container is not held back by a's bound.
            await queues.put("b", EventType.START, start("b", 1))
            await anyio.wait_all_tasks_blocked()
            assert ("b", 1) in handler.done
            assert not put_done.is_set()

            # a's handler returns and its worker takes event 2: room for event 5.
            handler.release("a", 1)
            await put_done.wait()
            assert handler.started[-1] == ("a", 2)
            assert ("a", 2) not in handler.done
            assert queues.queued == 3
            handler.release("a", 2)
            await queues.join()
            queues.close()
    assert [k for k in handler.done if k[0] == "a"] == [("a", n) for n in range(1, 6)]


async def test_blocked_put_survives_the_worker_ending() -> None:
    # A put waiting at the bound when the worker drains everything and exits
    # must still queue its event (on a new worker), in order.
    handler = Gated(blocked={("a", 1)})
    put_done = anyio.Event()

    async def put_over_bound() -> None:
        await queues.put("a", EventType.START, start("a", 3))
        put_done.set()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler, max_queued=1)
            await queues.put("a", EventType.START, start("a", 1))
            await anyio.wait_all_tasks_blocked()
            await queues.put("a", EventType.START, start("a", 2))
            tg.start_soon(put_over_bound)
            await anyio.wait_all_tasks_blocked()
            assert not put_done.is_set()
            handler.release("a", 1)
            await put_done.wait()
            await queues.join()
            assert len(queues) == 0
            queues.close()
    assert handler.done == [("a", 1), ("a", 2), ("a", 3)]


async def test_join_waits_for_in_flight_handlers() -> None:
    handler = Gated(blocked={("a", 1)})
    joined = anyio.Event()

    async def join() -> None:
        await queues.join()
        joined.set()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler)
            await queues.put("a", EventType.START, start("a", 1))
            await queues.put("b", EventType.START, start("b", 1))
            tg.start_soon(join)
            await anyio.wait_all_tasks_blocked()
            assert not joined.is_set()
            assert handler.done == [("b", 1)]
            assert queues.queued == 0  # nothing waiting, but a's handler is in flight
            handler.release("a", 1)
            await joined.wait()
            assert handler.done == [("b", 1), ("a", 1)]
            assert len(queues) == 0
            queues.close()


async def test_join_when_idle_returns_at_once() -> None:
    handler = Gated()
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            queues = SerialQueues(tg, handler)
            await queues.join()
            await queues.put("a", EventType.START, start("a", 1))
            await queues.join()
            queues.close()
    assert handler.done == [("a", 1)]
