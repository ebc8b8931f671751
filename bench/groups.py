"""Shim groups through the daemon (issue 12 item 3): what they save, what the
daemon's turns for a group's creates cost and prevent, and what a shim's
crash does to a full group.

1. Memory: N sleepers started by ``supervisor run -d`` (8 CLI processes at
   once) with no group, then in groups of ``--size`` (the cap): shims, idle
   shims, RSS/PSS/USS per container, and the wall time of the starts.
2. First creates: ``--rounds`` rounds of ``--groups`` new groups of
   ``--members`` members all started at once, through the daemon and through
   the library (no turns, the same containerd): shims that serve nothing.
3. A crash: the shim of a full group of ``restart=always`` sleepers
   SIGKILLed by pid: how they exit, how long until all run again, shims after.

Everything is removed at the end (``rm -f``, then the daemon stopped), and
what is left (shims, processes in the namespaces' cgroups, runc state,
cgroups) is counted. Usage::

    sudo .venv/bin/python bench/groups.py [--containers 48] [--size 16]
        [--rounds 10] [--groups 3] [--members 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, not another one installed

from supervisor import Client, NotFound, NullIO, oci_spec  # noqa: E402
from supervisor.daemon._groups import GROUP_ANNOTATION  # noqa: E402
from supervisor.testing import (  # noqa: E402
    busybox_rootfs,
    namespace_leftovers,
    namespace_processes,
    remove_namespace_dirs,
)

PARALLEL = 8
SLEEP = ["sleep", "3600"]
EXIT_LABEL = "io.containerd-supervisor/exit-code"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    return out


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def shims(namespace: str) -> list[int]:
    found = []
    for pid in namespace_processes(namespace):
        with contextlib.suppress(OSError):
            if (
                Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .split(b"\0")[0]
                .endswith(b"containerd-shim-runc-v2")
            ):
                found.append(pid)
    return found


def memory_kib(pid: int) -> tuple[int, int, int]:
    """RSS, PSS and USS of a process (smaps_rollup)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                values[key] = int(rest.split()[0])
    uss = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values.get("Rss", 0), values.get("Pss", 0), uss


class Daemon:
    def __init__(self, base: Path, max_group: int) -> None:
        self.base = base
        self.namespace = f"groups-{uuid.uuid4().hex[:6]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(base / "notify.sock"))
        (base / "defs").mkdir()
        self.config = base / "config.toml"
        self.config.write_text(
            f'namespace = "{self.namespace}"\nstate_dir = "{base / "state"}"\n'
            f'log_dir = "{base / "logs"}"\ndefinitions_dir = "{base / "defs"}"\n'
            f'[control]\nsocket = "{base / "control.sock"}"\n'
            f'[network]\ndefault = "none"\n[runtime]\nmax_shim_group = {max_group}\n'
        )

    @property
    def address(self) -> str:
        return str(self.base / "state" / "containerd" / "containerd.sock")

    def start(self) -> None:
        out = open(self.base / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "daemon", "--config", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**env(), "NOTIFY_SOCKET": str(self.base / "notify.sock")},
        )  # fmt: skip
        out.close()
        self.notify.settimeout(120)
        while b"READY=1" not in self.notify.recv(4096).split(b"\n"):
            pass

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-m", "supervisor", "--socket", str(self.base / "control.sock")]
        return subprocess.run([*argv, *args], capture_output=True, timeout=600, env=env(), cwd=REPO)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


async def run_all(d: Daemon, rootfs: Path, ids: list[str], groups: dict[str, str],
                  extra: tuple[str, ...] = ()) -> tuple[float, list[str]]:  # fmt: skip
    """``run -d`` of each id, PARALLEL CLI processes at a time: wall time, errors."""
    gate = anyio.Semaphore(PARALLEL)
    errors: list[str] = []

    async def one(cid: str) -> None:
        flags = ("--shim-group", groups[cid]) if cid in groups else ()
        async with gate:
            argv = ["run", "-d", "--name", cid, *flags, *extra, "--rootfs", str(rootfs), *SLEEP]
            done = await anyio.to_thread.run_sync(lambda: d.cli(*argv))
        if done.returncode != 0:
            errors.append(f"{cid}: {done.stderr.decode().strip()}")

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for cid in ids:
            tg.start_soon(one, cid)
    return time.perf_counter() - began, errors


async def task_pids(client: Client) -> dict[str, int]:
    return {t.container_id: t.pid for t in await client.list_tasks() if t.status.value == "running"}


def idle(namespace: str, pids: dict[str, int]) -> int:
    serving = {parent_of(p) for p in pids.values()}
    return sum(1 for s in shims(namespace) if s not in serving)


RM_ERRORS: list[str] = []


def remove_all(d: Daemon, ids: list[str]) -> None:
    """``rm -f`` in one call per 64 ids; errors are kept (a group's members
    removed at once used to race their shim's shutdown: "ttrpc: closed")."""
    for start in range(0, len(ids), 64):
        done = d.cli("rm", "-f", *ids[start : start + 64])
        RM_ERRORS.extend(done.stderr.decode().splitlines())


async def memory(d: Daemon, client: Client, rootfs: Path, n: int, size: int) -> dict[str, Any]:
    ids = [f"m{size}-{i}" for i in range(n)]
    groups = {cid: f"m{size}g{i // size}" for i, cid in enumerate(ids)} if size > 1 else {}
    wall, errors = await run_all(d, rootfs, ids, groups)
    pids = await task_pids(client)
    own = shims(d.namespace)
    rss, pss, uss = (sum(memory_kib(p)[k] for p in own) for k in range(3))
    figures = dict(size=size, n=n, wall=wall, errors=errors, running=len(pids), shims=len(own),
                   idle=idle(d.namespace, pids), rss=rss / n / 1024, pss=pss / n / 1024,
                   uss=uss / n / 1024)  # fmt: skip
    remove_all(d, ids)
    with anyio.move_on_after(10):
        while shims(d.namespace):
            await anyio.sleep(0.1)
    figures["shims_after_rm"] = len(shims(d.namespace))
    log(f"memory, {size} per shim: {figures}")
    return figures


async def first_creates(d: Daemon, client: Client, rootfs: Path, args: Any) -> dict[str, Any]:
    """Rounds of new groups, every member's first create at once."""
    daemon_idle, library_idle = [], []
    lib_ns = f"{d.namespace}-lib"
    async with Client(d.address, lib_ns) as lib:
        for r in range(args.rounds):
            ids = [f"f{r}-{g}-{m}" for g in range(args.groups) for m in range(args.members)]
            groups = {cid: cid.rsplit("-", 1)[0] for cid in ids}
            gate = anyio.Semaphore(len(ids))
            _, errors = await run_all(d, rootfs, ids, groups)
            assert not errors, errors
            pids = await task_pids(client)
            daemon_idle.append(idle(d.namespace, pids))
            remove_all(d, ids)

            async def start(cid: str, groups: dict[str, str] = groups, gate: Any = gate) -> None:
                spec = oci_spec(rootfs, SLEEP)
                spec["annotations"] = {GROUP_ANNOTATION: groups[cid]}
                async with gate:
                    container = await lib.create_container(cid, spec)
                    await (await container.new_task(NullIO())).start()

            async with anyio.create_task_group() as tg:
                for cid in ids:
                    tg.start_soon(start, cid)
            library_idle.append(idle(lib_ns, await task_pids(lib)))
            for cid in ids:
                container = await lib.load_container(cid)
                with contextlib.suppress(NotFound):
                    await (await container.task()).force_delete()
                await container.delete()
            for pid in shims(lib_ns):  # the idle ones never exit by themselves
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            log(f"round {r}: idle shims, daemon {daemon_idle[-1]}, library {library_idle[-1]}")
    remove_namespace_dirs(lib_ns)
    return dict(daemon=sum(daemon_idle), library=sum(library_idle), rounds=args.rounds,
                groups=args.groups * args.rounds)  # fmt: skip


async def crash(d: Daemon, client: Client, rootfs: Path, size: int) -> dict[str, Any]:
    ids = [f"c{i}" for i in range(size)]
    _, errors = await run_all(
        d, rootfs, ids, {cid: "crash" for cid in ids}, ("--restart", "always")
    )
    assert not errors, errors
    before = await task_pids(client)
    [shim] = {parent_of(before[cid]) for cid in ids}
    os.kill(shim, signal.SIGKILL)
    began = time.perf_counter()
    with anyio.fail_after(120):
        while True:
            now = await task_pids(client)
            if all(cid in now and now[cid] != before[cid] for cid in ids):
                break
            await anyio.sleep(0.05)
    took = time.perf_counter() - began
    codes: Counter[str] = Counter()
    for cid in ids:
        codes[(await client.load_container(cid)).info.labels.get(EXIT_LABEL, "?")] += 1
    serving = len({parent_of(now[c]) for c in ids})
    figures = dict(members=size, all_running_again=took, exit_codes=dict(codes),
                   shims_after=len(shims(d.namespace)), serving=serving,
                   idle=idle(d.namespace, now))  # fmt: skip
    remove_all(d, ids)
    log(f"crash: {figures}")
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=48)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--members", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-groups-") as tmp:
        base = Path(tmp)
        rootfs = busybox_rootfs(base / "rootfs")
        d = Daemon(base, args.size)
        figures: dict[str, Any] = {}
        try:
            d.start()
            async with Client(d.address, d.namespace) as client:
                figures["memory"] = [await memory(d, client, rootfs, args.containers, s)
                                     for s in (1, args.size)]  # fmt: skip
                figures["first_creates"] = await first_creates(d, client, rootfs, args)
                figures["crash"] = await crash(d, client, rootfs, args.size)
        finally:
            d.stop()
            left = {
                "shims and processes": len(namespace_processes(d.namespace)),
                "runc state and cgroups": len(namespace_leftovers(d.namespace)),
                "daemon tracebacks": (base / "daemon.log").read_text().count("Traceback"),
            }
            figures["left"] = left
            figures["rm_errors"] = RM_ERRORS
            _clean(d)
        print(json.dumps(figures, indent=2))
        for m in figures["memory"]:
            print(f"{m['size']:>3} per shim: {m['n']} started in {m['wall']:.1f}s "
                  f"({statistics.fmean([m['wall'] / m['n']]) * 1000:.0f} ms each), "
                  f"{m['shims']} shims ({m['idle']} idle); per container RSS {m['rss']:.2f} MiB, "
                  f"PSS {m['pss']:.2f}, USS {m['uss']:.2f}")  # fmt: skip


def _clean(d: Daemon) -> None:
    """Stop the managed containerd the daemon leaves (by its pidfile) and what ran in it."""
    pidfile = d.base / "state" / "containerd" / "containerd.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        if str(d.config.parent / "state").encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
            for _ in range(150):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
    for pid in shims(d.namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_namespace_dirs(d.namespace)


if __name__ == "__main__":
    anyio.run(main)
