"""The long-running service: definitions in, containers kept alive, state in containerd.

The daemon is one backend of the event pipeline, and level-triggered: events
are hints. Each container has one idempotent :meth:`Daemon.sync` that reads
what containerd says now and takes the next steps toward what the container
should be (:func:`._plan.plan`). It runs on an event for the container, on a
relist of all tasks every second, after containerd comes back, and again after
a failure with a backoff. Everything the daemon must know after a crash lives
in labels on the containers, written before it acts, so a new daemon rebuilds
itself from containerd alone and touches nothing that runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .._supervisor import Supervisor
from ..errors import (
    SupervisorError,
)
from ..events import Event, EventType, TaskExit
from ._config import DaemonConfig
from ._containerd import ContainerdStartError, ManagedContainerd
from ._control import serve
from ._definitions import ContainerDefinition, load_definitions
from ._keeper import OPERATION_TIMEOUT, RELIST_INTERVAL, Keeper, fingerprint
from ._labels import (
    HASH,
    MANAGED_FILTER,
    NEXT_START,
    SOURCE,
    definition_from_labels,
)
from ._notify import Notifier, watchdog_interval
from ._output import Listener, publish
from ._scheduler import EXPECTED

log = logging.getLogger("supervisor.daemon")

#: A relist that takes longer counts as containerd being away.
RELIST_TIMEOUT = 10.0


class DaemonError(RuntimeError):
    """The daemon cannot run (another one holds its state dir, containerd did not start)."""


@dataclass
class Applied:
    """What applying a definitions directory did."""

    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def lock_state_dir(state_dir: Path) -> int:
    """Take the state dir's lock for this process (one daemon per state dir);
    returns the descriptor that holds it."""
    path = state_dir / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DaemonError(
            f"another supervisor daemon (pid {holder}) is running with state dir {state_dir}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Daemon(Keeper):
    """Runs the definitions in ``config.definitions_dir`` under their restart
    policies, until SIGTERM or SIGINT; SIGHUP reloads the definitions."""

    def __init__(self, config: DaemonConfig) -> None:
        super().__init__(config)
        # Read the watchdog interval before the environment loses it (so that
        # the managed containerd does not inherit systemd's variables).
        self.watchdog_interval = watchdog_interval()
        self.notifier = Notifier.from_env(unset=True)
        self.event_listeners: set[Listener] = set()
        self.load_errors: list[str] = []
        self.managed: ManagedContainerd | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT (signals that arrive while starting wait
        their turn); SIGHUP reloads the definitions. ``DaemonError`` when it
        cannot start."""
        with anyio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
            lock = lock_state_dir(self.config.state_dir)
            try:
                await self._run(signals)
            except (ContainerdStartError, OSError, SupervisorError) as exc:
                raise DaemonError(str(exc)) from exc
            except BaseExceptionGroup as group:
                # One line for what stopped it (a socket path that cannot be
                # made, containerd gone for good), not a traceback of groups.
                matched, rest = group.split((ContainerdStartError, OSError, SupervisorError))
                if matched is None or rest is not None:
                    raise
                first: BaseException = matched
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise DaemonError(str(first)) from group
            finally:
                self._stopping = True
                for journal in self._logs.values():
                    journal.close()
                if self.managed is not None:
                    with anyio.CancelScope(shield=True):
                        await self.managed.stop()
                os.close(lock)

    async def _run(self, signals: Any) -> None:
        config = self.config
        config.log_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        started = time.monotonic()
        self.notifier.status("starting containerd" if config.managed else "connecting")
        address = config.containerd_address
        if address is None:
            self.managed = ManagedContainerd(
                config.state_dir / "containerd", config.containerd_binary
            )
            await self.managed.start()
            address = self.managed.address
        async with (
            Supervisor(
                self,
                address,
                config.namespace,
                fifo_dir=str(config.fifo_dir),
                containerd_state=self.managed.state_dirs() if self.managed else None,
            ) as sup,
            anyio.create_task_group() as tg,
        ):
            self._sup, self._tg = sup, tg
            if self.managed is not None:
                tg.start_soon(self.managed.watch)
            await self._restore()
            tg.start_soon(self.scheduler.run)
            tg.start_soon(self._relist)
            server = await serve(self, config.control_socket, config.control_group)
            running = len(self._tasks)
            log.info(
                "ready in %.2fs: %d definitions, %d containers running",
                time.monotonic() - started,
                len(self.definitions),
                running,
            )
            self.notifier.ready(f"{running} containers running")
            if self.watchdog_interval is not None:
                tg.start_soon(self._watchdog, self.watchdog_interval)
            await self._serve_signals(signals)
            self._stopping = True
            self.notifier.stopping()
            server.close()
            with contextlib.suppress(OSError):
                config.control_socket.unlink()
            self.notifier.status("stopping")
            if config.stop_containers_on_exit:
                with anyio.move_on_after(OPERATION_TIMEOUT * 2):
                    async with anyio.create_task_group() as stops:
                        for cid in list(self.definitions):
                            stops.start_soon(self._shutdown_stop, cid)
            tg.cancel_scope.cancel()

    async def _serve_signals(self, signals: Any) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.notifier.reloading()
                await self.reload()
                self.notifier.ready(f"{len(self._tasks)} containers running")
            else:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                return

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await anyio.sleep(interval)

    async def _relist(self) -> None:
        """Every second, one Tasks.List: a task whose state differs from what
        its last sync saw is synced again (a lost event, an outage)."""
        down = False
        while True:
            await anyio.sleep(RELIST_INTERVAL)
            try:
                with anyio.fail_after(RELIST_TIMEOUT):
                    tasks = await self.client.list_tasks()
            except (SupervisorError, TimeoutError):
                down = True  # the event pipeline logs the outage once
                continue
            now = {t.container_id: fingerprint(t) for t in tasks}
            for cid in list(self.definitions):
                if down or now.get(cid) != self._seen.get(cid):
                    self.scheduler.request(cid)
            if down:
                log.info("containerd answers again; syncing %d containers", len(self.definitions))
                down = False

    # -- definitions -------------------------------------------------------------

    def _load(self, directory: Path | None = None) -> dict[str, ContainerDefinition]:
        definitions, errors = load_definitions(directory or self.config.definitions_dir)
        self.load_errors = [str(e) for e in errors]
        for error in errors:
            log.error("skipping definition %s", error)
        return {d.id: d for d in definitions}

    async def _restore(self) -> None:
        """Live restore: adopt what runs, apply the definitions, and take every
        container one sync toward its policy before the daemon says READY."""
        wanted = self._load()
        existing = {c.id: c for c in await self.client.list_containers(MANAGED_FILTER)}
        await self._sweep_fifo_dirs()
        to_sync: list[str] = []
        for cid, info in existing.items():
            definition = wanted.get(cid)
            if definition is None and info.labels.get(SOURCE) in ("api", "apply"):
                try:
                    self.definitions[cid] = definition_from_labels(info)
                except (SupervisorError, ValueError) as exc:
                    log.error("cannot adopt %s: %s", cid, exc)
                    continue
                to_sync.append(cid)
            elif definition is None:
                log.info("container %s has no definition any more: removing it", cid)
                await self._stop(cid, remove=True)
            elif info.labels.get(HASH) != definition.definition_hash():
                log.info("definition of %s changed: replacing it", cid)
                await self._stop(cid, remove=True)
                if await self._create(definition):
                    to_sync.append(cid)
            else:
                self.definitions[cid] = definition
                to_sync.append(cid)
        for cid, definition in wanted.items():
            if cid not in existing and await self._create(definition):
                to_sync.append(cid)
        self._from_dir = set(wanted)
        limit = anyio.Semaphore(32)
        async with anyio.create_task_group() as tg:
            for cid in to_sync:
                tg.start_soon(self._first_sync, cid, limit)

    async def _first_sync(self, cid: str, limit: anyio.Semaphore) -> None:
        async with limit:
            await self._sync_and_report(cid, first=True)

    async def _sync_and_report(self, cid: str, *, first: bool = False) -> str | None:
        """Sync now; a failure is logged and left to the scheduler to retry.
        Returns why the container could not be started, if it could not."""
        try:
            with anyio.fail_after(OPERATION_TIMEOUT):
                at = await self.sync(cid, first=first)
        except EXPECTED as exc:
            self.scheduler.request(cid, time.time() + 0.2)  # it logs what persists
            return f"{cid}: {exc}"
        if at is not None:
            self.scheduler.request(cid, at)
        return self.start_errors.pop(cid, None)

    async def _sweep_fifo_dirs(self) -> None:
        """FIFO directories no task uses any more (a daemon died before
        removing them) go at start."""
        base = self.config.fifo_dir
        if not base.is_dir():
            return
        with anyio.fail_after(OPERATION_TIMEOUT):
            tasks = await self.client.list_tasks()
        used = {Path(p).parent for t in tasks for p in (t.stdout, t.stderr) if p}
        for entry in base.iterdir():
            if entry not in used and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)

    async def reload(self) -> Applied:
        """Apply the definitions directory: create new, replace changed, remove gone."""
        return await self.apply(self.config.definitions_dir, remove=True)

    async def apply(self, directory: Path, *, remove: bool = False) -> Applied:
        """Create the new definitions of ``directory`` and replace the changed
        ones; with ``remove`` (the configured directory), delete the containers
        whose file is gone. Containers applied from another directory are kept
        like those of ``run``: a reload does not remove them."""
        own = remove
        wanted = self._load(directory)
        result = Applied()
        if remove:
            for cid in sorted(self._from_dir - set(wanted)):
                log.info("definition of %s removed: stopping and deleting it", cid)
                await self._stop(cid, remove=True)
                self.definitions.pop(cid, None)
                self._from_dir.discard(cid)
                result.removed.append(cid)
        source = "definitions" if own else "apply"
        for cid, definition in sorted(wanted.items()):
            current = self.definitions.get(cid)
            if current is None:
                if await self._create(definition, source):
                    result.created.append(cid)
                    error = await self._sync_and_report(cid)
                    if error:
                        result.errors.append(error)
            elif current.definition_hash() != definition.definition_hash():
                log.info("definition of %s changed: replacing it", cid)
                await self._stop(cid, remove=True)
                if await self._create(definition, source):
                    result.replaced.append(cid)
                    error = await self._sync_and_report(cid)
                    if error:
                        result.errors.append(error)
            if own:
                self._from_dir.add(cid)
        result.errors[:0] = self.load_errors
        return result

    # -- containers --------------------------------------------------------------

    async def _create(self, definition: ContainerDefinition, source: str = "definitions") -> bool:
        """Create a definition's container with its start pending: the first
        sync starts it (also when this daemon dies before it can)."""
        labels = {**self._labels(definition, source), NEXT_START: f"{time.time():.6f}"}
        try:
            with anyio.fail_after(OPERATION_TIMEOUT):
                async with self._lock(definition.id):
                    await self.client.create_container(
                        definition.id, definition.spec(), labels=labels
                    )
                    self.definitions[definition.id] = definition
        except (SupervisorError, TimeoutError) as exc:
            log.error("cannot create %s (%s): %s", definition.id, definition.source, exc)
            self.load_errors.append(f"{definition.source}: {exc}")
            return False
        return True

    # -- the backend -------------------------------------------------------------

    async def process_event(self, container_id: str, event_type: EventType, event: Event) -> None:
        publish(self.event_listeners, (container_id, event_type, event))
        if container_id not in self.definitions:
            return
        if event_type is EventType.OOM:
            self._oom_pending[container_id] = self._oom_pending.get(container_id, 0) + 1
            self.scheduler.request(container_id)
        elif event_type is EventType.EXIT and isinstance(event, TaskExit) and event.exec_id is None:
            self.scheduler.request(container_id)
