"""A private containerd for the session, a busybox rootfs, and a leak-checked
client in a fresh namespace for every test."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from supervisor import Client, NotFound
from supervisor.testing import (
    ContainerdProcess,
    busybox_rootfs,
    namespace_leftovers,
    namespace_processes,
    remove_namespace_dirs,
    start_containerd,
)

#: How long a shim may take to exit once its last task is deleted.
SHIM_EXIT_TIMEOUT = 3.0
#: Bound on removing the snapshots a test left, leaves first.
SNAPSHOT_CLEANUP_TIMEOUT = 30.0


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (containerd and runc)"
    for binary in ("containerd", "containerd-shim-runc-v2", "runc", "busybox"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (apt-get install containerd runc busybox-static)"
    return None


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerdProcess]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    daemon = start_containerd(tmp_path_factory.mktemp("containerd"))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    return busybox_rootfs(tmp_path_factory.mktemp("rootfs"))


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:50].rstrip("-")
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fifo_dir(tmp_path: Path) -> Path:
    return tmp_path / "fifo"


async def leak_check(client: Client, containerd: ContainerdProcess, fifo_dir: Path) -> list[str]:
    """Everything the test left in its namespace; removes it all."""
    leaks: list[str] = []
    for state in await client.list_tasks():
        leaks.append(f"task {state.container_id} ({state.status.value})")
        container = await client.load_container(state.container_id)
        await (await container.task()).force_delete()
    for info in await client.list_containers():
        leaks.append(f"container {info.id}")
        with contextlib.suppress(NotFound):
            await (await client.load_container(info.id)).delete()
    leaks += await _image_leaks(client)
    if fifo_dir.is_dir():
        for entry in fifo_dir.iterdir():
            leaks.append(f"fifo dir {entry}")
            shutil.rmtree(entry, ignore_errors=True)
    with anyio.move_on_after(SHIM_EXIT_TIMEOUT):
        while namespace_processes(client.namespace):  # noqa: ASYNC110 (a shim exits after Delete)
            await anyio.sleep(0.05)
    leaks += [f"process {p} (shim or in a cgroup)" for p in namespace_processes(client.namespace)]
    leaks += [f"cgroup or runc state {p}" for p in namespace_leftovers(client.namespace)]
    bundles = containerd.task_state_dir(client.namespace)
    if bundles.is_dir():
        leaks += [f"task bundle {p}" for p in bundles.iterdir()]
    remove_namespace_dirs(client.namespace)
    return leaks


async def _image_leaks(client: Client) -> list[str]:
    """Images and leases the test left, and the content and snapshots that
    containerd's garbage collection keeps once those are gone; removes it all."""
    leaks: list[str] = []
    for image in await client.images.list():
        leaks.append(f"image {image.name}")
        await client.images.delete(image.name)
    for lease in await client.leases.list():
        leaks.append(f"lease {lease.id}")
        await client.leases.delete(lease.id)
    if not await client.content.list() and not await client.snapshots.list():
        return leaks
    await client.leases.collect_garbage()
    for info in await client.content.list():
        leaks.append(f"content {info.digest} {dict(info.labels)}")
        with contextlib.suppress(NotFound):
            await client.content.delete(info.digest)
    with anyio.fail_after(SNAPSHOT_CLEANUP_TIMEOUT):
        while snapshots := await client.snapshots.list():
            # Leaves first: a snapshot with children cannot go.
            parents = {s.parent for s in snapshots}
            for snapshot in snapshots:
                if snapshot.name not in parents:
                    leaks.append(f"snapshot {snapshot.name} ({snapshot.kind.value})")
                    with contextlib.suppress(NotFound):
                        await client.snapshots.remove(snapshot.name)
    return leaks


@contextlib.asynccontextmanager
async def leak_checked_client(
    containerd: ContainerdProcess, namespace: str, fifo_dir: Path, *, own: bool = False
) -> AsyncIterator[Client]:
    # A test's own containerd is the test's to clean: the client may clear the
    # dead task bundles a killed containerd leaves (README: after containerd crashes).
    state = (str(containerd.state), str(containerd.root)) if own else None
    async with Client(
        containerd.address, namespace, fifo_dir=str(fifo_dir), containerd_state=state
    ) as c:
        yield c
        leaks = await leak_check(c, containerd, fifo_dir)
    if leaks:
        pytest.fail("left behind: " + ", ".join(leaks))


@pytest.fixture
async def client(
    containerd: ContainerdProcess, namespace: str, fifo_dir: Path
) -> AsyncIterator[Client]:
    async with leak_checked_client(containerd, namespace, fifo_dir) as c:
        yield c


@pytest.fixture
def own_containerd(tmp_path: Path) -> Iterator[ContainerdProcess]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    daemon = start_containerd(tmp_path / "ctd")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
async def own_client(
    own_containerd: ContainerdProcess, namespace: str, tmp_path: Path
) -> AsyncIterator[Client]:
    async with leak_checked_client(own_containerd, namespace, tmp_path / "own-fifo", own=True) as c:
        yield c
