"""`supervisor demo`: run a container through the library against a private
containerd started for the occasion, and show what the client can do."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from .client import Client, FifoIO, Task, oci_spec
from .testing import busybox_rootfs, remove_namespace_dirs, start_containerd

#: Bound on each step of the demo.
STEP_TIMEOUT = 30.0


async def _run(address: str, rootfs: Path, fifo_dir: Path) -> int:
    async with Client(address, "demo", fifo_dir=str(fifo_dir)) as client:
        version = await client.version()
        print(f"containerd {version.version} ({version.revision}) is serving")

        spec = oci_spec(
            rootfs,
            ["sh", "-c", "echo hello from $(hostname); cat; sleep 30"],
            hostname="demo-box",
            memory_limit=64 << 20,
        )
        container = await client.create_container("hello", spec, labels={"demo": "yes"})
        io = FifoIO.create(fifo_dir, container.id, stdin=True)
        task = await container.new_task(io)
        try:
            return await _show(task, io, fifo_dir)
        finally:
            with anyio.CancelScope(shield=True), anyio.fail_after(STEP_TIMEOUT):
                status = await task.force_delete()
                await container.delete()
            remove_namespace_dirs(client.namespace)
            how = status.signal.name if status.signal else f"exit code {status.code}"
            print(f"stopped the container ({how}) and deleted it")


async def _show(task: Task, io: FifoIO, fifo_dir: Path) -> int:
    pid = await task.start()
    print(f"started container {task.container_id!r}, pid {pid}")
    assert io.stdin_writer is not None
    lines = BufferedByteReceiveStream(io.stdout_reader)
    with anyio.fail_after(STEP_TIMEOUT):
        await io.stdin_writer.send(b"this line went in through stdin\n")
        for _ in range(2):
            print("  stdout:", (await lines.receive_until(b"\n", 4096)).decode())

    exec_io = FifoIO.create(fifo_dir, "ps")
    proc = await task.exec("ps", ["ps", "-o", "pid,args"], exec_io)
    await proc.start()
    with anyio.fail_after(STEP_TIMEOUT):
        listing = (await exec_io.stdout_reader.read_all()).decode()
        code = (await proc.wait()).code
    print(f"exec 'ps' exited {code}:")
    for line in listing.splitlines():
        print("   ", line)
    await proc.delete()

    stats = await task.metrics()
    print(
        f"memory {stats.memory_usage} bytes (limit {stats.memory_limit}), "
        f"{stats.pids_current} pids, cpu {stats.cpu_total_ns / 1e6:.1f} ms"
    )
    return 0


def run_demo(address: str | None = None) -> int:
    """Run the demo; start a private containerd unless ``address`` is given."""
    with tempfile.TemporaryDirectory(prefix="supervisor-demo-") as tmp:
        base = Path(tmp)
        rootfs = busybox_rootfs(base / "rootfs")
        if address is not None:
            return anyio.run(_run, address, rootfs, base / "fifo")
        daemon = start_containerd(base / "containerd")
        print(f"started a private containerd (pid {daemon.pid}) on {daemon.address}")
        try:
            return anyio.run(_run, daemon.address, rootfs, base / "fifo")
        finally:
            daemon.stop()
            print("stopped the private containerd")
