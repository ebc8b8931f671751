"""A containerd run by the daemon, as moby's libcontainerd supervisor does it.

Its own config (CRI off), root, state and socket under the daemon's state
dir; started in its own session without NOTIFY_SOCKET and without a
parent-death signal, so that it outlives a daemon that crashes; adopted
from its pidfile when one is alive (the next daemon's case); health
checked (3 s timeout; after 3 failures SIGUSR1 for a stack dump, then
SIGKILL); restarted with a backoff when it dies; stopped with SIGTERM, then
SIGKILL after 15 s. The shims, and so the containers, outlive it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import anyio
import anyio.abc

from ..client import Client
from ..client._bundles import stop_stray_shims, sweep_dead_bundles
from ..errors import one_line

log = logging.getLogger("supervisor.containerd")

#: moby's numbers.
START_TIMEOUT = 15.0
HEALTH_INTERVAL = 0.5
HEALTH_FAILURES = 3
STOP_TIMEOUT = 15.0
RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 10.0

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"
"""


class ContainerdStartError(RuntimeError):
    """The managed containerd did not come up."""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class ManagedContainerd:
    """Start, adopt, watch, restart and stop the daemon's own containerd."""

    def __init__(self, base: Path, binary: str = "containerd") -> None:
        self.base = base
        self.binary = binary
        self.config_path = base / "config.toml"
        self.pidfile = base / "containerd.pid"
        self.log_path = base / "containerd.log"
        self.address = str(base / "containerd.sock")
        self.pid: int | None = None
        self._child: anyio.abc.Process | None = None
        self._log_start = 0  # where the last started containerd's output begins
        self.restarts = 0

    # -- start -------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("root", "state"):
            (self.base / sub).mkdir(parents=True, exist_ok=True, mode=0o711)
        self.config_path.write_text(
            _CONFIG.format(root=self.base / "root", state=self.base / "state", sock=self.address)
        )

    def _adoptable(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        args = _cmdline(pid)
        if _alive(pid) and str(self.config_path) in args:
            return pid
        return None

    async def start(self) -> None:
        """Adopt a live containerd from the pidfile, or start one; wait until it serves."""
        self._write_config()
        pid = self._adoptable()
        if pid is not None:
            self.pid = pid
            log.info("adopted running containerd (pid %d)", pid)
        else:
            await self._spawn()
        await self._wait_serving()
        if pid is None:
            await self._stop_strays()

    def state_dirs(self) -> tuple[str, str]:
        """Its state and root directories."""
        return str(self.base / "state"), str(self.base / "root")

    async def _spawn(self) -> None:
        # The task bundles a killed containerd leaves and never clears (see
        # supervisor.client._bundles) go while it is not running.
        await anyio.to_thread.run_sync(sweep_dead_bundles, self.base / "state", self.base / "root")
        binary = shutil.which(self.binary) or self.binary
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")
        }
        # No parent-death signal (moby gives its containerd one): a daemon that
        # crashes leaves containerd serving, and the next daemon adopts it from
        # the pidfile instead of waiting for a new one to reload every shim (0.8 s
        # with 1000 containers) and risking what containerd loses when killed.
        args = [binary, "--config", str(self.config_path)]
        # A short, local file open at (re)start: not worth a thread.
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230
            self._log_start = out.tell()  # what this run writes comes after
            self._child = await anyio.open_process(
                args,
                stdin=None,
                stdout=out,
                stderr=out,
                env=env,
                start_new_session=True,
            )
        self.pid = self._child.pid
        self.pidfile.write_text(f"{self.pid}\n")
        log.info("started containerd (pid %d) on %s", self.pid, self.address)

    async def _wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.01
        async with Client(self.address, "default") as client:
            while True:
                if self.pid is None or not _alive(self.pid):
                    raise ContainerdStartError(await self._start_failure())
                if _socket_accepts(self.address) and await client.is_serving():
                    return
                if time.monotonic() > deadline:
                    raise ContainerdStartError(
                        f"containerd did not serve within {START_TIMEOUT:g}s"
                    )
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.25)

    async def _start_failure(self) -> str:
        """One line on why containerd ended while starting: the signal that
        killed it, or its exit code and its last error line."""
        code = None
        if self._child is not None and self._child.pid == self.pid:
            with anyio.move_on_after(1):
                code = await self._child.wait()
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return f"containerd was killed by {signal.Signals(-code).name} while starting"
        try:
            with open(self.log_path, "rb") as f:  # noqa: ASYNC230 (a local file, once)
                f.seek(max(self._log_start, os.fstat(f.fileno()).st_size - 8192))
                tail = f.read().decode(errors="replace").splitlines()
        except OSError:
            tail = []
        errors = [line for line in tail if "level=fatal" in line or "level=error" in line]
        last = (errors or [line for line in tail if line.strip()] or [""])[-1].strip()
        status = f"exit code {code}" if code is not None else "exited"
        return f"containerd {status} while starting: {one_line(last[-300:])} (log: {self.log_path})"

    # -- watch -------------------------------------------------------------------

    async def watch(self) -> None:
        """Run until cancelled: health-check, and restart containerd when it dies
        or stops answering."""
        delay = RESTART_DELAY_MIN
        async with Client(self.address, "default") as client:
            while True:
                failures = 0
                while failures < HEALTH_FAILURES:
                    await anyio.sleep(HEALTH_INTERVAL)
                    if self.pid is None or not _alive(self.pid):
                        if self.pid is not None:
                            log.warning("containerd (pid %s) is gone", self.pid)
                        break
                    if await client.is_serving():
                        failures = 0
                        delay = RESTART_DELAY_MIN
                    else:
                        failures += 1
                        log.warning("containerd health check failed (%d of %d)", failures,
                                    HEALTH_FAILURES)  # fmt: skip
                else:
                    await self._kill_hung()
                await self._reap()
                await anyio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)
                self.restarts += 1
                try:
                    await self._spawn()
                    await self._wait_serving()
                    await self._stop_strays()
                except (ContainerdStartError, OSError) as exc:
                    log.error("restarting containerd failed: %s", exc)

    async def _stop_strays(self) -> None:
        """A containerd that cannot load a shim in time (one stopped or slow
        under load) deletes its bundle and leaves the shim running, unreachable
        for good (supervisor.client._bundles): stop those once it serves, and
        after it stops (what ``rm -f`` left while it ran)."""
        await anyio.to_thread.run_sync(stop_stray_shims, self.base / "state")

    async def _kill_hung(self) -> None:
        assert self.pid is not None
        log.error("containerd is not answering; SIGUSR1 for a stack dump, then SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1)
        await anyio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def _reap(self) -> None:
        if self._child is not None:
            with anyio.move_on_after(STOP_TIMEOUT):
                await self._child.wait()
            self._child = None
        # Never keep a dead pid: it may be reused by an unrelated process.
        if self.pid is not None and not _alive(self.pid):
            self.pid = None

    # -- stop --------------------------------------------------------------------

    async def stop(self) -> None:
        """SIGTERM, up to 15 s, then SIGKILL. The containers live on in their shims."""
        pid = self.pid
        if pid is None or not _alive(pid):
            await self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            if self._child is not None:
                with anyio.move_on_after(0.05):
                    await self._child.wait()
            else:
                await anyio.sleep(0.05)
        if _alive(pid):
            log.warning("containerd ignored SIGTERM for %gs; SIGKILL", STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self._reap()
        with contextlib.suppress(OSError):
            self.pidfile.unlink()
        self.pid = None
        await self._stop_strays()


def _socket_accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True
