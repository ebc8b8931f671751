"""A daemon under test: a subprocess with a config, a definitions directory,
its own managed containerd and a notify socket; cleaned up afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from supervisor import Client, NotFound, TaskStatus
from supervisor.net import _netns
from supervisor.testing import remove_namespace_dirs, start_containerd

from .conftest import _missing

PREFIX = "io.containerd-supervisor/"
READY_TIMEOUT = 60.0
WAIT = 30.0


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


@dataclass
class DaemonDirs:
    base: Path
    namespace: str
    rootfs: Path
    notify: socket.socket
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The network namespace the daemon runs in (None: the host's).
    netns: Path | None = None

    @property
    def config(self) -> Path:
        return self.base / "config.toml"

    @property
    def defs(self) -> Path:
        return self.base / "defs"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def control(self) -> Path:
        return self.base / "control.sock"

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 60) -> Done:
        """Run ``supervisor --socket CONTROL ARGS`` and collect what it printed."""
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", str(self.control), *args],
            input=input,
            capture_output=True,
            timeout=timeout,
        )
        return Done(done.returncode, done.stdout.decode(), done.stderr.decode())

    def cli_process(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--socket", str(self.control), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    @property
    def address(self) -> str:
        return str(self.state / "containerd" / "containerd.sock")

    def define(self, cid: str, command: list[str], restart: str = "no", **extra: str) -> None:
        lines = [
            f'rootfs = "{self.rootfs}"',
            f"command = {json.dumps(command)}",
            f'restart = "{restart}"',
            *(f"{k} = {v}" for k, v in extra.items()),
        ]
        (self.defs / f"{cid}.toml").write_text("\n".join(lines) + "\n")

    def start(self, watchdog_usec: int | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.getsockname())
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        out = open(self.base / f"daemon-{len(self.procs)}.log", "wb")  # noqa: SIM115
        enter = ["nsenter", f"--net={self.netns}"] if self.netns is not None else []
        proc = subprocess.Popen(
            [*enter, sys.executable, "-m", "supervisor", "daemon", "--config", str(self.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "".join(p.read_text() for p in sorted(self.base.glob("daemon-*.log")))

    async def message(self, wanted: str, within: float = READY_TIMEOUT) -> list[str]:
        """Wait for a notify datagram containing ``wanted``; returns its lines."""
        with anyio.fail_after(within):
            while True:
                await anyio.wait_readable(self.notify)
                lines = self.notify.recv(4096).decode().splitlines()
                if wanted in lines:
                    return lines


@pytest.fixture
async def dirs(tmp_path: Path, rootfs: Path) -> AsyncIterator[DaemonDirs]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    namespace = f"daemon-{uuid.uuid4().hex[:8]}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    d = DaemonDirs(tmp_path, namespace, rootfs, notify)
    d.defs.mkdir()
    d.config.write_text(
        f'namespace = "{namespace}"\n'
        f'state_dir = "{d.state}"\n'
        f'log_dir = "{d.logs}"\n'
        f'definitions_dir = "{d.defs}"\n'
        "[control]\n"
        f'socket = "{tmp_path / "control.sock"}"\n'
        # Networking is tested in namespaces of its own (test_network.py).
        "[network]\n"
        'default = "none"\n'
    )
    try:
        yield d
    finally:
        for proc in d.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        notify.close()
        try:
            await _clean(d)
        finally:
            _netns.unpin_all(d.state / "net" / "netns")


async def _clean(d: DaemonDirs) -> None:
    """Remove what the daemons left (their containers keep running by design)."""
    if not (d.state / "containerd" / "config.toml").exists():
        return
    _stop_orphan_containerd(d)
    ctd = start_containerd(d.state / "containerd")
    try:
        async with Client(ctd.address, d.namespace) as client:
            for state in await client.list_tasks():
                container = await client.load_container(state.container_id)
                await (await container.task()).force_delete()
            for info in await client.list_containers():
                await (await client.load_container(info.id)).delete()
    finally:
        ctd.stop()
        remove_namespace_dirs(d.namespace)


def _stop_orphan_containerd(d: DaemonDirs) -> None:
    """A managed containerd outlives a SIGKILLed daemon (by design): end the
    one the test's daemons left, found by its pidfile and checked by its config."""
    pidfile = d.state / "containerd" / "containerd.pid"
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(d.state / "containerd" / "config.toml").encode() not in cmdline:
        return
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists() or b"Z" in _proc_state(pid):
            return
        time.sleep(0.05)


def _proc_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b") ", 1)[1][:1]
    except (OSError, IndexError):
        return b""


async def until(check: Callable[[], Awaitable[bool]], within: float = WAIT) -> None:
    """Poll state the daemon keeps in containerd (no event tells us it changed)
    every 50 ms until ``check`` holds, failing after ``within`` seconds."""
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def labels(client: Client, cid: str) -> dict[str, str]:
    return dict((await client.load_container(cid)).info.labels)


async def pid_of(client: Client, cid: str) -> int | None:
    try:
        state = await client.process_state(cid)
    except NotFound:
        return None
    return state.pid if state.status is TaskStatus.RUNNING else None
