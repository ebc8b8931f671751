from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from supervisor import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    FifoIO,
    InvalidArgument,
    NotFound,
    SupervisorError,
)
from supervisor.client import RuncOptions, oci_spec
from supervisor.testing import ContainerdProcess

from .conftest import leak_check
from .helpers import WAIT, make_container, remove

pytestmark = pytest.mark.anyio


async def test_labels_list_and_update(client: Client, rootfs: Path) -> None:
    spec = oci_spec(rootfs, ["true"])
    web = await client.create_container("web", spec, labels={"app": "web", "tier": "front"})
    await client.create_container("db", spec, labels={"app": "db"})
    assert web.info.labels == {"app": "web", "tier": "front"}
    assert web.info.runtime == "io.containerd.runc.v2"
    assert web.info.spec["root"]["path"] == str(rootfs)
    assert web.info.spec["linux"]["cgroupsPath"] == f"/{client.namespace}/web"
    assert web.info.created_at is not None

    found = await client.list_containers('labels."app"==web')
    assert [c.id for c in found] == ["web"]
    assert sorted(c.id for c in await client.list_containers()) == ["db", "web"]

    info = await web.update_labels({"version": "2"}, remove=["tier"])
    assert info.labels == {"app": "web", "version": "2"}
    loaded = await client.load_container("web")
    assert loaded.info.labels == {"app": "web", "version": "2"}
    assert loaded.info.spec == web.info.spec

    for cid in ("web", "db"):
        await (await client.load_container(cid)).delete()
    assert await client.list_containers() == []


async def test_runtime_options_round_trip(client: Client, rootfs: Path) -> None:
    container = await client.create_container(
        "opts", oci_spec(rootfs, ["echo", "ok"]), runtime_options=RuncOptions(binary_name="runc")
    )
    io = FifoIO.create(client.fifo_dir, "opts")
    task = await container.new_task(io)
    await task.start()
    with anyio.fail_after(WAIT):
        assert await io.stdout_reader.read_all() == b"ok\n"
        assert (await task.wait()).code == 0
    await remove(container, task)


async def test_already_exists_and_not_found(client: Client, rootfs: Path) -> None:
    spec = oci_spec(rootfs, ["true"])
    container = await client.create_container("dup", spec)
    with pytest.raises(AlreadyExists):
        await client.create_container("dup", spec)
    with pytest.raises(NotFound):
        await client.load_container("missing")
    with pytest.raises(NotFound):
        await container.task()
    await container.delete()
    with pytest.raises(NotFound):
        await container.delete()


async def test_delete_refused_while_task_exists(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "busy", ["sleep", "60"])
    task = await container.new_task()
    await task.start()
    with pytest.raises(FailedPrecondition, match="still has a task"):
        await container.delete()
    assert [c.id for c in await client.list_containers()] == ["busy"]
    with anyio.fail_after(WAIT):
        assert (await task.force_delete()).code == 137
    await container.delete()


async def test_task_delete_refused_while_running(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "running", ["sleep", "60"])
    task = await container.new_task()
    await task.start()
    with pytest.raises(FailedPrecondition):
        await task.delete()
    await remove(container)


@pytest.mark.parametrize("bad", ["../x", "", "a b", "x" * 77, "-lead", "trail.", "a/b"])
async def test_bad_ids_create_nothing(client: Client, rootfs: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.create_container(bad, oci_spec(rootfs, ["true"]))
    assert "container id" in str(info.value)
    with pytest.raises(InvalidArgument):
        await client.load_container(bad)
    assert await client.list_containers() == []


async def test_bad_namespace_is_refused(containerd: ContainerdProcess) -> None:
    with pytest.raises(InvalidArgument, match="namespace"):
        Client(containerd.address, "bad namespace")


async def test_bad_specs(client: Client, rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="non-empty"):
        oci_spec(rootfs, [])
    with pytest.raises(InvalidArgument, match="not a directory"):
        oci_spec(tmp_path / "nope", ["true"])
    with pytest.raises(InvalidArgument, match="absolute"):
        oci_spec("relative/root", ["true"])
    with pytest.raises(InvalidArgument, match="process"):
        await client.create_container("nospec", {"root": {"path": str(rootfs)}})
    assert await client.list_containers() == []


async def test_missing_binary_fails_create_and_cleans_up(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "nobin", ["/no/such/binary"])
    io = FifoIO.create(client.fifo_dir, "nobin")
    with pytest.raises(SupervisorError) as info:
        task = await container.new_task(io)
        await task.start()
    assert "no/such/binary" in str(info.value)
    assert not io.directory.exists()
    await remove(container)


async def test_terminal_mismatch_is_refused(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "mismatch", ["true"])
    io = FifoIO.create(client.fifo_dir, "mm", terminal=True)
    with pytest.raises(InvalidArgument, match="terminal"):
        await container.new_task(io)
    assert not io.directory.exists()
    await container.delete()


async def test_cancelled_create_leaves_no_task(client: Client, rootfs: Path) -> None:
    """Cancel Tasks.Create at several points of its ~50 ms; never a task left."""
    container = await make_container(client, rootfs, "cancel", ["sleep", "60"])
    cancelled = 0
    for delay in (0.0, 0.002, 0.01, 0.02, 0.04, 0.08):
        io = FifoIO.create(client.fifo_dir, "cancel")
        with anyio.move_on_after(delay) as scope:
            task = await container.new_task(io)
        if scope.cancelled_caught:
            cancelled += 1
            assert not io.directory.exists()
            assert await client.list_tasks() == []
        else:
            await task.delete()
    assert cancelled >= 2
    await container.delete()


async def test_leak_check_finds_and_removes_leftovers(
    containerd: ContainerdProcess, rootfs: Path, tmp_path: Path, namespace: str
) -> None:
    fifo_dir = tmp_path / "leaky"
    async with Client(containerd.address, namespace, fifo_dir=str(fifo_dir)) as c:
        container = await make_container(c, rootfs, "leaky", ["sleep", "60"])
        orphan = FifoIO.create(fifo_dir, "orphan")
        task = await container.new_task()
        await task.start()
        leaks = await leak_check(c, containerd, fifo_dir)
        assert any(s.startswith("task leaky") for s in leaks)
        assert "container leaky" in leaks
        assert any(s.startswith("fifo dir") for s in leaks)
        assert await leak_check(c, containerd, fifo_dir) == []
        await orphan.aclose()
