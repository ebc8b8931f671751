"""Scale benchmark (issue 12): N containers through the daemon, its CLI and the library, beside ctr.

One run starts the daemon as a subprocess (a managed containerd under its state
dir, metrics on a unix socket, READY=1 on a notify socket) and prints, each
figure beside its reference and the issue's target:

 1. CLI wall: median of paired rounds (rotating order) of `supervisor --help`,
    `supervisor ps` (0 containers) and `supervisor run -d` (one container) vs
    `python -c pass`; CPU time of each call too.
 2. N containers (`sleep 3600`) started 8 in parallel: `supervisor run -d` vs
    `ctr run -d` (the Debian ctr, against the daemon's managed containerd, in
    another namespace); through the library, 8 concurrent create_container +
    new_task(FifoIO) + start on one Client (FIFOs, as the daemon and `ctr run
    -d` make them) vs ctr. CPU of the clients, the daemon and containerd.
 3. `supervisor ps` with N vs with 0; `ctr t ls` for reference.
 4. Daemon SIGKILL -> READY=1 of the next daemon with N adopted (pids
    unchanged), and until the control API's List answers with all N running.
 5. containerd SIGKILL (by pid, from the pidfile) -> re-adopted: the daemon's
    List shows all N running with their pids unchanged AND the daemon logged
    "event stream restored" (its subscription is back and reconciled; the same
    shows as supervisor_events_reconnects_total + 1 in the metrics).
 6. Memory: daemon RSS and CPU per container; shim RSS/PSS/USS per container
    without grouping (ctr, library, daemon) and with the runc shim's grouping
    (annotation io.containerd.runc.v2.group, library); what a shim SIGKILL
    takes down (tasks ended, their exit status, processes left).
 7. Scrape: GET /metrics with 0 and N containers, size, parsed with
    prometheus_client.parser.
 8. `rm -f` of all N: 8 parallel `supervisor rm -f ID`, and one `supervisor rm
    -f ID...` with every id (after starting N again from the definitions dir
    and `supervisor reload`), vs `ctr task kill -s 9` + `ctr task rm -f` + `ctr
    container rm`, 8 in parallel.

Everything it made is removed at the end, also on failure or Ctrl-C; leftovers
(shims, runc init, runc state, cgroups) are counted and printed.

    sudo .venv/bin/python bench/scale.py [N] [--quick] [--rounds 15] [--kills 3]
        [--grouped M] [--group-sizes 10,all] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from grpclib.client import Channel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, not another one installed

from supervisor import Client, EventType, FifoIO, NotFound, Supervisor, oci_spec  # noqa: E402
from supervisor._proto.supervisor import v1 as pb  # noqa: E402
from supervisor.client import Task, TaskStatus  # noqa: E402
from supervisor.testing import (  # noqa: E402
    busybox_rootfs,
    namespace_leftovers,
    namespace_processes,
    remove_namespace_dirs,
)

CTR = shutil.which("ctr") or "ctr"
PYCACHE = Path(tempfile.gettempdir()) / "containerd-supervisor-bench-pycache"
RUNC = shutil.which("runc") or "runc"
GROUP = "io.containerd.runc.v2.group"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARALLEL = 8
#: Steps during which --py-spy records the daemon.
PROFILED = (
    "supervisor run -d",
    "ps and scrape at N",
    "rm -f, 8 parallel",
    "definitions dir, rm -f in one call",
)
SLEEP = ["/bin/sleep", "3600"]  # ctr --rootfs gives no PATH
CALL_TIMEOUT = 1800.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes, by pid ---------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a live process (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int | None) -> int:
    if pid is None:
        return 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory_kib(pid: int) -> tuple[int, int, int]:
    """RSS, PSS and USS (private clean + dirty) of a process, from smaps_rollup."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                values[key] = int(rest.split()[0])
    return (
        values.get("Rss", 0),
        values.get("Pss", 0),
        values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    )


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def shim_pids(namespace: str) -> list[int]:
    """runc v2 shims serving ``namespace`` (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"containerd-shim-runc-v2") and namespace.encode() in args:
            found.append(int(entry.name))
    return found


@dataclass
class ShimMemory:
    shims: int
    rss: int  # KiB, summed
    pss: int
    uss: int

    @classmethod
    def of(cls, namespace: str) -> ShimMemory:
        pids = shim_pids(namespace)
        figures = [memory_kib(p) for p in pids]
        return cls(len(pids), *(sum(f[i] for f in figures) for i in range(3)))

    def per(self, containers: int) -> str:
        n = max(containers, 1)
        return (
            f"{self.shims} shims; per container RSS {self.rss / n / 1024:.2f} MiB, "
            f"PSS {self.pss / n / 1024:.2f}, USS {self.uss / n / 1024:.2f}"
        )


# -- the report ----------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None
    before: str = ""

    def cells(self) -> tuple[str, ...]:
        verdict = {True: "ok", False: "MISS", None: ""}[self.ok]
        return (self.figure, self.value, self.reference, self.ratio, self.target, verdict,
                self.before)  # fmt: skip


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[Row]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def section(self, title: str) -> list[Row]:
        rows: list[Row] = []
        self.sections.append((title, rows))
        return rows

    def print(self) -> None:
        print()
        for text in self.header:
            print(text)
        columns = ("figure", "measured", "reference", "ratio", "target", "", "issue 12 before")
        table = [r.cells() for _, rows in self.sections for r in rows]
        widths = [max([len(c), *(len(t[i]) for t in table)]) for i, c in enumerate(columns)]
        for i, cap in enumerate((44, 58, 30, 20, 16, 4, 24)):
            widths[i] = min(widths[i], cap)

        def line(cells: Sequence[str]) -> str:
            return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

        for title, rows in self.sections:
            print(f"\n{title}")
            print(line(columns).rstrip())
            for r in rows:
                print(line(r.cells()).rstrip())
        for note in self.notes:
            print(f"\n{note}")


def secs(value: float) -> str:
    if value < 0.01:
        return f"{value * 1000:.1f} ms"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else float("nan")


def spread(values: Sequence[float]) -> str:
    return f"{secs(median(values))} (min {secs(min(values))}, max {secs(max(values))})"


# -- the daemon as a subprocess -----------------------------------------------------------


def repo_env(**extra: str) -> dict[str, str]:
    """The environment for the CLI and the daemon: this checkout's package first."""
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # Compiled once, as an installed package is (pip writes .pyc files): with
    # PYTHONDONTWRITEBYTECODE (set on the development machine) every CLI call
    # would compile the modules it imports again, some 30 ms.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(extra)
    return env


def cli_command() -> list[str]:
    """The `supervisor` console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).parent / "supervisor"
    return [str(script)] if script.exists() else [sys.executable, "-m", "supervisor"]


@dataclass
class Daemon:
    base: Path
    namespace: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    notify: socket.socket | None = None

    @property
    def address(self) -> str:
        return str(self.base / "state" / "containerd" / "containerd.sock")

    @property
    def control(self) -> str:
        return str(self.base / "control.sock")

    @property
    def metrics(self) -> str:
        return str(self.base / "metrics.sock")

    @property
    def defs(self) -> Path:
        return self.base / "defs"

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    @property
    def pid(self) -> int | None:
        return self.procs[-1].pid if self.procs and self.procs[-1].poll() is None else None

    def containerd_pid(self) -> int | None:
        path = self.base / "state" / "containerd" / "containerd.pid"
        try:
            pid = int(path.read_text())
        except (OSError, ValueError):
            return None
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        ours = str(self.base / "state" / "containerd" / "config.toml").encode() in args
        return pid if ours and alive(pid) else None

    def setup(self) -> None:
        self.defs.mkdir()
        self.config_path.write_text(
            f'namespace = "{self.namespace}"\n'
            f'state_dir = "{self.base / "state"}"\n'
            f'log_dir = "{self.base / "logs"}"\n'
            f'definitions_dir = "{self.defs}"\n'
            "[control]\n"
            f'socket = "{self.control}"\n'
            "[metrics]\n"
            f'address = "unix:{self.metrics}"\n'
            # As `ctr run`: no network (bench/network.py measures networking; bridges and
            # iptables rules belong in a namespace of their own, not on this host).
            "[network]\n"
            'default = "none"\n'
        )
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.base / "notify.sock"))
        self.notify.setblocking(False)

    def log_path(self, index: int | None = None) -> Path:
        number = len(self.procs) - 1 if index is None else index
        return self.base / f"daemon-{number:02d}.log"

    def start(self) -> subprocess.Popen[bytes]:
        assert self.notify is not None
        env = repo_env(NOTIFY_SOCKET=self.notify.getsockname())
        out = open(self.base / f"daemon-{len(self.procs):02d}.log", "wb")  # noqa: SIM115
        argv = [sys.executable, "-m", "supervisor", "daemon", "--config", str(self.config_path)]
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        out.close()
        self.procs.append(proc)
        return proc

    def drain_notify(self) -> None:
        assert self.notify is not None
        with contextlib.suppress(BlockingIOError):
            while True:
                self.notify.recv(4096)

    async def ready(self, within: float = 300.0) -> tuple[float, str]:
        """Seconds until READY=1, and the STATUS= sent with it."""
        assert self.notify is not None
        began = time.perf_counter()
        with anyio.fail_after(within):
            while True:
                await anyio.wait_readable(self.notify)
                try:
                    lines = self.notify.recv(4096).decode().splitlines()
                except BlockingIOError:
                    continue
                if "READY=1" in lines:
                    status = next((x[7:] for x in lines if x.startswith("STATUS=")), "")
                    return time.perf_counter() - began, status
                if self.procs[-1].poll() is not None:
                    raise RuntimeError(f"the daemon exited: {self.output()[-2000:]}")

    def output(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.base.glob("daemon-*.log"))
        )

    def cli_argv(self, *args: str) -> list[str]:
        return [*cli_command(), "--socket", self.control, *args]

    def cli(self, *args: str, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.cli_argv(*args), capture_output=True, timeout=timeout, env=repo_env(), cwd=REPO
        )

    def cli_ok(self, *args: str, timeout: float = CALL_TIMEOUT) -> bytes:
        done = self.cli(*args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"supervisor {' '.join(args[:3])}...: exit {done.returncode}: "
                f"{done.stderr.decode(errors='replace').strip()[-500:]}"
            )
        return done.stdout


async def control_list(path: str, *, all: bool = False) -> list[pb.ContainerInfo]:
    """The daemon's List (what `supervisor ps` shows), straight over the control socket."""
    channel = Channel(path=path)
    try:
        with anyio.fail_after(60):
            reply = await pb.ControlStub(channel).list(pb.ListRequest(all=all))
        return list(reply.containers)
    finally:
        channel.close()


def scrape(path: str) -> tuple[float, bytes]:
    """GET /metrics over a unix socket: the wall time and the body."""
    began = time.perf_counter()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(120)
        sock.connect(path)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    took = time.perf_counter() - began
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"metrics answered {head[:100]!r}")
    return took, body


def parse_metrics(body: bytes) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(body.decode()))
    samples = {s.name: s.value for f in families for s in f.samples if not s.labels}
    states = sum(len(f.samples) for f in families if f.name == "supervisor_container_state")
    return {"families": len(families),
            "samples": sum(len(f.samples) for f in families),
            "containers": samples.get("supervisor_containers"),
            "state_samples": states,
            "reconnects": samples.get("supervisor_events_reconnects_total"),
            "sync_errors": samples.get("supervisor_sync_errors_total"),
            "queue": samples.get("supervisor_sync_queue_depth")}  # fmt: skip


def sweep_namespace(namespace: str) -> None:
    """SIGKILL the shims and container processes of one of our namespaces, then
    remove its runc state and cgroups (what containerd left behind)."""
    for pid in namespace_processes(namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    runc_root = Path("/run/containerd/runc") / namespace
    if runc_root.is_dir():
        for entry in runc_root.iterdir():
            subprocess.run([RUNC, "--root", str(runc_root), "delete", "--force", entry.name],
                           capture_output=True, timeout=60)  # fmt: skip
    remove_namespace_dirs(namespace)


def read_from(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """Run a command: its wall time, its CPU time, exit code and stderr tail."""
    cpu = children_cpu()
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, timeout=CALL_TIMEOUT, env=env, cwd=REPO)
    took = time.perf_counter() - began
    return took, children_cpu() - cpu, done.returncode, done.stderr.decode(errors="replace")[-300:]


def check(argv: Sequence[str], env: dict[str, str] | None = None) -> bytes:
    done = subprocess.run(argv, capture_output=True, timeout=CALL_TIMEOUT, env=env, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:6])}...: exit {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-500:]}"
        )
    return done.stdout


async def in_parallel(
    items: Sequence[str], work: Callable[[str], Awaitable[None]], limit: int = PARALLEL
) -> tuple[float, list[str]]:
    """Run ``work`` on every item, ``limit`` at a time: the wall time and the errors."""
    errors: list[str] = []
    gate = anyio.Semaphore(limit)

    async def one(item: str) -> None:
        async with gate:
            try:
                await work(item)
            except Exception as exc:
                errors.append(f"{item}: {type(exc).__name__}: {exc}")

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)
    return time.perf_counter() - began, errors


def in_thread(argv: list[str], env: dict[str, str] | None = None) -> Awaitable[bytes]:
    return anyio.to_thread.run_sync(lambda: check(argv, env))


# -- the run --------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    base: Path
    report: Report
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    rootfs: Path = Path()
    daemon: Daemon | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.args.n)

    def ns(self, kind: str) -> str:
        name = f"scale-{kind}-{self.suffix}" if kind else f"scale-{self.suffix}"
        if name not in self.namespaces:
            self.namespaces.append(name)
        return name

    @property
    def d(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def ctr(self, namespace: str, *args: str) -> list[str]:
        return [CTR, "-a", self.d.address, "-n", namespace, *args]

    def ctr_run_argv(self, namespace: str, cid: str) -> list[str]:
        return self.ctr(namespace, "run", "-d", "--fifo-dir", str(self.base / "ctr-fifo"),
                        "--rootfs", str(self.rootfs), cid, *SLEEP)  # fmt: skip

    async def ctr_remove(self, namespace: str, cid: str) -> None:
        await in_thread(self.ctr(namespace, "task", "kill", "-s", "9", cid))
        await in_thread(self.ctr(namespace, "task", "rm", "-f", cid))
        await in_thread(self.ctr(namespace, "container", "rm", cid))

    async def running(self, namespace: str) -> dict[str, int]:
        async with Client(self.d.address, namespace) as client:
            return {
                t.container_id: t.pid
                for t in await client.list_tasks()
                if t.status is TaskStatus.RUNNING
            }

    @contextlib.contextmanager
    def profiled(self, step: str) -> Iterator[None]:
        """With --py-spy, record the daemon's stacks (folded) during the steps that load it."""
        pid = self.daemon.pid if self.daemon else None
        if not self.args.py_spy or pid is None or step not in PROFILED:
            yield
            return
        out = self.base / f"py-spy-{step.replace(' ', '-').replace(',', '')}.txt"
        spy = subprocess.Popen(
            [self.args.py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            self.report.notes.append(f"py-spy of the daemon during {step!r}: {out}")

    # -- 0: the daemon --------------------------------------------------------------------

    async def start_daemon(self) -> None:
        self.daemon = Daemon(self.base / "daemon", self.ns(""))
        self.d.base.mkdir()
        self.d.setup()
        self.d.start()
        took, status = await self.d.ready()
        log(f"daemon ready in {took:.2f}s ({status}); pid {self.d.pid}, "
            f"containerd {self.d.containerd_pid()}")  # fmt: skip
        await anyio.sleep(1.5)  # past its first relist
        self.figures["rss0"] = rss_kib(self.d.pid)

    # -- 1: CLI wall ----------------------------------------------------------------------

    async def cli_wall(self) -> None:
        rows = self.report.section(
            f"1. CLI wall, 0 containers (median of {self.args.rounds} paired rounds, rotating "
            "order; CPU = the call's user+sys)"
        )
        env = repo_env()
        commands: dict[str, Callable[[int], list[str]]] = {
            "python -c pass": lambda r: [sys.executable, "-c", "pass"],
            "supervisor --help": lambda r: [*cli_command(), "--help"],
            "supervisor ps": lambda r: self.d.cli_argv("ps"),
            "supervisor run -d": lambda r: self.d.cli_argv(
                "run", "-d", "--name", f"wall{r}", "--rootfs", str(self.rootfs), *SLEEP
            ),
            # run -d waits for containerd to make and start the task: Go's
            # client doing the same is the reference that holds that part.
            "ctr run -d": lambda r: self.ctr_run_argv(self.ns("wall"), f"wall{r}"),
        }
        names = list(commands)
        walls: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        for r in range(-1, self.args.rounds):  # round -1 warms the page cache
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                took, cpu, rc, err = await anyio.to_thread.run_sync(timed, commands[name](r), env)
                if rc != 0:
                    raise RuntimeError(f"{name}: exit {rc}: {err}")
                if r >= 0:
                    walls[name].append(took)
                    cpus[name].append(cpu)
            await anyio.to_thread.run_sync(self.d.cli_ok, "rm", "-f", f"wall{r}")
            await self.ctr_remove(self.ns("wall"), f"wall{r}")
        base = median(walls["python -c pass"])
        self.figures["python"] = base
        self.figures["ps0"] = walls["supervisor ps"]
        before = {"python -c pass": "0.02 s", "supervisor --help": "0.23 s"}
        for name in names:
            wall = median(walls[name])
            value = f"{secs(wall)} (CPU {secs(median(cpus[name]))})"
            if name == "python -c pass":
                rows.append(Row(name, value, before=before[name]))
                continue
            if name == "ctr run -d":
                rows.append(Row(name, value))
                continue
            py = walls["python -c pass"]
            paired = median(a / b for a, b in zip(walls[name], py, strict=True))
            target = name in ("supervisor ps", "supervisor run -d")
            rows.append(Row(
                name, value, f"python -c pass {secs(base)}",
                f"{wall / base:.1f}x (paired {paired:.1f}x)",
                "<= 5x" if target else "", (wall / base <= 5) if target else None,
                before.get(name, ""),
            ))  # fmt: skip
            if name == "supervisor run -d":
                ctr = walls["ctr run -d"]
                paired = median(a / b for a, b in zip(walls[name], ctr, strict=True))
                rows.append(Row(
                    "  the same against ctr run -d", "", f"ctr run -d {secs(median(ctr))}",
                    f"{wall / median(ctr):.2f}x (paired {paired:.2f}x)",
                ))  # fmt: skip
        ls = []
        for _ in range(self.args.rounds):
            took, _, rc, err = await anyio.to_thread.run_sync(
                timed, self.ctr(self.d.namespace, "t", "ls")
            )
            ls.append(took)
        self.figures["ctr_ls0"] = ls
        scrapes = []
        for _ in range(self.args.rounds):
            took, body = await anyio.to_thread.run_sync(scrape, self.d.metrics)
            scrapes.append(took)
        self.figures["scrape0"] = (scrapes, len(body))

    # -- 2: starting N --------------------------------------------------------------------

    async def ctr_batch(self) -> None:
        ns = self.ns("ctr")
        await in_thread(self.ctr_run_argv(ns, "warm"))
        await self.ctr_remove(ns, "warm")
        ids = [f"ctr{i}" for i in range(self.n)]
        ctd = self.d.containerd_pid()
        cpu, ctd_cpu = children_cpu(), cpu_seconds(ctd)

        async def start(cid: str) -> None:
            await in_thread(self.ctr_run_argv(ns, cid))

        wall, errors = await in_parallel(ids, start)
        cpu, ctd_cpu = children_cpu() - cpu, cpu_seconds(ctd) - ctd_cpu
        running = await self.running(ns)
        memory = ShimMemory.of(ns)
        log(f"ctr run -d: {self.n} in {wall:.1f}s, {len(running)} running, {len(errors)} errors")
        self.figures["ctr_run"] = dict(wall=wall, errors=errors, running=len(running),
                                       cpu=cpu, ctd_cpu=ctd_cpu, memory=memory)  # fmt: skip
        ctd = self.d.containerd_pid()
        cpu, ctd_cpu = children_cpu(), cpu_seconds(ctd)
        wall, errors = await in_parallel(ids, lambda c: self.ctr_remove(ns, c))
        cpu, ctd_cpu = children_cpu() - cpu, cpu_seconds(ctd) - ctd_cpu
        log(f"ctr kill + rm: {self.n} in {wall:.1f}s, {len(errors)} errors")
        self.figures["ctr_rm"] = dict(wall=wall, errors=errors, cpu=cpu, ctd_cpu=ctd_cpu)

    async def library_batch(self, kind: str, count: int, group: int | None) -> dict[str, Any]:
        """Start ``count`` containers through the library, 8 at a time (grouped
        by ``group`` per shim when given), measure, crash one shim, delete all."""
        ns = self.ns(kind)
        fifo = str(self.base / f"{kind}-fifo")
        figures: dict[str, Any] = {"count": count, "group": group}
        tasks: dict[str, Task] = {}
        pids: dict[str, int] = {}
        async with Client(self.d.address, ns, fifo_dir=fifo) as client:

            async def start(cid: str, index: int) -> None:
                spec = oci_spec(self.rootfs, SLEEP)
                if group:
                    spec["annotations"] = {GROUP: f"g{group}-{index // group}"}
                container = await client.create_container(cid, spec)
                task = await container.new_task(FifoIO.create(fifo, cid))
                tasks[cid] = task
                pids[cid] = await task.start()

            async def delete(cid: str) -> None:
                task = tasks.pop(cid, None)
                if task is not None:
                    try:
                        await task.force_delete()
                    except NotFound:  # its shim was killed: containerd dropped the task
                        await task.io.aclose()
                    await task.container.delete()
                else:
                    container = await client.load_container(cid)
                    with contextlib.suppress(NotFound):
                        await (await container.task()).force_delete()
                    await container.delete()

            if kind == "lib":  # a warm-up of the path (page cache, shim binary)
                await start("warm", 0)
                await delete("warm")
            ids = [f"{kind}-{i}" for i in range(count)]
            index = {cid: i for i, cid in enumerate(ids)}
            ctd = self.d.containerd_pid()
            cpu, ctd_cpu = self_cpu(), cpu_seconds(ctd)
            wall, errors = await in_parallel(ids, lambda c: start(c, index[c]))
            figures.update(wall=wall, errors=errors, cpu=self_cpu() - cpu,
                           ctd_cpu=cpu_seconds(ctd) - ctd_cpu)  # fmt: skip
            figures["running"] = len(await self.running(ns))
            figures["memory"] = ShimMemory.of(ns)
            serving = {parent_of(pid) for pid in pids.values()}
            figures["idle_shims"] = sum(1 for s in shim_pids(ns) if s not in serving)
            log(f"library {kind} (group {group}): {count} in {wall:.1f}s, "
                f"{figures['running']} running, {len(errors)} errors; "
                f"{figures['memory'].per(count)}")  # fmt: skip
            if pids:
                victim = ids[0] if ids[0] in pids else next(iter(pids))
                figures["crash"] = await self.crash_one_shim(ns, fifo, pids, victim)
            wall, errors = await in_parallel(list(index), delete)
            figures.update(delete_wall=wall, delete_errors=errors)
            await anyio.sleep(2)  # a shim exits once its last task is deleted
            shims = shim_pids(ns)
            figures["shims_left"] = len(shims)
            # What containerd left: processes of containers whose task it dropped
            # after the shim crash, their runc state and cgroups. Ours, by namespace.
            figures["processes_left"] = len(set(namespace_processes(ns)) - set(shims))
            figures["state_left"] = len(namespace_leftovers(ns))
            await anyio.to_thread.run_sync(sweep_namespace, ns)
            log(f"library {kind}: deleted in {wall:.1f}s, {len(errors)} errors")
        return figures

    async def crash_one_shim(
        self, ns: str, fifo: str, pids: dict[str, int], victim: str
    ) -> dict[str, Any]:
        """SIGKILL the shim of ``victim``'s task: which tasks end, with what."""
        shim = parent_of(pids[victim])
        group = [cid for cid, pid in pids.items() if parent_of(pid) == shim]
        others = [cid for cid in pids if cid not in group]
        exits: dict[str, int] = {}
        done = anyio.Event()

        class Exits:
            async def process_event(self, cid: str, kind: EventType, event: Any) -> None:
                if kind is EventType.EXIT and event.exec_id is None and cid in pids:
                    exits.setdefault(cid, event.exit_status)
                    if all(c in exits for c in group):
                        done.set()

        async with Supervisor(
            Exits(), self.d.address, ns, fifo_dir=fifo, report_stopped_on_start=False
        ) as sup:
            began = time.perf_counter()
            os.kill(shim, signal.SIGKILL)
            with anyio.move_on_after(120):
                await done.wait()
            took = time.perf_counter() - began
            await anyio.sleep(2)  # anything else that goes with it
            left = await sup.client.list_tasks()
        states = {t.container_id: t.status for t in left}
        return {
            "shim": shim,
            "group": len(group),
            "exited": sum(1 for c in group if c in exits),
            "codes": Counter(exits[c] for c in group if c in exits),
            "within": took,
            "processes_alive": sum(1 for c in group if alive(pids[c])),
            "tasks_left": Counter(states[c].value for c in group if c in states),
            "others_running": sum(1 for c in others if states.get(c) is TaskStatus.RUNNING),
            "others": len(others),
            "others_exited": sum(1 for c in others if c in exits),
        }

    async def cli_batch(self) -> None:
        ids = [f"run{i}" for i in range(self.n)]
        daemon, ctd = self.d.pid, self.d.containerd_pid()
        before = (children_cpu(), cpu_seconds(daemon), cpu_seconds(ctd))

        async def run(cid: str) -> None:
            await anyio.to_thread.run_sync(lambda: self.d.cli_ok(
                "run", "-d", "--name", cid, "--rootfs", str(self.rootfs), *SLEEP))  # fmt: skip

        wall, errors = await in_parallel(ids, run)
        cpu = children_cpu() - before[0]
        daemon_cpu = cpu_seconds(daemon) - before[1]
        ctd_cpu = cpu_seconds(ctd) - before[2]
        listed = await control_list(self.d.control)
        running = {c.id: c.pid for c in listed if c.status == "running"}
        log(f"supervisor run -d: {self.n} in {wall:.1f}s, {len(running)} running, "
            f"{len(errors)} errors")  # fmt: skip
        await anyio.sleep(2)  # a relist or two
        idle0, t0 = cpu_seconds(daemon), time.perf_counter()
        await anyio.sleep(self.args.idle)
        idle = (cpu_seconds(daemon) - idle0) / (time.perf_counter() - t0)
        self.figures["cli_run"] = dict(
            wall=wall,
            errors=errors,
            running=len(running),
            cpu=cpu,
            daemon_cpu=daemon_cpu,
            ctd_cpu=ctd_cpu,
            rss=rss_kib(daemon),
            memory=ShimMemory.of(self.d.namespace),
            idle=idle,
            ids=ids,
        )
        self.figures["pids"] = running

    # -- 3, 7: ps, ctr t ls and scrape at N -----------------------------------------------

    async def at_n(self) -> None:
        env = repo_env()
        ps: list[float] = []
        py: list[float] = []
        ls: list[float] = []
        scrapes: list[float] = []
        scrape_cpu: list[tuple[float, float]] = []
        lines = 0
        for r in range(self.args.rounds):
            pair = [("ps", self.d.cli_argv("ps")), ("py", [sys.executable, "-c", "pass"])]
            for name, argv in pair if r % 2 else pair[::-1]:
                took, _, rc, err = await anyio.to_thread.run_sync(timed, argv, env)
                if rc != 0:
                    raise RuntimeError(f"{name}: {err}")
                (ps if name == "ps" else py).append(took)
            took, _, rc, _ = await anyio.to_thread.run_sync(
                timed, self.ctr(self.d.namespace, "t", "ls")
            )
            ls.append(took)
            daemon, ctd = self.d.pid, self.d.containerd_pid()
            before = cpu_seconds(daemon), cpu_seconds(ctd)
            took, body = await anyio.to_thread.run_sync(scrape, self.d.metrics)
            scrapes.append(took)
            scrape_cpu.append((cpu_seconds(daemon) - before[0], cpu_seconds(ctd) - before[1]))
        lines = len(self.d.cli_ok("ps").splitlines()) - 1
        parsed = parse_metrics(body)
        self.figures["at_n"] = dict(
            ps=ps, py=py, ls=ls, lines=lines, scrapes=scrapes, size=len(body), parsed=parsed,
            scrape_cpu=scrape_cpu,
        )  # fmt: skip

    # -- 4: daemon SIGKILL ----------------------------------------------------------------

    async def daemon_kills(self) -> None:
        results = []
        for k in range(self.args.kills):
            await anyio.sleep(1)
            result = await self.daemon_kill()
            results.append(result)
            log(f"daemon kill {k + 1}: READY {result['ready']:.2f}s after SIGKILL "
                f"({result['status']}); List with all running {result['answered']:.2f}s; "
                f"pids changed {result['changed']}")  # fmt: skip
        self.figures["daemon_kills"] = results

    async def daemon_kill(self) -> dict[str, Any]:
        expected = self.figures["pids"]
        self.d.drain_notify()
        old = self.d.procs[-1]
        began = time.perf_counter()
        old.kill()
        old.wait(30)
        spawned = time.perf_counter()
        self.d.start()
        answered: list[float] = []
        marks: dict[str, float] = {}

        async def containerd_serving() -> None:
            # The managed containerd outlives a SIGKILLed daemon and is adopted:
            # the same pid serving counts, as a new one does.
            while True:
                if self.d.containerd_pid() is not None:
                    marks.setdefault("containerd", time.perf_counter())
                    with contextlib.suppress(Exception):
                        async with Client(self.d.address, self.d.namespace) as client:
                            if await client.is_serving():
                                marks["serving"] = time.perf_counter()
                                return
                await anyio.sleep(0.01)

        async def poll() -> None:
            while True:
                with contextlib.suppress(Exception):
                    got = await control_list(self.d.control)
                    if sum(1 for c in got if c.status == "running") >= len(expected):
                        answered.append(time.perf_counter())
                        return
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            tg.start_soon(containerd_serving)
            _, status = await self.d.ready()
            ready_at = time.perf_counter()
            with anyio.fail_after(120):
                while not answered:
                    await anyio.sleep(0.02)
        listed = await control_list(self.d.control)
        now = {c.id: c.pid for c in listed if c.status == "running"}
        return {
            "ready": ready_at - began,
            "ready_spawned": ready_at - spawned,
            "containerd_started": marks.get("containerd", ready_at) - spawned,
            "containerd_serving": marks.get("serving", ready_at) - spawned,
            "after_serving": ready_at - marks.get("serving", ready_at),
            "status": status,
            "answered": answered[0] - began,
            "changed": sum(1 for cid, pid in expected.items() if now.get(cid) != pid),
        }

    # -- 5: containerd SIGKILL ------------------------------------------------------------

    async def containerd_kills(self) -> None:
        results = []
        expected = self.figures["pids"]
        before = parse_metrics((await anyio.to_thread.run_sync(scrape, self.d.metrics))[1])
        for k in range(self.args.kills):
            await anyio.sleep(2)
            row = await self.containerd_kill()
            results.append(row)
            log(f"containerd kill {k + 1}: serving {row['serving']:.2f}s, stream "
                f"{row['stream']:.2f}s, List {row['listed']:.2f}s, re-adopted "
                f"{row['after_serving']:.2f}s after serving")  # fmt: skip
        await anyio.sleep(2)
        after = parse_metrics((await anyio.to_thread.run_sync(scrape, self.d.metrics))[1])
        listed_now = {c.id: c for c in await control_list(self.d.control, all=True)}
        self.figures["containerd_kills"] = dict(
            results=results,
            reconnects=(after["reconnects"] or 0) - (before["reconnects"] or 0),
            sync_errors=(after["sync_errors"] or 0) - (before["sync_errors"] or 0),
            queue=after["queue"],
            restarted=sum(1 for c in listed_now.values() if c.restart_count),
            changed=sum(1 for c, p in expected.items()
                        if listed_now.get(c) is None or listed_now[c].pid != p),
        )  # fmt: skip

    async def containerd_kill(self) -> dict[str, Any]:
        """SIGKILL the managed containerd; when it serves again, when the daemon's
        event stream is back, when its List shows every task with its old pid."""
        expected = self.figures["pids"]
        old = self.d.containerd_pid()
        assert old is not None, "no managed containerd"
        log_path = self.d.log_path()
        offset = log_path.stat().st_size
        marks: dict[str, float] = {}
        began = time.perf_counter()
        os.kill(old, signal.SIGKILL)

        async def serving() -> None:
            while True:
                pid = self.d.containerd_pid()
                if pid not in (None, old):
                    with contextlib.suppress(Exception):
                        async with Client(self.d.address, self.d.namespace) as client:
                            if await client.is_serving():
                                marks["serving"] = time.perf_counter()
                                return
                await anyio.sleep(0.01)

        async def listed() -> None:
            while "serving" not in marks:
                await anyio.sleep(0.01)
            while True:
                with contextlib.suppress(Exception):
                    got = {c.id: (c.status, c.pid) for c in await control_list(self.d.control)}
                    if all(got.get(c) == ("running", p) for c, p in expected.items()):
                        marks["listed"] = time.perf_counter()
                        return
                await anyio.sleep(0.02)

        async def stream() -> None:
            while b"event stream restored" not in read_from(log_path, offset):
                await anyio.sleep(0.01)
            marks["stream"] = time.perf_counter()

        with anyio.fail_after(180):
            async with anyio.create_task_group() as tg:
                for watch in (serving, listed, stream):
                    tg.start_soon(watch)
        adopted = max(marks["listed"], marks["stream"])
        row: dict[str, Any] = {name: at - began for name, at in marks.items()}
        row.update(adopted=adopted - began, after_serving=adopted - marks["serving"],
                   relisted=b"containerd answers again" in read_from(log_path, offset))  # fmt: skip
        return row

    # -- 8: rm -f, and the definitions dir --------------------------------------------------

    async def remove_parallel(self) -> None:
        ids = self.figures["cli_run"]["ids"]
        daemon, cpu = self.d.pid, children_cpu()
        dcpu = cpu_seconds(daemon)

        async def rm(cid: str) -> None:
            await anyio.to_thread.run_sync(lambda: self.d.cli_ok("rm", "-f", cid))

        wall, errors = await in_parallel(ids, rm)
        left = len(await control_list(self.d.control, all=True))
        log(f"rm -f, 8 parallel: {len(ids)} in {wall:.1f}s, {len(errors)} errors, {left} left")
        self.figures["rm_parallel"] = dict(wall=wall, errors=errors, left=left,
                                           cpu=children_cpu() - cpu,
                                           daemon_cpu=cpu_seconds(daemon) - dcpu)  # fmt: skip

    async def definitions(self) -> None:
        ids = [f"def{i}" for i in range(self.n)]
        for cid in ids:
            (self.d.defs / f"{cid}.toml").write_text(
                f'rootfs = "{self.rootfs}"\ncommand = {json.dumps(SLEEP)}\n'
            )
        daemon = self.d.pid
        dcpu = cpu_seconds(daemon)
        began = time.perf_counter()
        await anyio.to_thread.run_sync(self.d.cli_ok, "reload")
        reloaded = time.perf_counter() - began
        with anyio.fail_after(600):
            while True:
                got = await control_list(self.d.control)
                if sum(1 for c in got if c.status == "running") >= len(ids):
                    break
                await anyio.sleep(0.1)
        all_running = time.perf_counter() - began
        daemon_cpu = cpu_seconds(daemon) - dcpu
        log(f"definitions dir + reload: {len(ids)} running in {all_running:.1f}s")
        await anyio.sleep(1)
        dcpu, cpu = cpu_seconds(daemon), children_cpu()
        began = time.perf_counter()
        await anyio.to_thread.run_sync(lambda: self.d.cli_ok("rm", "-f", *ids))
        wall = time.perf_counter() - began
        left = len(await control_list(self.d.control, all=True))
        log(f"rm -f with {len(ids)} ids in one call: {wall:.1f}s, {left} left")
        for cid in ids:
            (self.d.defs / f"{cid}.toml").unlink()
        await anyio.to_thread.run_sync(self.d.cli_ok, "reload")
        self.figures["definitions"] = dict(
            reload=reloaded,
            running=all_running,
            daemon_cpu=daemon_cpu,
            rm_wall=wall,
            rm_cpu=children_cpu() - cpu,
            rm_daemon_cpu=cpu_seconds(daemon) - dcpu,
            left=left,
        )

    # -- the figures ------------------------------------------------------------------------

    def tables(self) -> None:
        f, n, report = self.figures, self.n, self.report
        ctr_run, ctr_rm = f.get("ctr_run"), f.get("ctr_rm")
        lib, cli = f.get("lib"), f.get("cli_run")

        def rate(wall: float) -> float:
            return n / wall if wall else float("nan")

        def errs(fig: dict[str, Any], key: str = "errors") -> str:
            bad = fig.get(key) or []
            return f"; {len(bad)} FAILED (first: {bad[0][:120]})" if bad else ""

        if ctr_run:
            rows = report.section(
                f"2. start {n} containers (sleep 3600), {PARALLEL} in parallel; "
                "CPU: clients (user+sys) / containerd"
            )
            ref = f"ctr run -d {secs(ctr_run['wall'])} ({rate(ctr_run['wall']):.1f}/s)"
            rows.append(Row(
                "ctr run -d (reference)",
                f"{secs(ctr_run['wall'])}, {rate(ctr_run['wall']):.1f}/s, CPU "
                f"{ctr_run['cpu'] / n * 1000:.0f} / {ctr_run['ctd_cpu'] / n * 1000:.0f} ms each"
                + errs(ctr_run),
                before="8.0 s (25/s) at 200",
            ))  # fmt: skip
            if cli:
                ratio = rate(cli["wall"]) / rate(ctr_run["wall"])
                rows.append(Row(
                    "supervisor run -d (CLI)",
                    f"{secs(cli['wall'])}, {rate(cli['wall']):.1f}/s, CPU "
                    f"{cli['cpu'] / n * 1000:.0f} / {cli['ctd_cpu'] / n * 1000:.0f} ms each, "
                    f"daemon {cli['daemon_cpu'] / n * 1000:.1f} ms each" + errs(cli),
                    ref, f"{ratio:.2f}x", ">= 0.4x", ratio >= 0.4, "41.6 s (4.8/s) at 200",
                ))  # fmt: skip
            if lib:
                ratio = rate(lib["wall"]) / rate(ctr_run["wall"])
                rows.append(Row(
                    "library, FifoIO (Client, 8 concurrent)",
                    f"{secs(lib['wall'])}, {rate(lib['wall']):.1f}/s, CPU "
                    f"{lib['cpu'] / n * 1000:.1f} / {lib['ctd_cpu'] / n * 1000:.0f} ms each"
                    + errs(lib),
                    ref, f"{ratio:.2f}x", ">= 1.3x", ratio >= 1.3, "5.2 s (38/s) vs ctr 7.0 s",
                ))  # fmt: skip
            for size, g in sorted(f.get("groups", {}).items()):
                ratio = g["count"] / g["wall"] / rate(ctr_run["wall"])
                rows.append(Row(
                    f"library, grouped {size} per shim ({g['count']})",
                    f"{secs(g['wall'])}, {g['count'] / g['wall']:.1f}/s" + errs(g),
                    ref, f"{ratio:.2f}x",
                ))  # fmt: skip
        if "ps0" in f and "at_n" in f:
            at = f["at_n"]
            rows = report.section(
                f"3. ps (median of {self.args.rounds}; python -c pass paired: "
                f"{secs(median(at['py']))} now, {secs(f['python'])} at 0)"
            )
            ps0, psn = median(f["ps0"]), median(at["ps"])
            rows.append(Row(f"supervisor ps, {at['lines']} containers", spread(at["ps"]),
                            f"ps with 0: {secs(ps0)}", f"{psn / ps0:.2f}x", "<= 1.5x",
                            psn / ps0 <= 1.5, "838 ms at 200"))  # fmt: skip
            lsn, ls0 = median(at["ls"]), median(f["ctr_ls0"])
            rows.append(Row(f"ctr t ls, {n} tasks", spread(at["ls"]), f"with 0: {secs(ls0)}",
                            f"{lsn / ls0:.2f}x", before="62 ms at 200"))  # fmt: skip
            rows.append(Row("supervisor ps / ctr t ls at N", "", "", f"{psn / lsn:.1f}x"))
        if f.get("daemon_kills"):
            kills = f["daemon_kills"]
            rows = report.section(
                f"4. daemon SIGKILL -> next daemon READY=1 ({len(kills)} kills; its managed "
                "containerd serves on and the next daemon adopts it)"
            )
            ready = [k["ready"] for k in kills]
            rows.append(Row(
                f"SIGKILL -> READY, {n} adopted", spread(ready),
                f"STATUS={kills[-1]['status']}", "",
                "<= 1 s (at 1000)", median(ready) <= 1.0, "1.58 s at 200",
            ))  # fmt: skip
            rows.append(Row("  of which new process -> READY",
                            spread([k["ready_spawned"] for k in kills])))  # fmt: skip
            rows.append(Row("    new process -> containerd spawned",
                            spread([k["containerd_started"] for k in kills])))  # fmt: skip
            rows.append(Row("    new process -> containerd serving",
                            spread([k["containerd_serving"] for k in kills])))  # fmt: skip
            rows.append(Row("    containerd serving -> READY (adoption)",
                            spread([k["after_serving"] for k in kills])))  # fmt: skip
            rows.append(Row("SIGKILL -> List answers, all running", spread(
                [k["answered"] for k in kills]), "what `supervisor ps` shows"))  # fmt: skip
            rows.append(Row("containers whose pid changed (restarted)",
                            str(sum(k["changed"] for k in kills))))  # fmt: skip
        if f.get("containerd_kills"):
            ck = f["containerd_kills"]
            res = ck["results"]
            rows = report.section(
                f"5. containerd SIGKILL -> every task re-adopted ({len(res)} kills). Re-adopted: "
                "the daemon's List shows all N running with pids unchanged AND it logged "
                "'event stream restored' (metrics: supervisor_events_reconnects_total + 1)"
            )
            after = [r["after_serving"] for r in res]
            rows.append(Row("SIGKILL -> containerd serving again",
                            spread([r["serving"] for r in res])))  # fmt: skip
            rows.append(Row("SIGKILL -> event stream restored", spread([r["stream"] for r in res])))
            rows.append(Row("SIGKILL -> List all running, pids same",
                            spread([r["listed"] for r in res])))  # fmt: skip
            rows.append(Row(f"re-adopted after containerd serves ({n})", spread(after), "", "",
                            "<= 2 s", median(after) <= 2.0))  # fmt: skip
            rows.append(Row(
                "checks",
                f"reconnects +{ck['reconnects']:g}, relist resync seen in "
                f"{sum(r['relisted'] for r in res)}/{len(res)}, "
                f"sync errors +{ck['sync_errors']:g}, "
                f"sync queue 2 s after the last kill {ck['queue']:g}, restarted "
                f"{ck['restarted']}, pids changed {ck['changed']}",
            ))  # fmt: skip
        rows = report.section("6. memory and CPU per container")
        if cli:
            rss0 = f.get("rss0", 0)
            rows.append(Row(
                "daemon RSS", f"{cli['rss'] / 1024:.1f} MiB with {n}; "
                f"{(cli['rss'] - rss0) / max(n, 1):.0f} KiB per container",
                f"{rss0 / 1024:.1f} MiB with 0",
            ))  # fmt: skip
            rows.append(Row("daemon CPU per run -d", f"{cli['daemon_cpu'] / n * 1000:.1f} ms",
                            f"containerd {cli['ctd_cpu'] / n * 1000:.1f} ms"))  # fmt: skip
            if "definitions" in f:
                d = f["definitions"]
                rows.append(Row("daemon CPU per start from definitions",
                                f"{d['daemon_cpu'] / n * 1000:.1f} ms"))  # fmt: skip
            rows.append(Row(f"daemon CPU idle with {n}", f"{cli['idle'] * 100:.2f}% of a core",
                            "relist every 1 s"))  # fmt: skip
            rows.append(Row("shims, daemon's containers", cli["memory"].per(n)))
        if ctr_run:
            rows.append(Row("shims, ctr's containers", ctr_run["memory"].per(n)))
        if lib:
            rows.append(Row("shims, library (no grouping)", lib["memory"].per(n)))
        for size, g in sorted(f.get("groups", {}).items()):
            rows.append(Row(f"shims, grouped {size} per shim", g["memory"].per(g["count"])))
        grouped = [(f"{k} per shim", v) for k, v in sorted(f.get("groups", {}).items())]
        for label, g in [("no grouping", lib), *grouped]:
            if g and "idle_shims" in g:
                rows.append(Row(
                    f"shims serving no task, {label}",
                    f"{g['idle_shims']} while running; {g['shims_left']} left once every task "
                    "and container was deleted (then killed by pid)",
                    "", "", "0", g["idle_shims"] == 0 and g["shims_left"] == 0,
                ))  # fmt: skip
        for label, g in [("no grouping", lib), *grouped]:
            if not g or "crash" not in g:
                continue
            c = g["crash"]
            codes = ", ".join(f"{k} x{v}" for k, v in sorted(c["codes"].items())) or "none"
            rows.append(Row(
                f"shim SIGKILL, {label}",
                f"{c['exited']} of its {c['group']} tasks exited ({codes}) within "
                f"{secs(c['within'])}; processes left alive {c['processes_alive']}; tasks "
                f"left {dict(c['tasks_left']) or 0}; others running {c['others_running']}/"
                f"{c['others']} (exited {c['others_exited']})",
            ))  # fmt: skip
            rows.append(Row(
                f"  after deleting every task and container, {label}",
                f"container processes still running {g['processes_left']}, runc state dirs and "
                f"cgroups {g['state_left']} (then removed by pid)",
                "", "", "0", g["processes_left"] == 0 and g["state_left"] == 0,
            ))  # fmt: skip
        if "scrape0" in f and "at_n" in f:
            at = f["at_n"]
            rows = report.section(f"7. scrape GET /metrics (median of {self.args.rounds})")
            s0, size0 = f["scrape0"]
            p = at["parsed"]
            rows.append(Row(
                f"with {n} containers", f"{spread(at['scrapes'])}, {at['size']} bytes",
                f"with 0: {secs(median(s0))}, {size0} bytes",
                f"{median(at['scrapes']) / median(s0):.1f}x",
            ))  # fmt: skip
            cpu = at["scrape_cpu"]
            daemon_ms = median(c[0] for c in cpu) * 1000
            ctd_ms = median(c[1] for c in cpu) * 1000
            rows.append(Row("  CPU per scrape: daemon / containerd",
                            f"{daemon_ms:.0f} / {ctd_ms:.0f} ms"))  # fmt: skip
            rows.append(Row(
                "parsed (prometheus_client.parser)",
                f"{p['families']} families, {p['samples']} samples; supervisor_containers "
                f"{p['containers']:g}; {p['state_samples']} state samples",
                "", "", f"containers = {n}", p["containers"] == n,
            ))  # fmt: skip
        rmp, defs = f.get("rm_parallel"), f.get("definitions")
        if ctr_rm and (rmp or defs):
            rows = report.section(f"8. rm -f of all {n} (reference: ctr task kill -s 9 + ctr task "
                                  f"rm -f + ctr container rm, {PARALLEL} in parallel)")  # fmt: skip
            ref = f"ctr {secs(ctr_rm['wall'])} ({rate(ctr_rm['wall']):.1f}/s)"
            rows.append(Row(
                "ctr kill + rm (reference)",
                f"{secs(ctr_rm['wall'])}, {rate(ctr_rm['wall']):.1f}/s, CPU "
                f"{ctr_rm['cpu'] / n * 1000:.0f} / {ctr_rm['ctd_cpu'] / n * 1000:.0f} ms each"
                + errs(ctr_rm),
            ))  # fmt: skip
            if rmp:
                ratio = rmp["wall"] / ctr_rm["wall"]
                rows.append(Row(
                    f"supervisor rm -f ID, {PARALLEL} in parallel",
                    f"{secs(rmp['wall'])}, {rate(rmp['wall']):.1f}/s, CPU "
                    f"{rmp['cpu'] / n * 1000:.0f} ms each, daemon "
                    f"{rmp['daemon_cpu'] / n * 1000:.1f} ms each; left {rmp['left']}" + errs(rmp),
                    ref, f"{ratio:.2f}x time", "<= 1.5x", ratio <= 1.5,
                ))  # fmt: skip
            if defs:
                ratio = defs["rm_wall"] / ctr_rm["wall"]
                rows.append(Row(
                    f"supervisor rm -f ID x{n} (one call)",
                    f"{secs(defs['rm_wall'])}, {n / defs['rm_wall']:.1f}/s, daemon "
                    f"{defs['rm_daemon_cpu'] / n * 1000:.1f} ms each; left {defs['left']}",
                    ref, f"{ratio:.2f}x time", "<= 1.5x", ratio <= 1.5,
                ))  # fmt: skip
        if defs:
            rows = report.section(f"9. start {n} from the definitions dir (`supervisor reload`)")
            rows.append(Row("reload returned", secs(defs["reload"]),
                            f"run -d {secs(cli['wall'])}" if cli else ""))  # fmt: skip
            rows.append(Row("all running", f"{secs(defs['running'])}, "
                            f"{n / defs['running']:.1f}/s",
                            f"ctr {rate(ctr_run['wall']):.1f}/s" if ctr_run else "",
                            f"{n / defs['running'] / rate(ctr_run['wall']):.2f}x" if ctr_run
                            else ""))  # fmt: skip

    # -- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> dict[str, int]:
        """Remove everything this run made, whatever state it is in; count leftovers."""
        d = self.daemon
        if d is None:
            return {}
        if d.pid is not None:
            with contextlib.suppress(Exception):
                listed = json.loads(d.cli_ok("ps", "-a", "--json", timeout=120))
                ids = [c["id"] for c in listed]
                if ids:
                    log(f"cleanup: rm -f {len(ids)} containers of the daemon")
                    d.cli("rm", "-f", *ids, timeout=CALL_TIMEOUT)
        if d.containerd_pid() is not None:
            for ns in self.namespaces:
                if ns == d.namespace:
                    continue
                with contextlib.suppress(Exception):
                    ids = check(self.ctr(ns, "c", "ls", "-q")).decode().split()
                    if ids:
                        log(f"cleanup: {len(ids)} containers in {ns}")
                        subprocess.run(self.ctr(ns, "t", "rm", "-f", *ids), capture_output=True,
                                       timeout=CALL_TIMEOUT)  # fmt: skip
                        subprocess.run(self.ctr(ns, "c", "rm", *ids), capture_output=True,
                                       timeout=CALL_TIMEOUT)  # fmt: skip
        managed = d.containerd_pid()
        for proc in d.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        deadline = time.monotonic() + 20
        while managed is not None and alive(managed) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # shims whose tasks were deleted exit by themselves
        left = {
            "shims": sum(len(shim_pids(ns)) for ns in self.namespaces),
            "processes in the namespaces' cgroups and shims": sum(
                len(namespace_processes(ns)) for ns in self.namespaces
            ),
            "runc state dirs and container cgroups": sum(
                len(namespace_leftovers(ns)) for ns in self.namespaces
            ),
            "managed containerd alive": int(managed is not None and alive(managed)),
        }
        # Whatever is left is removed by pid: ours, by namespace.
        if managed is not None and alive(managed):
            os.kill(managed, signal.SIGKILL)
        for ns in self.namespaces:
            sweep_namespace(ns)
        if d.notify is not None:
            d.notify.close()
        return left


async def run(bench: Bench) -> None:
    args = bench.args
    bench.rootfs = busybox_rootfs(bench.base / "rootfs")
    await bench.start_daemon()
    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("CLI wall", bench.cli_wall),
        ("ctr run -d and rm", bench.ctr_batch),
        ("library", lambda: _store(bench, "lib", bench.library_batch("lib", bench.n, None))),
        ("supervisor run -d", bench.cli_batch),
        ("ps and scrape at N", bench.at_n),
        ("daemon SIGKILL", bench.daemon_kills),
        ("containerd SIGKILL", bench.containerd_kills),
        ("rm -f, 8 parallel", bench.remove_parallel),
        ("definitions dir, rm -f in one call", bench.definitions),
        ("shim grouping", lambda: _groups(bench)),
    ]
    needs_containers = ("ps and scrape at N", "daemon SIGKILL", "containerd SIGKILL",
                        "rm -f, 8 parallel")  # fmt: skip
    for name, step in steps:
        if name in args.skip:
            continue
        if name in needs_containers and "cli_run" not in bench.figures:
            log(f"-- {name}: skipped (needs the containers of 'supervisor run -d')")
            continue
        log(f"-- {name}")
        with bench.profiled(name):
            await step()


async def _store(bench: Bench, key: str, figures: Awaitable[dict[str, Any]]) -> None:
    bench.figures[key] = await figures


async def _groups(bench: Bench) -> None:
    count = bench.args.grouped if bench.args.grouped is not None else bench.n
    sizes = []
    for text in bench.args.group_sizes.split(","):
        size = count if text == "all" else min(int(text), count)
        if size > 1 and size not in sizes:
            sizes.append(size)
    groups = bench.figures.setdefault("groups", {})
    for size in sizes:
        groups[size] = await bench.library_batch(f"grp{size}", count, size)


def header(bench: Bench, load: tuple[float, ...]) -> list[str]:
    import supervisor

    def version(argv: list[str]) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(argv, capture_output=True, timeout=10).stdout.decode().split(
                "\n")[0].strip()  # fmt: skip
        return "?"

    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return [
        f"bench/scale.py N={bench.n}: {os.cpu_count()} cores, load {load[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end; {version([CTR, '--version'])}; "
        f"{version([RUNC, '--version'])}; cgroup {cgroup}; kernel {platform.release()}",
        f"supervisor package: {Path(supervisor.__file__).parent}; CLI: "
        f"{' '.join(cli_command())} (PYTHONPATH={REPO}; bytecode cached in {PYCACHE}, as an "
        f"installed package's); RLIMIT_NOFILE "
        f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, help="containers (default 200; 20 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: N=20, 5 rounds, 1 kill")
    parser.add_argument("--rounds", type=int, help="rounds for CLI walls, ps, scrapes (15)")
    parser.add_argument("--kills", type=int, help="daemon and containerd SIGKILLs, each (3)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle daemon CPU")
    parser.add_argument("--grouped", type=int, help="containers in the grouping runs (N)")
    parser.add_argument("--group-sizes", default="10,all", help="containers per shim (10,all)")
    parser.add_argument("--skip", action="append", default=[], help="a step to skip, by name")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy binary: profile the daemon")
    args = parser.parse_args()
    args.n = args.n if args.n is not None else (20 if args.quick else 200)
    args.rounds = args.rounds or (5 if args.quick else 15)
    args.kills = args.kills or (1 if args.quick else 3)
    if args.quick:
        args.idle = min(args.idle, 2.0)
    if os.geteuid() != 0:
        sys.exit("bench/scale.py needs root (containers)")
    base = Path(tempfile.mkdtemp(prefix="scale-"))
    load = os.getloadavg()
    bench = Bench(args, base, Report())
    log(f"N={args.n}, working in {base}")
    failed: BaseException | None = None
    try:
        anyio.run(run, bench)
    except BaseException as exc:  # Ctrl-C included: report what was measured, clean up
        failed = exc
        bench.report.notes.append(
            "STOPPED EARLY: " + "".join(traceback.format_exception_only(exc)).strip()
        )
        if not isinstance(exc, KeyboardInterrupt):
            traceback.print_exc()
    finally:
        log("cleaning up")
        try:
            left = bench.cleanup()
        except BaseException as exc:
            left = {}
            bench.report.notes.append(f"cleanup failed: {exc!r}")
        bench.report.header = header(bench, load)
        try:
            bench.tables()
        except Exception:
            traceback.print_exc()
        if left:
            rows = bench.report.section("cleanup: left after the run (all removed by pid after)")
            for key, value in left.items():
                rows.append(Row(key, str(value), "", "", "0", value == 0))
        bench.report.print()
        mounted = str(base) in Path("/proc/self/mountinfo").read_text()
        if args.keep or failed is not None or mounted:
            print(f"\n(work dir kept: {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if failed is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
