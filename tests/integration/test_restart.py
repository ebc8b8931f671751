"""The client across a containerd crash: typed errors while it is down, and the
same Client working again once it is back, with the task still alive."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from supervisor import Client, TaskStatus, Unavailable
from supervisor.testing import ContainerdProcess

from .helpers import WAIT, make_container

pytestmark = pytest.mark.anyio


async def test_calls_fail_typed_while_down_and_work_after(
    own_containerd: ContainerdProcess, own_client: Client, rootfs: Path
) -> None:
    container = await make_container(own_client, rootfs, "survivor", ["sleep", "60"])
    task = await container.new_task()
    pid = await task.start()

    async def wait_for_exit() -> None:
        with pytest.raises(Unavailable):
            await task.wait()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_exit)
            await anyio.wait_all_tasks_blocked()
            own_containerd.kill()
    with pytest.raises(Unavailable):
        await task.status()
    assert not await own_client.is_serving()

    own_containerd.restart()
    assert await own_client.is_serving()
    state = await task.status()
    assert (state.status, state.pid) == (TaskStatus.RUNNING, pid)
    await task.kill(signal.SIGKILL)
    with anyio.fail_after(WAIT):
        assert (await task.wait()).code == 137
    await task.delete()
    await container.delete()
