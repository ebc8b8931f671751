"""Image pull benchmark: pull + unpack of a ~50 MB, 5-layer image from a
loopback registry, through supervisor.images.pull and through
`ctr image pull --plain-http`, on the same private containerd.

Each round pulls with both (the order alternates), and removes the image
with a synchronous GC after each pull, so every pull starts from an empty
content store and no snapshots. Layers are random bytes (incompressible),
gzip level 1. Prints the median of each, the ratio, and our peak RSS growth
during a pull (VmHWM, reset before each pull, minus VmRSS before it).

    sudo .venv/bin/python bench/images.py [--rounds 5] [--layer-mb 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

# This checkout's supervisor: a script's sys.path[0] is bench/, so without
# this an editable install of another checkout is what gets measured.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.client import Client
from supervisor.images import DEFAULT_CONCURRENCY, RegistryClient, pull, remove_image
from supervisor.testing import (
    build_image,
    skopeo_copy,
    start_containerd,
    start_registry,
    write_layout,
)

NAMESPACE = "bench-images"
LAYERS = 5
#: Bound on one pull of either client.
PULL_TIMEOUT = 300.0
#: Our process's CPU time (user + system) of each of our pulls.
_cpu: list[float] = []


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    # "5" resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def make_image(base: Path, host: str, layer_mb: int) -> str:
    layers = [{f"data{i}.bin": os.urandom(layer_mb << 20)} for i in range(LAYERS)]
    image = build_image(layers, config={"Cmd": ["true"]})
    del layers
    layout = write_layout(base / "layout", {"1": [image]})
    ref = f"{host}/bench/big:1"
    skopeo_copy(f"oci:{layout}:1", f"docker://{ref}")
    shutil.rmtree(layout)
    size = sum(len(b.data) for b in image.layers)
    print(f"image: {ref}, {LAYERS} layers, {size / 1e6:.1f} MB compressed")
    return ref


def ctr(address: str, *args: str) -> None:
    subprocess.run(
        ["ctr", "-a", address, "-n", NAMESPACE, *args],
        check=True, capture_output=True, timeout=PULL_TIMEOUT,
    )  # fmt: skip


async def assert_empty(client: Client) -> None:
    content, snapshots = await client.content.list(), await client.snapshots.list()
    if content or snapshots:
        raise RuntimeError(f"not a fresh start: {len(content)} blobs, {len(snapshots)} snapshots")


async def pull_ours(
    client: Client, registry: RegistryClient, ref: str, concurrency: int
) -> tuple[float, int]:
    await assert_empty(client)
    before = _status_kb("VmRSS")
    _reset_peak_rss()
    cpu = time.process_time()
    started = time.perf_counter()
    with anyio.fail_after(PULL_TIMEOUT):
        await pull(client, ref, registry=registry, concurrency=concurrency)
    elapsed = time.perf_counter() - started
    _cpu.append(time.process_time() - cpu)
    growth = _status_kb("VmHWM") - before
    await remove_image(client, ref, sync=True)
    return elapsed, growth


async def pull_ctr(client: Client, address: str, ref: str) -> float:
    await assert_empty(client)
    started = time.perf_counter()
    with anyio.fail_after(PULL_TIMEOUT):
        await anyio.to_thread.run_sync(ctr, address, "image", "pull", "--plain-http", ref)
    elapsed = time.perf_counter() - started
    await anyio.to_thread.run_sync(ctr, address, "image", "rm", "--sync", ref)
    return elapsed


async def bench(rounds: int, layer_mb: int, concurrency: int, base: Path) -> None:
    daemon = start_containerd(base / "containerd")
    registry = start_registry(base / "registry")
    try:
        ref = make_image(base, registry.host, layer_mb)
        ours: list[float] = []
        theirs: list[float] = []
        growth: list[int] = []
        async with Client(daemon.address, NAMESPACE) as client, RegistryClient() as http:
            # Warm-up: imports, connections, the registry's and the page cache.
            _, cold = await pull_ours(client, http, ref, concurrency)
            print(f"first (cold) pull: RSS growth {cold / 1024:.1f} MB")
            await pull_ctr(client, daemon.address, ref)
            for r in range(rounds):
                for which in ("ours", "ctr") if r % 2 == 0 else ("ctr", "ours"):
                    if which == "ours":
                        elapsed, grown = await pull_ours(client, http, ref, concurrency)
                        ours.append(elapsed)
                        growth.append(grown)
                    else:
                        theirs.append(await pull_ctr(client, daemon.address, ref))
        report(ours, theirs, growth)
    finally:
        registry.stop()
        daemon.stop()


def report(ours: list[float], theirs: list[float], growth: list[int]) -> None:
    print(f"rounds: {len(ours)} (paired, alternating order; fresh content store each pull)")
    for name, values in (("supervisor", ours), ("ctr", theirs)):
        shown = " ".join(f"{v * 1000:.0f}" for v in values)
        print(f"  {name:10} median {statistics.median(values) * 1000:7.0f} ms   ({shown})")
    ratio = statistics.median(ours) / statistics.median(theirs)
    paired = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    print(f"  supervisor/ctr: {ratio:.3f} (ratio of medians), {paired:.3f} (median of paired)")
    print(f"  our peak RSS growth during a pull: max {max(growth) / 1024:.1f} MB, "
          f"median {statistics.median(growth) / 1024:.1f} MB")  # fmt: skip
    print(
        f"  our CPU per pull: median {statistics.median(_cpu[1:]) * 1000:.0f} ms "
        f"(user + system, this process)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        anyio.run(bench, args.rounds, args.layer_mb, args.concurrency, Path(tmp))


if __name__ == "__main__":
    main()
