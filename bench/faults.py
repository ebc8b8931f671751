"""Fault benchmark: real faults, by pid, against the daemon and the library.

Part 1, the daemon (a subprocess with its managed containerd):
  N containers (default 100): 40% `always` containers that exit every 0.3-0.9 s,
  40% `on-failure:8` containers that run 10.2 s and fail (so their budget
  spans the whole fault period), 20% `unless-stopped` sleepers. Each run
  appends a line to a file on a host bind mount, so runs are counted without
  trusting the daemon. Then, at random moments, containerd is SIGKILLed
  (default 50 times), the daemon is SIGKILLed (default 20 times; its managed
  containerd serves on and the next daemon adopts it), and containerd is
  SIGKILLed while the shim of a running `always` container is SIGSTOPped
  (default 5 times; SIGCONT once containerd serves again: a shim too slow to
  answer containerd's reload, which then deletes its bundle and leaves it). A monitor checks twice a
  second that no container waits past its restart time by more than 2 s while
  containerd serves. At the end: budgets exact (runs == 9, restart count 8),
  sleepers never restarted and re-adopted with their pids, every `always`
  container running or due, no traceback in any daemon log; then `rm -f` of
  all, SIGTERM, and a leak count (shims, bundles, runc state, cgroups, runc
  init, the managed containerd).

Part 2, the library alone: a Supervisor whose backend restarts each
container on its exit, 30 containers exiting every 0.2 s, containerd
SIGKILLed mid-Create (as soon as a task's shim is up) 10 times. Counts the
exits the backend saw against the runs, containers stuck, and leftovers.

    sudo .venv/bin/python bench/faults.py [--containers 100] [--containerd-kills 50]
        [--daemon-kills 20] [--shim-stops 5] [--library 30] [--library-kills 10] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from supervisor import (
    Client,
    EventType,
    NotFound,
    Supervisor,
    SupervisorError,
    TaskStatus,
    oci_spec,
)
from supervisor.client import Mount
from supervisor.testing import (
    busybox_rootfs,
    namespace_leftovers,
    namespace_processes,
    remove_namespace_dirs,
    start_containerd,
)

PREFIX = "io.containerd-supervisor/"
BUDGET = 8
LATE = 2.0  # a start may come this long after it is due (and containerd serves)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- part 1: the daemon --------------------------------------------------------------


@dataclass
class DaemonRun:
    base: Path
    rootfs: Path
    namespace: str = field(default_factory=lambda: f"faults-{uuid.uuid4().hex[:6]}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    notify: socket.socket | None = None

    @property
    def address(self) -> str:
        return str(self.base / "state" / "containerd" / "containerd.sock")

    @property
    def pidfile(self) -> Path:
        return self.base / "state" / "containerd" / "containerd.pid"

    def containerd_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def setup(self, containers: int) -> dict[str, str]:
        defs = self.base / "defs"
        defs.mkdir()
        (self.base / "runs").mkdir()
        (self.base / "config.toml").write_text(
            f'namespace = "{self.namespace}"\n'
            f'state_dir = "{self.base / "state"}"\n'
            f'log_dir = "{self.base / "logs"}"\n'
            f'definitions_dir = "{defs}"\n'
            "[control]\n"
            f'socket = "{self.base / "control.sock"}"\n'
            # As `ctr run`: no network (bench/network.py measures networking; bridges and
            # iptables rules belong in a namespace of their own, not on this host).
            "[network]\n"
            'default = "none"\n'
        )
        kinds: dict[str, str] = {}
        rng = random.Random(containers)
        for n in range(containers):
            share = n / containers
            if share < 0.4:
                cid, policy = f"fast{n}", "always"
                body = f"sleep 0.{rng.randint(3, 9)}; exit {rng.randint(0, 3)}"
            elif share < 0.8:
                cid, policy = f"slow{n}", f"on-failure:{BUDGET}"
                body = "sleep 10.2; exit 1"
            else:
                cid, policy = f"steady{n}", "unless-stopped"
                body = "exec sleep 100000"
            kinds[cid] = cid.rstrip("0123456789")
            runs = self.base / "runs" / cid
            runs.mkdir()
            command = ["sh", "-c", f"echo $$ >> /runs/count; {body}"]
            (defs / f"{cid}.toml").write_text(
                f'rootfs = "{self.rootfs}"\n'
                f"command = {json.dumps(command)}\n"
                f'restart = "{policy}"\n'
                f'mounts = [{{ source = "{runs}", destination = "/runs" }}]\n'
            )
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.base / "notify.sock"))
        self.notify.setblocking(False)
        return kinds

    def runs(self, cid: str) -> int:
        path = self.base / "runs" / cid / "count"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def start(self) -> subprocess.Popen[bytes]:
        assert self.notify is not None
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.getsockname())
        out = open(self.base / f"daemon-{len(self.procs):02d}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisor",
                "daemon",
                "--config",
                str(self.base / "config.toml"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        out.close()
        self.procs.append(proc)
        return proc

    async def ready(self, within: float = 120.0) -> float:
        assert self.notify is not None
        began = time.monotonic()
        with anyio.fail_after(within):
            while True:
                await anyio.wait_readable(self.notify)
                if "READY=1" in self.notify.recv(4096).decode().splitlines():
                    return time.monotonic() - began

    def output(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.base.glob("daemon-*.log"))
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor",
                "--socket",
                str(self.base / "control.sock"),
                *args,
            ],
            capture_output=True,
            timeout=120,
        )


async def _stop_a_shim(run: DaemonRun, kinds: dict[str, str], rng: random.Random) -> int | None:
    """SIGSTOP the shim of a running `always` container; its pidfd (None if
    none ran just then)."""
    async with Client(run.address, run.namespace) as client:
        running = sorted(
            t.container_id
            for t in await client.list_tasks()
            if kinds.get(t.container_id) == "fast" and t.status is TaskStatus.RUNNING
        )
    shims = _shim_pids(run.namespace)
    candidates = [cid for cid in running if cid in shims]
    if not candidates:
        return None
    pid = shims[rng.choice(candidates)]
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
    return pidfd


async def _ready_or_dump(run: DaemonRun, slow: float) -> float:
    """Wait for READY; if it takes longer than ``slow``, have containerd dump
    its goroutines (SIGUSR1) and print each shim of the
    namespace whose state or working directory looks wrong, so a rare slow
    restart (60 s once in a dozen runs) leaves evidence."""
    began = time.monotonic()
    async with anyio.create_task_group() as tg:

        async def dump() -> None:
            await anyio.sleep(slow)
            pid = run.containerd_pid()
            log(
                f"READY is slow (> {slow:g} s): containerd {pid} dumps its goroutines "
                f"(SIGUSR1; containerd writes them to /tmp/containerd.{pid}.stacks.log)"
            )
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
            for cid, shim in sorted(_shim_pids(run.namespace).items()):
                try:
                    stat = Path(f"/proc/{shim}/stat").read_text()
                    cwd = os.readlink(f"/proc/{shim}/cwd")
                except OSError:
                    continue
                state = stat[stat.rfind(")") + 2]
                if state not in "SR" or not cwd.endswith("/" + cid):
                    log(f"  shim {shim} of {cid}: state {state}, cwd {cwd}")

        tg.start_soon(dump)
        await run.ready()
        tg.cancel_scope.cancel()
    return time.monotonic() - began


def _shim_pids(namespace: str) -> dict[str, int]:
    """Container id -> pid of its runc shim, in ``namespace``."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        flags = dict(zip(args[1::2], args[2::2], strict=False))
        if (
            args
            and b"containerd-shim" in args[0]
            and flags.get(b"-namespace") == namespace.encode()
        ):
            found[flags.get(b"-id", b"").decode()] = int(entry.name)
    return found


async def _serving(address: str, namespace: str) -> bool:
    with contextlib.suppress(OSError, SupervisorError):
        async with Client(address, namespace) as client:
            return await client.is_serving()
    return False


@dataclass
class Monitor:
    """Watches, twice a second, that nothing waits past its start time."""

    run: DaemonRun
    serving_since: float | None = None  # epoch time containerd and a daemon last became ready
    late: dict[str, float] = field(default_factory=dict)  # worst lateness per container
    samples: int = 0

    async def watch(self) -> None:
        async with Client(self.run.address, self.run.namespace) as client:
            while True:
                await anyio.sleep(0.5)
                since = self.serving_since
                if since is None:
                    continue
                try:
                    tasks = {t.container_id: t for t in await client.list_tasks()}
                    infos = await client.list_containers()
                except (SupervisorError, OSError):
                    continue
                if self.serving_since != since:
                    continue  # a fault came meanwhile
                now = time.time()
                self.samples += 1
                for info in infos:
                    task = tasks.get(info.id)
                    if task is not None and task.status in (TaskStatus.RUNNING, TaskStatus.PAUSED):
                        continue
                    due_text = info.labels.get(PREFIX + "next-start")
                    if due_text is None:
                        continue
                    lateness = now - max(float(due_text), since)
                    if lateness > self.late.get(info.id, 0.0):
                        self.late[info.id] = lateness


async def part_daemon(args: argparse.Namespace, base: Path, rootfs: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    run = DaemonRun(base / "daemon", rootfs)
    run.base.mkdir()
    kinds = run.setup(args.containers)
    run.start()
    first_ready = await run.ready()
    log(f"daemon READY with {args.containers} containers in {first_ready:.2f}s")
    monitor = Monitor(run, serving_since=time.time())
    async with Client(run.address, run.namespace) as client:
        steady = {
            t.container_id: t.pid
            for t in await client.list_tasks()
            if kinds.get(t.container_id) == "steady"
        }
    faults = (
        ["containerd"] * args.containerd_kills
        + ["daemon"] * args.daemon_kills
        + ["stopped shim"] * args.shim_stops
    )
    rng.shuffle(faults)
    recover_containerd: list[float] = []
    recover_stopped: list[float] = []
    recover_daemon: list[float] = []
    spurious: set[str] = set()
    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(monitor.watch)
        for number, fault in enumerate(faults, 1):
            await anyio.sleep(rng.uniform(0.2, 1.5))
            monitor.serving_since = None
            if fault in ("containerd", "stopped shim"):
                stopped = None
                if fault == "stopped shim":
                    stopped = await _stop_a_shim(run, kinds, rng)
                old = run.containerd_pid()
                assert old is not None
                os.kill(old, signal.SIGKILL)
                killed = time.monotonic()
                with anyio.fail_after(60):
                    while run.containerd_pid() in (old, None) or not await _serving(
                        run.address, run.namespace
                    ):
                        await anyio.sleep(0.02)
                back = time.monotonic() - killed
                (recover_containerd if stopped is None else recover_stopped).append(back)
                if stopped is not None:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(stopped, signal.SIGCONT)
                    os.close(stopped)
            else:
                proc = run.procs[-1]
                proc.kill()
                proc.wait(30)
                run.start()
                recover_daemon.append(await _ready_or_dump(run, args.slow_ready))
                async with Client(run.address, run.namespace) as client:
                    for cid, pid in steady.items():
                        with contextlib.suppress(NotFound):
                            if (await client.process_state(cid)).pid != pid:
                                spurious.add(cid)
            monitor.serving_since = time.time()
            if number % 10 == 0:
                log(f"{number}/{len(faults)} faults injected")
        fault_seconds = time.monotonic() - began
        log("faults done; waiting until every budget is spent and every always container ran again")
        async with Client(run.address, run.namespace) as client:
            counts = {
                i.id: i.labels.get(PREFIX + "restart-count", "0")
                for i in await client.list_containers()
            }
            with anyio.move_on_after(200):
                while True:
                    infos = {i.id: i.labels for i in await client.list_containers()}
                    slow_done = all(
                        lab.get(PREFIX + "restart-count") == str(BUDGET)
                        and PREFIX + "next-start" not in lab
                        and lab.get(PREFIX + "exit-pid") == lab.get(PREFIX + "started-pid")
                        for cid, lab in infos.items()
                        if kinds[cid] == "slow"
                    )
                    fast_again = all(
                        lab.get(PREFIX + "restart-count") != counts[cid]
                        for cid, lab in infos.items()
                        if kinds[cid] == "fast"
                    )
                    if slow_done and fast_again:
                        break
                    await anyio.sleep(1)
            infos = {i.id: i.labels for i in await client.list_containers()}
            tasks = {t.container_id: t for t in await client.list_tasks()}
        tg.cancel_scope.cancel()

    # -- what came out -----------------------------------------------------------
    output = run.output()
    # A start the fault killed before its command ran (containerd SIGKILLed
    # during Tasks.Start) is a run without a line: its exit is recorded as 137,
    # or as 1 when runc's init lost its parent ("write exec fifo: broken pipe"
    # in the container's own log). Docker counts such a start too.
    killed = {
        cid: sum(1 for line in output.splitlines() if f"container {cid} exited with 137" in line)
        + _runc_init_failures(run.base / "logs" / f"{cid}.log")
        for cid, kind in kinds.items()
        if kind in ("slow", "fast")
    }
    slow_exact = sum(
        1
        for cid, kind in kinds.items()
        if kind == "slow"
        and run.runs(cid) + killed[cid] == BUDGET + 1
        and infos[cid].get(PREFIX + "restart-count") == str(BUDGET)
    )
    fast_not_running = [
        cid
        for cid, kind in kinds.items()
        if kind == "fast"
        and not (tasks.get(cid) and tasks[cid].status is TaskStatus.RUNNING)
        and PREFIX + "next-start" not in infos[cid]
    ]
    fast_stale = [
        cid
        for cid, kind in kinds.items()
        if kind == "fast" and infos[cid].get(PREFIX + "restart-count") == counts[cid]
    ]
    fast_gap = [
        run.runs(cid) + killed[cid] - int(infos[cid].get(PREFIX + "restart-count", "0"))
        for cid, kind in kinds.items()
        if kind == "fast"
    ]
    steady_runs = [run.runs(cid) for cid, kind in kinds.items() if kind == "steady"]
    stuck = sorted(cid for cid, late in monitor.late.items() if late > LATE)
    tracebacks = output.count("Traceback")
    # What an operator reads after the faults: warnings and errors, by kind.
    noisy = [line for line in output.splitlines() if line.startswith(("WARNING ", "ERROR "))]
    kinds_of_noise = Counter(
        re.sub(r"\d+(\.\d+)?", "N", re.sub(r"\b(fast|slow|steady)\d+\b", "ID", line))[:90]
        for line in noisy
    )
    recorded = {
        cid: sum(
            1
            for line in output.splitlines()
            if f"container {cid} " in line and " exited with " in line
        )
        for cid, kind in kinds.items()
        if kind == "slow"
    }
    log("removing every container through the CLI")
    async with anyio.create_task_group() as tg:
        limit = anyio.Semaphore(8)

        async def remove(cid: str) -> None:
            async with limit:
                done = await anyio.to_thread.run_sync(run.cli, "rm", "-f", cid)
                if done.returncode != 0:
                    log(f"rm -f {cid} failed: {done.stderr.decode().strip()}")

        for cid in kinds:
            tg.start_soon(remove, cid)
    managed = run.containerd_pid()
    daemon = run.procs[-1]
    daemon.send_signal(signal.SIGTERM)
    daemon_rc = daemon.wait(60)
    bundles_dir = (
        run.base
        / "state"
        / "containerd"
        / "state"
        / "io.containerd.runtime.v2.task"
        / run.namespace
    )
    leftovers = {
        "processes (shims, runc init, container processes)": len(
            namespace_processes(run.namespace)
        ),
        "bundles": len(list(bundles_dir.iterdir())) if bundles_dir.is_dir() else 0,
        "runc state dirs and container cgroups": len(namespace_leftovers(run.namespace)),
        "managed containerd alive": int(managed is not None and os.path.exists(f"/proc/{managed}")),
    }
    remove_namespace_dirs(run.namespace)
    if run.notify is not None:
        run.notify.close()
    return {
        "containers": args.containers,
        "containerd kills": args.containerd_kills,
        "daemon kills": args.daemon_kills,
        "fault period (s)": round(fault_seconds, 1),
        "containerd kills with a shim SIGSTOPped": args.shim_stops,
        "containerd back serving after a kill, median / max (s)": (
            f"{statistics.median(recover_containerd):.2f} / {max(recover_containerd):.2f}"
            if recover_containerd
            else "-"
        ),
        "  the same with a shim SIGSTOPped (its reload times out at 5 s)": (
            f"{statistics.median(recover_stopped):.2f} / {max(recover_stopped):.2f}"
            if recover_stopped
            else "-"
        ),
        "daemon SIGKILL -> READY, median / max (s)": (
            f"{statistics.median(recover_daemon):.2f} / {max(recover_daemon):.2f}"
            if recover_daemon
            else "-"
        ),
        f"stuck (a start more than {LATE:g} s late while containerd served)": len(stuck),
        "worst start lateness while serving (s)": round(max(monitor.late.values(), default=0.0), 2),
        "monitor samples": monitor.samples,
        f"on-failure:{BUDGET}: starts killed by a fault before the command ran": sum(
            n for cid, n in killed.items() if kinds[cid] == "slow"
        ),
        "always: starts killed by a fault before the command ran": sum(
            n for cid, n in killed.items() if kinds[cid] == "fast"
        ),
        f"on-failure:{BUDGET} containers with exactly {BUDGET + 1} runs and count {BUDGET}": (
            f"{slow_exact} of {sum(1 for k in kinds.values() if k == 'slow')}"
        ),
        "their exits logged by the daemon (expected 9 each)": (
            f"min {min(recorded.values())}, max {max(recorded.values())}" if recorded else "-"
        ),
        "always containers neither running nor due": len(fast_not_running),
        "always containers that did not restart after the faults": len(fast_stale),
        "always containers: runs (and killed starts) - restart count (0 or 1 expected)": (
            f"min {min(fast_gap)}, max {max(fast_gap)}" if fast_gap else "-"
        ),
        "sleepers restarted spuriously / runs != 1": (
            f"{len(spurious)} / {sum(1 for r in steady_runs if r != 1)}"
        ),
        "tracebacks in daemon logs": tracebacks,
        "warning and error lines in daemon logs / per fault": (
            f"{len(noisy)} / {len(noisy) / max(1, args.containerd_kills + args.daemon_kills):.1f}"
        ),
        **{f"  {count} x": kind for kind, count in kinds_of_noise.most_common(8)},
        "daemon exit code on SIGTERM": daemon_rc,
        **{f"left after rm -f and SIGTERM: {k}": v for k, v in leftovers.items()},
        "_stuck": stuck,
    }


def _runc_init_failures(log: Path) -> int:
    """Starts whose `runc init` failed before the command ran, by the line it
    leaves in the container's log."""
    texts = [p.read_text(errors="replace") for p in log.parent.glob(log.name + "*")]
    return sum(text.count("write exec fifo") for text in texts)


# -- part 2: the library alone ------------------------------------------------------------


class Restarter:
    """A backend that starts each container again whenever its task exits."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.exits: dict[str, list[int]] = {}
        self.duplicates = 0
        self.other_codes: list[int] = []
        self.restarting = True
        self.wanted: set[str] = set()
        self.tg: Any = None

    async def process_event(self, cid: str, event_type: EventType, event: Any) -> None:
        if event_type is not EventType.EXIT or event.exec_id is not None:
            return
        if event.exit_status != 3:
            self.other_codes.append(event.exit_status)
        seen = self.exits.setdefault(cid, [])
        if event.pid in seen:
            self.duplicates += 1
        seen.append(event.pid)
        if self.restarting:
            self.wanted.add(cid)

    async def keep_running(self) -> None:
        """Level-triggered, like the daemon: whatever is wanted and not running gets started."""
        while True:
            for cid in sorted(self.wanted):
                with contextlib.suppress(SupervisorError, OSError, TimeoutError):
                    with anyio.fail_after(30):
                        await self.restart(cid)
                    self.wanted.discard(cid)
            await anyio.sleep(0.05)

    async def restart(self, cid: str) -> None:
        container = await self.client.load_container(cid)
        with contextlib.suppress(NotFound):
            state = await self.client.process_state(cid)
            if state.status in (TaskStatus.RUNNING, TaskStatus.PAUSED):
                return
            await (await container.task()).force_delete()
        # AlreadyExists (containerd knows a task after all) propagates: the next
        # round looks again.
        task = await container.new_task()
        await task.start()


async def part_library(args: argparse.Namespace, base: Path, rootfs: Path) -> dict[str, Any]:
    ctd = start_containerd(base / "library-containerd")
    namespace = f"faultslib-{uuid.uuid4().hex[:6]}"
    runs_dir = base / "library-runs"
    ids = [f"lib{n}" for n in range(args.library)]
    kills = 0
    stuck: list[str] = []
    try:
        client = Client(ctd.address, namespace, fifo_dir=str(base / "library-fifo"))
        backend = Restarter(client)
        async with Supervisor(
            backend,
            ctd.address,
            namespace,
            fifo_dir=str(base / "library-fifo"),
            containerd_state=(str(ctd.state), str(ctd.root)),
        ) as sup:
            backend.client = sup.client
            for cid in ids:
                (runs_dir / cid).mkdir(parents=True)
                spec = oci_spec(
                    rootfs,
                    ["sh", "-c", "echo $$ >> /runs/count; sleep 0.2; exit 3"],
                    mounts=[Mount(str(runs_dir / cid), "/runs")],
                )
                await sup.client.create_container(cid, spec)
                backend.wanted.add(cid)
            bundles = ctd.task_state_dir(namespace)
            async with anyio.create_task_group() as tg:
                tg.start_soon(backend.keep_running)
                for _ in range(args.library_kills):
                    await anyio.sleep(0.5)
                    before = {p.name for p in bundles.iterdir()} if bundles.is_dir() else set()
                    with anyio.move_on_after(10):
                        while True:  # a shim up, its Create not answered yet
                            now = {p.name for p in bundles.iterdir()} if bundles.is_dir() else set()
                            fresh = [n for n in now - before if (bundles / n / "address").exists()]
                            if fresh:
                                break
                            before = now
                            await anyio.sleep(0.001)
                    ctd.kill()
                    kills += 1
                    await anyio.to_thread.run_sync(ctd.restart)
                served = time.monotonic()
                counts = {cid: _runs(runs_dir, cid) for cid in ids}
                with anyio.move_on_after(15):
                    while any(_runs(runs_dir, cid) <= counts[cid] for cid in ids):
                        await anyio.sleep(0.1)
                stuck = [cid for cid in ids if _runs(runs_dir, cid) <= counts[cid]]
                recovery = time.monotonic() - served
                backend.restarting = False
                backend.wanted.clear()
                tg.cancel_scope.cancel()
            # Let the last runs end and their exits arrive.
            with anyio.move_on_after(10):
                while any(
                    t.status is not TaskStatus.STOPPED for t in await sup.client.list_tasks()
                ):
                    await anyio.sleep(0.1)
            await anyio.sleep(1)
            runs = {cid: _runs(runs_dir, cid) for cid in ids}
            seen = {cid: len(backend.exits.get(cid, [])) for cid in ids}
            for cid in ids:
                container = await sup.client.load_container(cid)
                with contextlib.suppress(NotFound):
                    await (await container.task()).force_delete()
                await container.delete()
        with anyio.move_on_after(5):
            while namespace_processes(namespace):
                await anyio.sleep(0.05)
        leftovers = {
            "processes": len(namespace_processes(namespace)),
            "bundles": len(list(bundles.iterdir())) if bundles.is_dir() else 0,
            "runc state dirs and cgroups": len(namespace_leftovers(namespace)),
        }
    finally:
        ctd.stop()
        remove_namespace_dirs(namespace)
    lost = sum(max(0, runs[c] - seen[c]) for c in ids)
    extra = sum(max(0, seen[c] - runs[c]) for c in ids)
    return {
        "library containers": args.library,
        "containerd kills mid-Create": kills,
        "runs": sum(runs.values()),
        "exits at the backend": sum(seen.values()),
        "exits lost (runs without an exit) / extra": f"{lost} / {extra}",
        "duplicate exits (same pid twice)": backend.duplicates,
        "exits with a code other than the command's 3": (
            ", ".join(str(c) for c in sorted(backend.other_codes)) or "none"
        ),
        "stuck after the last kill (no new run within 15 s)": len(stuck),
        "all running again after the last kill within (s)": round(recovery, 2),
        **{f"left after delete: {k}": v for k, v in leftovers.items()},
        "_stuck": stuck,
    }


def _runs(runs_dir: Path, cid: str) -> int:
    path = runs_dir / cid / "count"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _print(title: str, figures: dict[str, Any]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in figures if not k.startswith("_"))
    for key, value in figures.items():
        if not key.startswith("_"):
            print(f"  {key:<{width}}  {value}")
    if figures.get("_stuck"):
        print(f"  stuck: {', '.join(figures['_stuck'])}")


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="faults-"))
    rootfs = busybox_rootfs(base / "rootfs")
    log(f"working in {base}")
    if args.containers:
        _print("daemon", await part_daemon(args, base, rootfs))
    if args.library:
        _print("library", await part_library(args, base, rootfs))
    print(f"\n(logs kept in {base})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--containerd-kills", type=int, default=50)
    parser.add_argument("--daemon-kills", type=int, default=20)
    parser.add_argument("--shim-stops", type=int, default=5)
    parser.add_argument(
        "--slow-ready",
        type=float,
        default=15.0,
        help="after a daemon kill, dump containerd's goroutines if READY takes longer (s)",
    )
    parser.add_argument("--library", type=int, default=30)
    parser.add_argument("--library-kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    anyio.run(main, parser.parse_args())
