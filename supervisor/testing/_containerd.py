from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: How long a private containerd gets to start serving (moby allows 15 s).
START_TIMEOUT = 15.0
#: Where the runc v2 shim keeps runc's state, one directory per namespace.
RUNC_ROOT = Path("/run/containerd/runc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: How long it gets to stop on SIGTERM before SIGKILL.
STOP_TIMEOUT = 15.0

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = "{sock}.debug"
"""


@dataclass
class ContainerdProcess:
    """A private containerd: its directories, socket and process."""

    base: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return str(self.base / "containerd.sock")

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def pid(self) -> int:
        return self.process.pid

    def task_state_dir(self, namespace: str) -> Path:
        """Where the runc v2 shims keep a namespace's task bundles."""
        return self.state / "io.containerd.runtime.v2.task" / namespace

    def our_shims(self) -> list[int]:
        """Pids of shims serving this containerd (their command line names our socket)."""
        return [pid for pid, args in _shims() if self.address.encode() in args]

    def stop(self) -> None:
        """SIGTERM, up to 15 s, then SIGKILL; then end what its shims left running.

        Containers still running at this point are a test's leak: their
        processes, shims and runc state are removed so the machine stays clean.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        for shim in self.our_shims():
            for pid in [*_descendants(shim), shim]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        tasks_dir = self.state / "io.containerd.runtime.v2.task"
        namespaces = [p.name for p in tasks_dir.iterdir()] if tasks_dir.is_dir() else []
        for namespace in namespaces:
            runc_root = RUNC_ROOT / namespace
            if runc_root.is_dir():
                for entry in runc_root.iterdir():
                    subprocess.run(
                        ["runc", "--root", str(runc_root), "delete", "--force", entry.name],
                        capture_output=True,
                        timeout=STOP_TIMEOUT,
                    )
                with contextlib.suppress(OSError):
                    runc_root.rmdir()

    def kill(self) -> None:
        """SIGKILL containerd itself (the shims and containers live on)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Start containerd again on the same directories and socket."""
        self.kill()
        self.process = _spawn(self.base, self.log_path)
        _wait_serving(self)


def namespace_leftovers(namespace: str) -> list[Path]:
    """Container cgroups and runc state still present for ``namespace``."""
    found: list[Path] = []
    if CGROUP_ROOT.is_dir():
        for controller in CGROUP_ROOT.iterdir():
            ns_dir = controller / namespace
            if ns_dir.is_dir():
                found += [p for p in ns_dir.iterdir() if p.is_dir()]
    runc_state = RUNC_ROOT / namespace
    if runc_state.is_dir():
        found += list(runc_state.iterdir())
    return found


def namespace_processes(namespace: str) -> list[int]:
    """Pids of runc v2 shims serving ``namespace`` and of processes left in
    its containers' cgroups (e.g. a ``runc init`` whose task was lost)."""
    found: set[int] = set()
    for pid, args in _shims():
        if any(a == b"-namespace" and b == namespace.encode() for a, b in itertools.pairwise(args)):
            found.add(pid)
    pids_root = CGROUP_ROOT / "pids" / namespace
    if pids_root.is_dir():
        for procs in pids_root.glob("*/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in procs.read_text().split())
    return sorted(found)


def remove_namespace_dirs(namespace: str) -> None:
    """Remove the per-namespace cgroup parents and runc root left once every
    container of ``namespace`` is gone (runc never removes them)."""
    candidates = [c / namespace for c in CGROUP_ROOT.iterdir()] if CGROUP_ROOT.is_dir() else []
    for directory in [*candidates, RUNC_ROOT / namespace]:
        if directory.is_dir():
            for child in directory.iterdir():
                if child.is_dir() and directory != RUNC_ROOT / namespace:
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                directory.rmdir()


def _shims() -> list[tuple[int, list[bytes]]]:
    """Every runc v2 shim process: its pid and command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args[0].endswith(b"containerd-shim-runc-v2"):
            found.append((int(entry.name), args))
    return found


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        try:
            threads = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for thread in threads:
            try:
                children = [int(c) for c in (thread / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def _spawn(base: Path, log_path: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("containerd")
    if binary is None:
        raise FileNotFoundError("containerd is not installed (Debian: containerd)")
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [binary, "--config", str(base / "config.toml")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )


def _answers(address: str) -> bool:
    ctr = shutil.which("ctr")
    if ctr is None:
        return True
    done = subprocess.run(
        [ctr, "--address", address, "--timeout", "2s", "version"],
        capture_output=True,
        timeout=10,
    )
    return done.returncode == 0


def _wait_serving(c: ContainerdProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    delay = 0.005
    while True:
        if c.process.poll() is not None:
            tail = c.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"containerd exited with {c.process.returncode}:\n{tail}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(c.address)
            except OSError:
                pass
            else:
                # The socket can be a dead instance's, or accept before the
                # services are up: ask containerd itself.
                if _answers(c.address):
                    return
        if time.monotonic() > deadline:
            c.stop()
            raise TimeoutError(f"containerd did not serve on {c.address} within {START_TIMEOUT}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def start_containerd(base: str | os.PathLike[str]) -> ContainerdProcess:
    """Start a private containerd under ``base`` (root, state, socket; CRI off).

    Returns once its socket accepts connections. Stop it with ``.stop()``.
    """
    base = Path(base)
    for sub in ("root", "state"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    sock = base / "containerd.sock"
    (base / "config.toml").write_text(
        _CONFIG.format(root=base / "root", state=base / "state", sock=sock)
    )
    log_path = base / "containerd.log"
    c = ContainerdProcess(base=base, process=_spawn(base, log_path), log_path=log_path)
    _wait_serving(c)
    return c
