from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from supervisor import Client, ConnectionState, FifoIO, Supervisor
from supervisor._proto.containerd.events import TaskExit as TaskExitPb
from supervisor._proto.containerd.services.events import v1 as events_pb
from supervisor._proto.google.protobuf import Any as AnyPb
from supervisor.events import EventType
from supervisor.testing import ContainerdProcess

from .helpers import WAIT, make_container, remove
from .recorder import Recorder

pytestmark = pytest.mark.anyio

CORE = [EventType.CREATE, EventType.START, EventType.EXIT, EventType.DELETE]


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def sup(
    containerd: ContainerdProcess, client: Client, recorder: Recorder
) -> AsyncIterator[Supervisor]:
    # Same namespace and FIFO dir as the leak-checked `client` fixture.
    async with Supervisor(
        recorder, containerd.address, client.namespace, fifo_dir=client.fifo_dir
    ) as s:
        yield s


async def publish(client: Client, topic: str, type_url: str, value: bytes) -> None:
    await client._events_stub.publish(
        events_pb.PublishRequest(topic=topic, event=AnyPb(type_url=type_url, value=value))
    )


async def run_to_exit(sup: Supervisor, rootfs: Path, cid: str, script: str) -> None:
    container = await make_container(sup.client, rootfs, cid, ["sh", "-c", script])
    task = await container.new_task()
    await task.start()
    with anyio.fail_after(WAIT):
        await task.wait()
    await task.delete()
    await container.delete()


async def test_order_kept_across_50_containers(
    sup: Supervisor, recorder: Recorder, rootfs: Path
) -> None:
    async def one(n: int) -> None:
        cid = f"c{n}"
        container = await make_container(sup.client, rootfs, cid, ["sleep", "30"])
        task = await container.new_task()
        await task.start()
        proc = await task.exec("e", ["sh", "-c", f"exit {n % 7}"])
        await proc.start()
        await proc.wait()
        await proc.delete()
        await task.pause()
        await task.resume()
        await remove(container, task)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(one, n)
        await recorder.wait_until(lambda r: r.count(EventType.DELETE) == 50)
    expected = [
        EventType.CREATE, EventType.START, EventType.EXEC_ADDED, EventType.EXEC_STARTED,
        EventType.EXIT, EventType.PAUSED, EventType.RESUMED, EventType.EXIT, EventType.DELETE,
    ]  # fmt: skip
    for n in range(50):
        assert recorder.types(f"c{n}") == expected, f"c{n}"
        exits = [e for e in recorder.exits() if e.container_id == f"c{n}"]
        assert [(e.exec_id, e.exit_status) for e in exits] == [("e", n % 7), (None, 137)]
    assert sup.pipeline.stats.duplicate_exits == 0


class SlowAndBroken(Recorder):
    """2 s per event for container 'slow'; raises for container 'broken'."""

    async def process_event(self, container_id: str, event_type: EventType, event: object) -> None:
        if container_id == "slow":
            await anyio.sleep(2)
        await super().process_event(container_id, event_type, event)  # type: ignore[arg-type]
        if container_id == "broken":
            raise RuntimeError("backend bug")


async def test_slow_or_failing_backend_does_not_delay_others(
    containerd: ContainerdProcess, client: Client, rootfs: Path
) -> None:
    backend = SlowAndBroken()
    async with Supervisor(backend, containerd.address, client.namespace) as sup:
        with anyio.fail_after(60):
            await run_to_exit(sup, rootfs, "slow", "exit 0")
            await run_to_exit(sup, rootfs, "broken", "exit 1")
            await run_to_exit(sup, rootfs, "fast", "exit 2")
            await backend.wait_until(lambda r: r.types("broken") == CORE)
            await backend.wait_until(lambda r: r.types("fast") == CORE)
            # Containerd's own timestamp on each event against when we handed it over.
            for d in backend.deliveries:
                if d.container_id == "fast":
                    assert d.event.timestamp is not None
                    delay = d.at - d.event.timestamp.timestamp()
                    assert delay < 0.1, (d.event_type, delay)
            assert backend.types("slow") != CORE  # still working through its queue
            await backend.wait_until(lambda r: r.types("slow") == CORE)


async def test_duplicate_and_unknown_events(
    sup: Supervisor, recorder: Recorder, rootfs: Path
) -> None:
    when = datetime.now(UTC)
    exit_pb = TaskExitPb(container_id="ghost", id="ghost", pid=4242, exit_status=9, exited_at=when)
    for _ in range(3):  # a shim's retries
        await publish(sup.client, "/tasks/exit", "containerd.events.TaskExit", bytes(exit_pb))
    await publish(sup.client, "/tasks/weird", "containerd.events.Weird", b"\x08\x01")
    await publish(sup.client, "/tasks/exit", "containerd.events.TaskExit", b"\xff\xff\xff")
    await run_to_exit(sup, rootfs, "after", "exit 5")
    with anyio.fail_after(WAIT):
        await recorder.wait_until(lambda r: r.types("after") == CORE)
    ghosts = [e for e in recorder.exits() if e.container_id == "ghost"]
    assert len(ghosts) == 1
    assert (ghosts[0].pid, ghosts[0].exit_status, ghosts[0].exec_id) == (4242, 9, None)
    assert ghosts[0].exited_at is not None
    assert abs(ghosts[0].exited_at.timestamp() - when.timestamp()) < 1e-3
    assert sup.pipeline.stats.duplicate_exits == 2
    assert sup.pipeline.stats.skipped == 2


async def test_oom_event(sup: Supervisor, recorder: Recorder, rootfs: Path) -> None:
    container = await make_container(
        sup.client,
        rootfs,
        "oom",
        ["sh", "-c", "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived"],
        memory_limit=8 << 20,
    )
    task = await container.new_task()
    await task.start()
    with anyio.fail_after(WAIT):
        status = await task.wait()
        await recorder.wait_until(lambda r: EventType.OOM in r.types("oom"))
    assert status.code != 0
    await task.delete()
    await container.delete()


async def test_cancellation_stops_everything(containerd: ContainerdProcess, client: Client) -> None:
    recorder = Recorder()
    with anyio.fail_after(WAIT):
        with anyio.CancelScope() as scope:
            async with Supervisor(recorder, containerd.address, client.namespace) as sup:
                assert sup.pipeline.state is ConnectionState.CONNECTED
                scope.cancel()
                await anyio.sleep_forever()
    assert sup.pipeline.state is ConnectionState.CLOSED


async def test_unreachable_containerd_is_unavailable(tmp_path: Path) -> None:
    from supervisor import Unavailable

    with pytest.raises(Unavailable, match="did not serve"):
        async with Supervisor(Recorder(), str(tmp_path / "nothing.sock"), "x", connect_timeout=0.3):
            pass


async def test_stopped_tasks_reported_on_start(
    containerd: ContainerdProcess, client: Client, rootfs: Path
) -> None:
    container = await make_container(client, rootfs, "early", ["sh", "-c", "exit 4"])
    task = await container.new_task()
    await task.start()
    with anyio.fail_after(WAIT):
        await task.wait()
    recorder = Recorder()
    async with Supervisor(recorder, containerd.address, client.namespace) as sup:
        exits = recorder.exits()
        assert len(exits) == 0 or exits[0].container_id == "early"
        with anyio.fail_after(WAIT):
            await recorder.wait_until(lambda r: len(r.exits()) == 1)
        (ex,) = recorder.exits()
        assert (ex.container_id, ex.exit_status, ex.reconciled) == ("early", 4, True)
        assert sup.pipeline.stats.reconciled_exits == 1
    await task.delete()
    await container.delete()


async def test_outage_exits_delivered_exactly_once(
    own_containerd: ContainerdProcess, own_client: Client, rootfs: Path
) -> None:
    """containerd SIGKILLed while 20 containers run, which then exit during the
    outage; restarted: every exit reaches the backend once, with its code, and
    none twice when the shims' late retries arrive."""
    recorder = Recorder()
    count = 20
    async with Supervisor(
        recorder, own_containerd.address, own_client.namespace, fifo_dir=own_client.fifo_dir
    ) as sup:
        tasks, ios = [], []
        for n in range(count):
            container = await make_container(
                sup.client, rootfs, f"o{n}", ["sh", "-c", f"read line; exit {n}"]
            )
            io = FifoIO.create(sup.client.fifo_dir, container.id, stdin=True)
            task = await container.new_task(io)
            await task.start()
            tasks.append(task)
            ios.append(io)
        with anyio.fail_after(WAIT):
            await recorder.wait_until(lambda r: r.count(EventType.START) == count)

        own_containerd.kill()
        with anyio.fail_after(WAIT):
            await sup.pipeline.wait_for_state(ConnectionState.RECONNECTING)
            for io in ios:  # the shims carry stdin and stdout without containerd
                assert io.stdin_writer is not None
                await io.stdin_writer.send(b"go\n")
            for io in ios:  # EOF on stdout: the process has exited
                assert await io.stdout_reader.read_all() == b""
        assert recorder.count(EventType.EXIT) == 0

        own_containerd.restart()
        with anyio.fail_after(WAIT):
            await sup.wait_connected()
            await recorder.wait_until(lambda r: r.count(EventType.EXIT) == count)
        with anyio.fail_after(30):  # shims retry for up to ~15 s
            await sup.pipeline.wait_stats(lambda s: s.duplicate_exits >= count)
        exits = sorted(recorder.exits(), key=lambda e: int(e.container_id[1:]))
        assert [(e.container_id, e.exit_status) for e in exits] == [
            (f"o{n}", n) for n in range(count)
        ]
        assert all(e.exited_at is not None for e in exits)
        for task in tasks:
            await task.delete()
            await task.container.delete()
        with anyio.fail_after(WAIT):
            await recorder.wait_until(lambda r: r.count(EventType.DELETE) == count)
        assert recorder.count(EventType.EXIT) == count
