"""Event pipeline benchmark.

1. Throughput and CPU: a separate process publishes N synthetic TaskExit
   events into a private containerd (Events.Publish, grpcio, many calls in
   flight). The pipeline delivers them to a no-op backend; `ctr events` (the
   Go reference) subscribes in the same run. Prints events/s delivered, this
   process's CPU time per event (decode, ledger, routing and the backend call
   included), events lost, and how far the pipeline was behind `ctr events`
   at each tenth of the run (negative: ahead). A floor in the same run: our
   HTTP/2 reader alone in a process of its own (read, frame, count; no
   decode, no routing), the least any Python subscriber built on it pays.
2. Latency: real containers running /bin/true; exit-to-callback latency is
   the backend's wall clock at delivery minus the exit time the shim
   recorded. Prints p50 and p99.

    sudo .venv/bin/python bench/events.py [--events 50000] [--containers 100] [--exits 200]

(``bench/events.py --floor SOCKET N`` is that floor subscriber; the bench runs it.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from supervisor import Supervisor
from supervisor._proto.containerd.events import TaskExit as TaskExitPb
from supervisor._proto.containerd.services.events.v1 import PublishRequest, SubscribeRequest
from supervisor._proto.google.protobuf import Any as AnyPb
from supervisor.client import oci_spec
from supervisor.events import Event, EventType, TaskExit
from supervisor.events._h2stream import ServerStream
from supervisor.testing import busybox_rootfs, remove_namespace_dirs, start_containerd

NAMESPACE = "bench-events"
HERE = Path(__file__).resolve().parent


class Counting:
    """A backend that does nothing but count, mark each tenth, and time real exits."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.step = max(n // 10, 1)
        self.seen = 0
        self.marks: list[float] = []
        self.first_at = 0.0
        self.done = anyio.Event()
        self.warm = anyio.Event()
        self.latencies: list[float] = []
        self.latency_exits = 0
        self.latency_done = anyio.Event()
        self.latency_target = 0

    async def process_event(self, container_id: str, event_type: EventType, event: Event) -> None:
        if event_type is not EventType.EXIT:
            return
        if container_id.startswith("bench-"):
            self.seen += 1
            if self.seen == 1:
                self.first_at = time.time()
            if self.seen % self.step == 0:
                self.marks.append(time.time())
            if self.seen == self.n:
                self.done.set()
        elif container_id.startswith("warm"):
            self.warm.set()
        elif container_id.startswith("lat-"):
            assert isinstance(event, TaskExit) and event.exited_at is not None
            self.latencies.append(time.time() - event.exited_at.timestamp())
            if len(self.latencies) == self.latency_target:
                self.latency_done.set()


async def floor(address: str, n: int) -> None:
    """The floor subscriber: our HTTP/2 reader alone, counting the bench's events.

    Prints "ready" once its subscription is live (it has seen a message), then,
    as JSON, the CPU time from the first bench event to the Nth.
    """
    request = SubscribeRequest(filters=[f"namespace=={NAMESPACE},topic~=|^/tasks/|"])
    async with ServerStream(
        address,
        "/containerd.services.events.v1.Events/Subscribe",
        bytes(request),
        {"containerd-namespace": NAMESPACE},
    ) as stream:
        seen = 0
        cpu_first = 0.0
        ready = False
        async for batch in stream:
            if not ready:
                ready = True
                print("ready", flush=True)
            for message in batch:
                # Every envelope names the namespace "bench-events"; warm-up ones
                # are for container "warm".
                if b"bench-" in message and b"warm" not in message:
                    seen += 1
                    if seen == 1:
                        cpu_first = time.process_time()
                    if seen == n:
                        cpu = time.process_time() - cpu_first
                        print(json.dumps({"seen": seen, "cpu_seconds": cpu}), flush=True)
                        return


async def warm_up(
    sup: Supervisor, counters: list[anyio.abc.Process], backend: Counting
) -> list[BufferedByteReceiveStream]:
    """Publish until every subscriber has seen an event: then all are live."""
    readers = []
    for counter in counters:
        assert counter.stdout is not None
        readers.append(BufferedByteReceiveStream(counter.stdout))
    ready = [anyio.Event() for _ in counters]

    async def read_ready(lines: BufferedByteReceiveStream, done: anyio.Event) -> None:
        line = await lines.receive_until(b"\n", 1024)
        assert line == b"ready", line
        done.set()

    event = TaskExitPb(container_id="warm", id="warm", pid=1, exited_at=datetime.now(UTC))
    async with anyio.create_task_group() as tg:
        for lines, done in zip(readers, ready, strict=True):
            tg.start_soon(read_ready, lines, done)
        pid = 1
        while not (all(r.is_set() for r in ready) and backend.warm.is_set()):
            event.pid = pid
            pid += 1
            await sup.client._events_stub.publish(
                PublishRequest(
                    topic="/tasks/exit",
                    event=AnyPb(type_url="containerd.events.TaskExit", value=bytes(event)),
                )
            )
            with anyio.move_on_after(0.05):
                await ready[0].wait()
    return readers


async def throughput(
    sup: Supervisor, backend: Counting, address: str, n: int, containers: int, with_floor: bool
) -> dict[str, Any]:
    counter = await anyio.open_process(
        [sys.executable, str(HERE / "_ctr_counter.py"), address, str(n)]
    )
    counters = [counter]
    if with_floor:
        counters.append(
            await anyio.open_process(
                [sys.executable, str(Path(__file__).resolve()), "--floor", address, str(n)]
            )
        )
    lines, *floor_lines = await warm_up(sup, counters, backend)
    cpu0 = time.process_time()
    t0 = time.time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            anyio.run_process,
            [
                sys.executable,
                str(HERE / "_publisher.py"),
                address,
                NAMESPACE,
                str(n),
                str(containers),
            ],
        )
        with anyio.fail_after(300):
            await backend.done.wait()
    cpu1 = time.process_time()
    t1 = time.time()
    with anyio.fail_after(120):
        ctr = json.loads(await lines.receive_until(b"\n", 1 << 20))
        await counter.wait()
        ours_floor = {"seen": 0, "cpu_seconds": float("nan")}
        for floor_counter, floor_out in zip(counters[1:], floor_lines, strict=True):
            ours_floor = json.loads(await floor_out.receive_until(b"\n", 1 << 20))
            await floor_counter.wait()
    lags = [ours - theirs for ours, theirs in zip(backend.marks, ctr["marks"], strict=False)]
    return {
        "events": n,
        "delivered": backend.seen,
        "ctr_seen": ctr["seen"],
        "duplicates": sup.pipeline.stats.duplicate_exits,
        "skipped": sup.pipeline.stats.skipped,
        "seconds": t1 - t0,
        "events_per_s": n / (backend.marks[-1] - backend.first_at),
        "cpu_us_per_event": (cpu1 - cpu0) / n * 1e6,
        "ctr_cpu_us_per_event": ctr["cpu_seconds"] / max(ctr["seen"] - 1, 1) * 1e6,
        "floor_cpu_us_per_event": ours_floor["cpu_seconds"]
        / max(int(ours_floor["seen"]) - 1, 1)
        * 1e6,
        "max_lag_ms": max(lags) * 1000 if lags else float("nan"),
        "final_lag_ms": lags[-1] * 1000 if lags else float("nan"),
        "lags_ms": [round(x * 1000, 1) for x in lags],
    }


async def latency(sup: Supervisor, backend: Counting, rootfs: Path, exits: int) -> list[float]:
    backend.latency_target = exits
    for i in range(exits):
        cid = f"lat-{i}"
        container = await sup.client.create_container(cid, oci_spec(rootfs, ["/bin/true"]))
        task = await container.new_task()
        await task.start()
        await task.wait()
        await task.delete()
        await container.delete()
    with anyio.fail_after(30):
        await backend.latency_done.wait()
    return sorted(backend.latencies)


async def bench(args: argparse.Namespace, base: Path) -> None:
    rootfs = busybox_rootfs(base / "rootfs")
    daemon = start_containerd(base / "containerd")
    backend = Counting(args.events)
    try:
        async with Supervisor(
            backend, daemon.address, NAMESPACE, fifo_dir=str(base / "fifo")
        ) as sup:
            result = await throughput(
                sup, backend, daemon.address, args.events, args.containers, not args.no_floor
            )
            lat = await latency(sup, backend, rootfs, args.exits)
    finally:
        daemon.stop()
        remove_namespace_dirs(NAMESPACE)
    r = result
    r["cpu_ratio"] = r["cpu_us_per_event"] / r["ctr_cpu_us_per_event"]
    lost = r["events"] - r["delivered"]
    print(
        f"throughput: {r['events']:.0f} synthetic TaskExit events, {args.containers} container ids"
    )
    print(
        f"  delivered {r['delivered']:.0f}, lost {lost:.0f}, duplicates {r['duplicates']:.0f}, "
        f"skipped {r['skipped']:.0f}; ctr events saw {r['ctr_seen']:.0f}"
    )
    print(
        f"  {r['events_per_s']:.0f} events/s delivered; "
        f"{r['cpu_us_per_event']:.1f} us CPU per event in this process; `ctr events` "
        f"{r['ctr_cpu_us_per_event']:.1f} us (ratio {r['cpu_ratio']:.2f}, "
        "target <= 0.5; ctr also formats and prints each event)"
    )
    if not args.no_floor:
        print(
            f"  floor: our HTTP/2 reader alone in its own process (read, frame, count) "
            f"{r['floor_cpu_us_per_event']:.1f} us (ratio "
            f"{r['floor_cpu_us_per_event'] / r['ctr_cpu_us_per_event']:.2f}); the pipeline's "
            f"decode, ledger, queues and backend call: "
            f"{r['cpu_us_per_event'] - r['floor_cpu_us_per_event']:.1f} us above it"
        )
    print(
        f"  behind ctr events: worst {r['max_lag_ms']:.1f} ms, at the end "
        f"{r['final_lag_ms']:.1f} ms (negative: ahead); at each tenth: {r['lags_ms']}"
    )
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, round(len(lat) * 0.99) - 1)] * 1000
    print(
        f"exit-to-callback latency, {len(lat)} real exits: "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1] * 1000:.2f} ms"
    )


def main() -> None:
    if sys.argv[1:2] == ["--floor"]:
        anyio.run(floor, sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--exits", type=int, default=200)
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the floor subscriber (one process less competing for the CPUs)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        anyio.run(bench, args, Path(tmp))


if __name__ == "__main__":
    main()
