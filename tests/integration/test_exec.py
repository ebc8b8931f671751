from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from supervisor import Client, FifoIO, NotFound, TaskStatus
from supervisor.errors import FailedPrecondition, InvalidArgument

from .helpers import WAIT, make_container, remove

pytestmark = pytest.mark.anyio


async def test_exec_output_and_exit_code(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "exec", ["sleep", "60"], env={"FOO": "bar"})
    task = await container.new_task()
    await task.start()
    io = FifoIO.create(client.fifo_dir, "exec1")
    proc = await task.exec("e1", ["sh", "-c", 'echo "$FOO"; exit 5'], io)
    assert (await proc.status()).status is TaskStatus.CREATED
    with anyio.fail_after(WAIT):
        await proc.start()
        assert await io.stdout_reader.read_all() == b"bar\n"
        assert (await proc.wait()).code == 5
    assert (await proc.status()).status is TaskStatus.STOPPED
    assert (await proc.delete()).code == 5
    assert not io.directory.exists()
    with pytest.raises(NotFound):
        await proc.status()
    await remove(container)


async def test_exec_pid_in_pids_with_exec_id(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "pids", ["sleep", "60"])
    task = await container.new_task()
    init_pid = await task.start()
    proc = await task.exec("sleeper", ["sleep", "60"])
    exec_pid = await proc.start()
    pids = {p.pid: p.exec_id for p in await task.pids()}
    assert pids == {init_pid: None, exec_pid: "sleeper"}
    await proc.kill(signal.SIGKILL)
    with anyio.fail_after(WAIT):
        assert (await proc.wait()).code == 137
    await proc.delete()
    assert [p.pid for p in await task.pids()] == [init_pid]
    await remove(container)


async def test_exec_stdin_closed_before_start(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "stdin", ["sleep", "60"])
    task = await container.new_task()
    await task.start()
    io = FifoIO.create(client.fifo_dir, "cat", stdin=True)
    proc = await task.exec("cat", ["cat"], io)
    assert io.stdin_writer is not None
    with anyio.fail_after(WAIT):
        await io.stdin_writer.send(b"early input\n")
        await proc.close_stdin()  # held until start, as the shim has no stdin yet
        await proc.start()
        assert await io.stdout_reader.read_all() == b"early input\n"
        assert (await proc.wait()).code == 0
    await proc.delete()
    await remove(container)


async def test_exec_terminal_resize(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "ttyexec", ["sleep", "60"])
    task = await container.new_task()
    await task.start()
    io = FifoIO.create(client.fifo_dir, "tty", stdin=True, terminal=True)
    proc = await task.exec("tty", ["sh", "-c", "read x; stty size"], io)
    assert io.stdin_writer is not None
    with anyio.fail_after(WAIT):
        await proc.start()
        await proc.resize(120, 33)
        await io.stdin_writer.send(b"\n")
        out = await io.stdout_reader.read_all()
        assert (await proc.wait()).code == 0
    assert b"33 120" in out
    await proc.delete()
    await remove(container)


async def test_exec_bad_input(client: Client, rootfs: Path) -> None:
    container = await make_container(client, rootfs, "badexec", ["sleep", "60"])
    task = await container.new_task()
    await task.start()
    io = FifoIO.create(client.fifo_dir, "bad")
    with pytest.raises(InvalidArgument, match="exec id"):
        await task.exec("../x", ["true"], io)
    assert not io.directory.exists()
    with pytest.raises(InvalidArgument):
        await task.exec("empty", [])
    with pytest.raises(InvalidArgument, match="terminal"):
        await task.exec("mismatch", {"args": ["true"], "terminal": True})
    never_started = FifoIO.create(client.fifo_dir, "dup")
    proc = await task.exec("dup", ["true"], never_started)
    with pytest.raises(FailedPrecondition):
        await task.exec("dup", ["true"])
    with pytest.raises(FailedPrecondition, match="no terminal"):
        await proc.resize(10, 10)
    with pytest.raises(InvalidArgument, match="not to an exec"):
        await proc.kill(signal.SIGKILL, all=True)
    await remove(container, task)  # releases the never-started exec's FIFOs too
    assert not never_started.directory.exists()
    assert list(client_fifo_entries(client)) == []


def client_fifo_entries(client: Client) -> list[Path]:
    base = Path(client.fifo_dir)
    return list(base.iterdir()) if base.exists() else []
