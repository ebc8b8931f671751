from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from supervisor import Client, Container, FifoIO, NotFound, Task
from supervisor.client import oci_spec

#: Bound on any single wait in a test; containerd answers in milliseconds.
WAIT = 20.0


async def make_container(
    client: Client, rootfs: Path, cid: str, args: Sequence[str], **spec_options: Any
) -> Container:
    return await client.create_container(cid, oci_spec(rootfs, args, **spec_options))


async def start_with_fifos(
    client: Client, container: Container, *, stdin: bool = False, terminal: bool = False
) -> tuple[Task, FifoIO]:
    io = FifoIO.create(client.fifo_dir, container.id, stdin=stdin, terminal=terminal)
    task = await container.new_task(io)
    await task.start()
    return task, io


async def remove(container: Container, task: Task | None = None) -> None:
    """Force-delete the task (this handle, to release its IO), then the container."""
    with anyio.fail_after(WAIT):
        if task is None:
            with contextlib.suppress(NotFound):
                task = await container.task()
        if task is not None:
            await task.force_delete()
        await container.delete()
