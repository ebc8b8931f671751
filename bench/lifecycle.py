"""Lifecycle benchmark: create, start, wait and delete of /bin/true.

Four ways, in paired rounds (each round runs all four, in a rotating order,
on the same rootfs and the same private containerd):

  library  supervisor.Client: create_container, new_task, start, wait,
           delete task, delete container
  bare     the same RPCs made directly on the generated stubs (no stdio)
  ctr      `ctr run --rm --rootfs` (the Go reference client)
  runc     `runc run` on an OCI bundle (the floor: no containerd, no shim)

Prints the median of each, and the library/bare and library/ctr ratios both
as a ratio of medians and as the median of per-round ratios.

    sudo .venv/bin/python bench/lifecycle.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from grpclib.client import Channel

from supervisor._proto.containerd.services.containers import v1 as containers_pb
from supervisor._proto.containerd.services.tasks import v1 as tasks_pb
from supervisor._proto.google.protobuf import Any as AnyPb
from supervisor.client import Client, oci_spec
from supervisor.testing import busybox_rootfs, remove_namespace_dirs, start_containerd

NAMESPACE = "bench"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def _spec(rootfs: Path, cid: str) -> dict[str, Any]:
    return oci_spec(rootfs, ["/bin/true"], cgroups_path=f"/{NAMESPACE}/{cid}")


async def run_library(client: Client, rootfs: Path, cid: str) -> None:
    container = await client.create_container(cid, _spec(rootfs, cid))
    task = await container.new_task()
    await task.start()
    status = await task.wait()
    await task.delete()
    await container.delete()
    assert status.code == 0, status


async def run_bare(channel: Channel, rootfs: Path, cid: str) -> None:
    md = {"containerd-namespace": NAMESPACE}
    containers = containers_pb.ContainersStub(channel, metadata=md)
    tasks = tasks_pb.TasksStub(channel, metadata=md)
    spec = AnyPb(type_url=SPEC_URL, value=json.dumps(_spec(rootfs, cid)).encode())
    record = containers_pb.Container(
        id=cid, runtime=containers_pb.ContainerRuntime(name="io.containerd.runc.v2"), spec=spec
    )
    await containers.create(containers_pb.CreateContainerRequest(container=record))
    await tasks.create(tasks_pb.CreateTaskRequest(container_id=cid))
    await tasks.start(tasks_pb.StartRequest(container_id=cid))
    reply = await tasks.wait(tasks_pb.WaitRequest(container_id=cid))
    await tasks.delete(tasks_pb.DeleteTaskRequest(container_id=cid))
    await containers.delete(containers_pb.DeleteContainerRequest(id=cid))
    assert reply.exit_status == 0, reply


async def run_ctr(address: str, rootfs: Path, cid: str) -> None:
    ctr = shutil.which("ctr") or "ctr"
    await anyio.run_process(
        [ctr, "-a", address, "-n", NAMESPACE, "run", "--rm", "--rootfs", str(rootfs), cid,
         "/bin/true"],
        check=True,
    )  # fmt: skip


async def run_runc(bundle_root: Path, rootfs: Path, cid: str) -> None:
    bundle = bundle_root / cid
    bundle.mkdir()
    spec = _spec(rootfs, cid)
    spec["linux"]["cgroupsPath"] = f"/{NAMESPACE}-runc/{cid}"
    (bundle / "config.json").write_text(json.dumps(spec))
    runc = shutil.which("runc") or "runc"
    await anyio.run_process(
        [runc, "--root", str(bundle_root / "state"), "run", "--bundle", str(bundle), cid],
        check=True,
    )
    shutil.rmtree(bundle)


async def bench(rounds: int, base: Path) -> dict[str, list[float]]:
    rootfs = busybox_rootfs(base / "rootfs")
    daemon = start_containerd(base / "containerd")
    bundles = base / "bundles"
    bundles.mkdir()
    times: dict[str, list[float]] = {"library": [], "bare": [], "ctr": [], "runc": []}
    try:
        async with Client(daemon.address, NAMESPACE, fifo_dir=str(base / "fifo")) as client:
            channel = Channel(path=daemon.address)
            try:
                runners: dict[str, Callable[[str], Awaitable[None]]] = {
                    "library": lambda cid: run_library(client, rootfs, cid),
                    "bare": lambda cid: run_bare(channel, rootfs, cid),
                    "ctr": lambda cid: run_ctr(daemon.address, rootfs, cid),
                    "runc": lambda cid: run_runc(bundles, rootfs, cid),
                }
                names = list(runners)
                for warmup in names:  # first runs pay for page cache and shim start-up
                    await runners[warmup](f"warm-{warmup}")
                for r in range(rounds):
                    order = names[r % len(names) :] + names[: r % len(names)]
                    for name in order:
                        started = time.perf_counter()
                        await runners[name](f"{name}-{r}")
                        times[name].append(time.perf_counter() - started)
            finally:
                channel.close()
    finally:
        daemon.stop()
        remove_namespace_dirs(NAMESPACE)
        remove_namespace_dirs(f"{NAMESPACE}-runc")
    return times


def report(times: dict[str, list[float]]) -> None:
    med = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"rounds: {len(times['library'])} (paired, rotating order)")
    for name in ("library", "bare", "ctr", "runc"):
        values = sorted(v * 1000 for v in times[name])
        p10 = values[len(values) // 10]
        p90 = values[(len(values) * 9) // 10]
        print(f"  {name:8} median {med[name]:7.1f} ms   p10 {p10:7.1f}   p90 {p90:7.1f}")

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    for a, b in (("library", "bare"), ("library", "ctr"), ("bare", "ctr"), ("runc", "library")):
        print(
            f"  {a}/{b}: {med[a] / med[b]:.3f} (ratio of medians), "
            f"{paired(a, b):.3f} (median of paired ratios)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as tmp:
        times = anyio.run(bench, args.rounds, Path(tmp))
    report(times)


if __name__ == "__main__":
    main()
