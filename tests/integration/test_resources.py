from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from supervisor import Client, ContainerdError, FifoIO, TaskStatus
from supervisor.client import Resources

from .helpers import WAIT, make_container, remove

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


async def test_metrics_report_usage_and_limits(client: Client, rootfs: Path) -> None:
    container = await make_container(
        client,
        rootfs,
        "metrics",
        # Touch some memory and burn a little CPU, then idle.
        ["sh", "-c", "head -c 8000000 /dev/zero > /dev/shm/x; echo ready; sleep 60"],
        memory_limit=64 * MiB,
        pids_limit=20,
    )
    io = FifoIO.create(client.fifo_dir, "metrics")
    task = await container.new_task(io)
    await task.start()
    with anyio.fail_after(WAIT):
        assert await io.stdout_reader.receive() == b"ready\n"
    stats = await task.metrics()
    assert stats.memory_usage > 0
    assert stats.memory_limit == 64 * MiB
    assert stats.pids_current >= 1
    assert stats.pids_limit == 20
    assert stats.cpu_total_ns > 0
    assert stats.cgroup_version in (1, 2)
    assert stats.timestamp is not None
    await remove(container, task)


async def test_update_changes_limits(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "update", ["sleep", "60"])
    task = await container.new_task()
    await task.start()
    before = await task.metrics()
    assert before.pids_limit is None and before.memory_limit is None
    await task.update(Resources(memory_limit=32 * MiB, pids_limit=7, cpus=0.5))
    after = await task.metrics()
    assert (after.memory_limit, after.pids_limit) == (32 * MiB, 7)
    await remove(container)


async def test_pids_lists_every_process(client: Client, rootfs: Path) -> None:
    container = await make_container(
        client, rootfs, "pids", ["sh", "-c", "sleep 60 & sleep 60 & echo up; wait"]
    )
    io = FifoIO.create(client.fifo_dir, "pids")
    task = await container.new_task(io)
    init_pid = await task.start()
    with anyio.fail_after(WAIT):
        assert await io.stdout_reader.receive() == b"up\n"
    pids = await task.pids()
    assert init_pid in {p.pid for p in pids}
    assert len(pids) == 3
    assert all(p.exec_id is None for p in pids)
    await remove(container, task)


async def test_checkpoint_error_leaves_task_running(
    client: Client, rootfs: Path, tmp_path: Path
) -> None:
    if _criu_works():
        pytest.skip("CRIU works here; the error path needs a host where it cannot dump")
    container = await make_container(client, rootfs, "ckpt", ["sleep", "60"])
    task = await container.new_task()
    await task.start()
    with pytest.raises(ContainerdError, match="criu"):
        await task.checkpoint(str(tmp_path / "image"))
    assert (await task.status()).status is TaskStatus.RUNNING
    await remove(container)


def _criu_works() -> bool:
    criu = shutil.which("criu")
    if criu is None:
        return False
    return subprocess.run([criu, "check"], capture_output=True, timeout=30).returncode == 0


def _criu_reason() -> str:
    criu = shutil.which("criu")
    if criu is None:
        return "criu is not installed"
    done = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=30)
    lines = (done.stderr or done.stdout).strip().splitlines()
    detail = " | ".join(lines[-2:]) or f"exit {done.returncode}"
    return f"'criu check' fails on this kernel: {detail}"


async def test_checkpoint_and_restore(client: Client, rootfs: Path, tmp_path: Path) -> None:
    if not _criu_works():
        pytest.skip(_criu_reason())
    container = await make_container(
        client, rootfs, "restore", ["sh", "-c", "i=0; while true; do i=$((i+1)); sleep 1; done"]
    )
    task = await container.new_task()
    await task.start()
    image = tmp_path / "image"
    image.mkdir()
    await task.checkpoint(str(image), exit=True)
    with anyio.fail_after(WAIT):
        await task.wait()
    await task.delete()
    restored = await container.new_task(restore_from=str(image))
    await restored.start()
    assert (await restored.status()).status is TaskStatus.RUNNING
    await remove(container, restored)
