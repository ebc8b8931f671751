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
import importlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .._supervisor import Supervisor
from ..client import Client, ContainerInfo, ProcessState
from ..errors import AlreadyExists, NotFound, RegistryError, SupervisorError, Unavailable
from ..events import Event, EventType, TaskExit
from ..net import Mode, NetworkManager, parse_port
from ._config import DaemonConfig
from ._containerd import START_TIMEOUT as CONTAINERD_START_TIMEOUT
from ._containerd import ContainerdStartError, ManagedContainerd
from ._definitions import ContainerDefinition, load_definitions
from ._keeper import OPERATION_TIMEOUT, RELIST_INTERVAL, Keeper, Seen, fingerprint
from ._labels import (
    DEFINITION_FILE,
    HASH,
    MANAGED,
    MANAGED_FILTER,
    NETWORK,
    NEXT_START,
    PORTS,
    SOURCE,
    definition_from_labels,
)
from ._notify import Notifier, watchdog_interval
from ._output import Listener, publish
from ._scheduler import EXPECTED
from ._sockdir import prepare_socket_dir
from ._view import TouchingLock

_T = TypeVar("_T")
log = logging.getLogger("supervisor.daemon")

#: A relist that takes longer counts as containerd being away.
RELIST_TIMEOUT = 10.0
#: Every this many task relists, the containers' records are listed too.
RELIST_CONTAINERS_EVERY = 10
#: How often the sweep of what pulls left looks again for a moment without pulls.
SWEEP_RETRY = 5.0
#: First syncs at once when the daemon starts.
FIRST_SYNCS = 32
#: Until READY, systemd is asked for START_EXTEND seconds more every
#: START_PROGRESS_EVERY seconds (the unit's TimeoutStartSec is 90 s).
START_PROGRESS_EVERY = 10.0
START_EXTEND = 30.0
#: Retry of definitions that could not be applied: 1 s doubling to 30 s.
DEFINITIONS_RETRY_MIN = 1.0
DEFINITIONS_RETRY_MAX = 30.0


class DaemonError(RuntimeError):
    """The daemon cannot run (another one holds its state dir, containerd did not start)."""


@dataclass
class Applied:
    """What applying a definitions directory did."""

    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    incomplete: bool = False  # a step failed and is retried


def _joined_last(ids: list[str], wanted: dict[str, ContainerDefinition]) -> list[str]:
    """``ids`` with those joining another one's network (``container:X``, X
    among them) after the others."""
    batch = set(ids)

    def joins(cid: str) -> bool:
        network = wanted[cid].network or ""
        return network.startswith("container:") and network.split(":", 1)[1] in batch

    return sorted(ids, key=lambda cid: (joins(cid), cid))


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


def _import_late() -> None:
    """Import what the daemon needs only once restored (the control API and
    the metrics, ~70 ms), in a thread, while the restore waits on containerd."""
    importlib.import_module("supervisor.daemon._control")
    importlib.import_module("supervisor.daemon._metrics")


class _Early:
    """What the daemon reads at start while containerd and the event stream
    get ready (see :meth:`Daemon._run`)."""

    def __init__(self) -> None:
        self.net_opened = anyio.Event()
        self.listed = anyio.Event()
        self.containers: list[ContainerInfo] | None = None

    async def open_net(self, net: NetworkManager) -> None:
        await anyio.to_thread.run_sync(net.open)
        self.net_opened.set()

    async def list_containers(self, address: str, namespace: str) -> None:
        """One listing of the containers' records, on a connection of its own;
        when it fails, the restore lists them itself."""
        try:
            with anyio.fail_after(OPERATION_TIMEOUT):
                async with Client(address, namespace) as client:
                    self.containers = await client.list_containers()
        except (SupervisorError, OSError, TimeoutError) as exc:
            log.debug("containers not listed ahead of the restore: %s", exc)
        finally:
            self.listed.set()


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
        self._wanted: dict[str, ContainerDefinition] = {}  # the definitions dir, last loaded
        self._keep: dict[str, str] = {}  # ids whose file did not load (why): left as they are
        self._keep_all = False
        self._keep_all_why = ""
        self.problems: dict[str, str] = {}  # what `ps` and `inspect` show beside a container
        self._definitions_dirty = anyio.Event()
        self._sweeping = False  # a sweep of what pulls left is under way
        self._start_status = "starting"  # sent with systemd's start-timeout extensions

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
                self.net.close()
                if self.managed is not None:
                    with anyio.CancelScope(shield=True):
                        await self.managed.stop()
                os.close(lock)

    async def _run(self, signals: Any) -> None:
        config = self.config
        prepare_socket_dir(config.control_socket)  # refused before anything is started
        config.log_dir.mkdir(parents=True, exist_ok=True, mode=0o755)

        # What the restore needs and does not depend on containerd's events is
        # read while containerd starts and the event stream is set up: the
        # network records (1000 files at 1000 containers) and the containers'
        # records (~0.1 s to decode at 1000).
        early = _Early()
        async with anyio.create_task_group() as ahead:
            ahead.start_soon(early.open_net, self.net)
            ahead.start_soon(anyio.to_thread.run_sync, _import_late)
            ready = anyio.Event()
            ahead.start_soon(self._extend_start, ready)
            started = time.monotonic()
            self.notifier.status("starting containerd" if config.managed else "connecting")
            address = config.containerd_address
            if address is None:
                self.managed = ManagedContainerd(
                    config.state_dir / "containerd", config.containerd_binary
                )
                await self.managed.start()
                address = self.managed.address
            ahead.start_soon(early.list_containers, address, config.namespace)
            sup = Supervisor(
                self,
                address,
                config.namespace,
                fifo_dir=str(config.fifo_dir),
                containerd_state=self.managed.state_dirs() if self.managed else None,
            )
            if self.managed is not None:
                # Its watcher reports the managed containerd's death: one line a fault.
                sup.pipeline.outage_level = logging.INFO
            async with sup, anyio.create_task_group() as tg:
                self._sup, self._tg = sup, tg
                if self.managed is not None:
                    tg.start_soon(self.managed.watch)
                self.defer_pumps()  # adopted tasks' output is copied from READY on
                await self._restore(early)
                tg.start_soon(self.scheduler.run)
                tg.start_soon(self._retry_definitions)
                tg.start_soon(self._relist)
                from ._control import serve  # imported by _import_late meanwhile

                observe = None
                if config.metrics_address is not None:
                    from ._metrics import DaemonMetrics, serve_metrics

                    metrics = DaemonMetrics(self)
                    observe = metrics.observe_control
                    where = await tg.start(serve_metrics, metrics.render, config.metrics_address)
                    log.info("metrics on %s/metrics", where)
                server = await serve(
                    self, config.control_socket, config.control_group, observe=observe
                )
                running = len(self._tasks)
                log.info(
                    "ready in %.2fs: %d definitions, %d containers running",
                    time.monotonic() - started,
                    len(self.definitions),
                    running,
                )
                self.notifier.ready(f"{running} containers running")
                ready.set()
                self.start_pumps()
                self._sweep_soon()
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
            ahead.cancel_scope.cancel()

    async def _extend_start(self, ready: anyio.Event) -> None:
        """Until READY, ask systemd for more time every few seconds: a restore
        that starts every container after a reboot can take longer than the
        unit's start timeout (a hung one is still bounded: every step is)."""
        self.notifier.extend_timeout(CONTAINERD_START_TIMEOUT + START_EXTEND)
        while True:
            with anyio.move_on_after(START_PROGRESS_EVERY):
                await ready.wait()
                return
            self.notifier.extend_timeout(START_EXTEND, self._start_status)

    async def _serve_signals(self, signals: Any) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self.notifier.reloading()
                # In a task of its own: a call that met a hung containerd can
                # leave a stray cancellation on the task that made it (grpclib),
                # which must not be the daemon's main task.
                async with anyio.create_task_group() as reloading:
                    reloading.start_soon(self.reload)
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
        subscriptions = self.pipeline_stats().subscriptions
        relists = 0
        while True:
            await anyio.sleep(RELIST_INTERVAL)
            try:
                with anyio.fail_after(RELIST_TIMEOUT):
                    tasks = await self.client.list_tasks()
            except (SupervisorError, TimeoutError):
                down = True  # the event pipeline logs the outage once
                self.view.touch_all()  # `ps` asks containerd, and says it is away
                continue
            if self.pipeline_stats().subscriptions != subscriptions:
                down = True  # an outage between two relists: the stream was made again
                subscriptions = self.pipeline_stats().subscriptions
            now = {t.container_id: fingerprint(t) for t in tasks}
            view = self.view
            for cid in list(self.definitions):
                if down or now.get(cid) != self._seen.get(cid):
                    self.scheduler.request(cid)
                entry = view.fresh(cid)
                if entry is not None and (down or fingerprint(entry.task) != now.get(cid)):
                    view.touch(cid)
            if down:
                log.info("containerd answers again; syncing %d containers", len(self.definitions))
                down = False
                self._sweep_soon()
            relists += 1
            if relists % RELIST_CONTAINERS_EVERY == 0:
                await self._relist_containers()

    async def _relist_containers(self) -> None:
        """A record removed or relabelled behind the daemon's back (`ctr c
        rm`, `ctr c label`) sends no task event: now and then the records
        are listed too, and a difference makes a sync and a fresh read."""
        try:
            with anyio.fail_after(RELIST_TIMEOUT):
                listed = {c.id: c for c in await self.client.list_containers(MANAGED_FILTER)}
        except (SupervisorError, TimeoutError):
            return  # the task relist notices an outage
        view = self.view
        for cid in list(self.definitions):
            info = listed.get(cid)
            entry = view.fresh(cid)
            if info is None:
                if entry is not None and entry.info is not None:
                    view.touch(cid)
                    self.scheduler.request(cid)
            elif entry is not None and (
                entry.info is None
                or entry.info.labels != info.labels
                or entry.info.image != info.image
            ):
                view.touch(cid)

    # -- definitions -------------------------------------------------------------

    async def _load(self, directory: Path | None = None) -> dict[str, ContainerDefinition]:
        own = directory is None
        directory = directory or self.config.definitions_dir
        # In a thread: loading builds each spec, which reads files in rootfses
        # that containers may have written (a user's name from /etc/passwd).
        definitions, errors = await anyio.to_thread.run_sync(load_definitions, directory)
        is_dir = await anyio.Path(directory).is_dir()
        self.load_errors = [str(e) for e in errors]
        for error in errors:
            log.error("skipping definition %s", error)
        if own:
            # A file that does not load, or a directory that cannot be read (a
            # typo before a reload, a late mount at boot), removes nothing: its
            # containers stay as they are.
            self._keep = {e.path.stem: str(e) for e in errors}
            self._keep |= {str(e.path): str(e) for e in errors}
            self._keep_all = not is_dir or any(e.path == directory for e in errors)
            why = next((str(e) for e in errors if e.path == directory), None)
            self._keep_all_why = why or f"{directory} is not a directory"
        return {d.id: d for d in definitions}

    async def _restore(self, early: _Early) -> None:
        """Live restore: adopt what runs, bring the containers in line with the
        definitions, and take every container one sync toward its policy
        before the daemon says READY."""
        wanted = await self._load()
        await early.net_opened.wait()
        # One listing of containers and one of tasks serve the whole restore:
        # at 1000 containers each listing costs ~0.1 s to decode.
        listed: list[ContainerInfo] = []
        tasks: dict[str, ProcessState] = {}

        async def list_containers() -> None:
            await early.listed.wait()
            if early.containers is None:  # containerd was not serving yet: now it is
                early.containers = await self.client.list_containers()
            listed.extend(early.containers)
            early.containers = None

        async def list_tasks() -> None:
            assert self._sup is not None
            # The event pipeline's first reconcile listed them once its
            # subscription was live: what changed since comes as events.
            listing = self._sup.pipeline.take_first_listing()
            if listing is None:
                listing = await self.client.list_tasks()
            tasks.update((t.container_id, t) for t in listing)

        # At once: containerd asks every shim for Tasks.List (~0.2 s at 1000)
        # while the containers' records are decoded here (when the pipeline's
        # listing cannot serve).
        with anyio.fail_after(OPERATION_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(list_containers)
                tg.start_soon(list_tasks)

        existing = [c for c in listed if c.labels.get(MANAGED) == "true"]
        self._sweep_fifo_dirs(tasks.values())
        with anyio.fail_after(OPERATION_TIMEOUT * 2):
            everything = {c.id for c in listed}
            if self.net.attachments or self.net.has_leftovers():
                await self.net.sweep(everything)
            self._adopt_networks(existing)
        for info in existing:
            if info.id not in wanted and info.labels.get(SOURCE) in ("api", "apply"):
                try:
                    self.definitions[info.id] = definition_from_labels(info)
                except (SupervisorError, ValueError) as exc:
                    log.error("cannot adopt %s: %s", info.id, exc)
        self._wanted = wanted
        applied = await self._converge_definitions(sync=False, listed={c.id: c for c in existing})
        # The same listings for all first syncs: at scale, a container that
        # only needs adopting must cost no call of its own. What the converge
        # made or removed is read again (seen=None); what changed since the
        # listing shows as an event or at the next relist, and is synced then.
        changed = {*applied.created, *applied.replaced, *applied.removed}
        containers = {c.id: c for c in existing if c.id not in changed}
        todo = [
            (cid, None if (found := containers.get(cid)) is None else (found, tasks.get(cid)))
            for cid in self.definitions
        ]
        todo.reverse()

        total = len(todo)
        view = self.view
        self.as_listed.clear()

        async def worker() -> None:
            # 32 workers, not a task a container: at 1000 containers the
            # tasks' own cost was ~50 ms of the daemon's start.
            while todo:
                cid, seen = todo.pop()
                await self._sync_and_report(cid, first=True, seen=seen)
                self._start_status = f"restoring: {total - len(todo)} of {total} containers"
                # The first `ps` answers from the listings for what the sync
                # found as listed, if nothing touched it since this daemon
                # started (no event, no operation) but that sync's own lock.
                if (
                    seen is not None
                    and cid in self.as_listed
                    and view.touches(cid) == TouchingLock.TOUCHES
                ):
                    view.store(cid, view.generation(cid), *seen)

        async with anyio.create_task_group() as tg:
            for _ in range(min(FIRST_SYNCS, len(todo))):
                tg.start_soon(worker)
        self.as_listed.clear()

    async def _converge_definitions(
        self, *, sync: bool = True, listed: dict[str, ContainerInfo] | None = None
    ) -> Applied:
        """Bring the containers of the definitions directory in line with the
        files last loaded. A step that fails (containerd away, a stop that
        does not finish) keeps its container known and is retried with a
        backoff by :meth:`_retry_definitions`, never dropped."""
        result = await self._converge(
            self._wanted, "definitions", own=True, sync=sync, listed=listed
        )
        self._from_dir = set(self._wanted)
        if result.incomplete:
            self._definitions_dirty.set()
        return result

    async def _retry_definitions(self) -> None:
        delay = DEFINITIONS_RETRY_MIN
        while True:
            await self._definitions_dirty.wait()
            await anyio.sleep(delay)
            self._definitions_dirty = anyio.Event()
            try:
                result = await self._converge_definitions()
            except EXPECTED as exc:
                result = Applied(incomplete=True)
                log.debug("definitions not applied yet: %s", exc)
                self._definitions_dirty.set()
            if result.incomplete:
                delay = min(delay * 2, DEFINITIONS_RETRY_MAX)
            else:
                delay = DEFINITIONS_RETRY_MIN
                log.info("definitions applied")

    async def _converge(
        self,
        wanted: dict[str, ContainerDefinition],
        source: str,
        *,
        own: bool,
        sync: bool,
        listed: dict[str, ContainerInfo] | None = None,
    ) -> Applied:
        """Make the containers of ``source`` what ``wanted`` says. ``listed``:
        the daemon's managed containers from a listing just made."""
        result = Applied()
        existing = listed
        if existing is None:
            with anyio.fail_after(OPERATION_TIMEOUT):
                existing = {c.id: c for c in await self.client.list_containers(MANAGED_FILTER)}
        if own:
            self.problems.clear()
            for cid, info in sorted(existing.items()):
                if cid in wanted or info.labels.get(SOURCE, "definitions") != "definitions":
                    continue
                file = info.labels.get(DEFINITION_FILE, "")
                if self._keep_all or cid in self._keep or file in self._keep:
                    why = (
                        self._keep_all_why
                        if self._keep_all
                        else self._keep.get(cid) or self._keep[file]
                    )
                    log.warning("keeping %s as it is: %s", cid, why)
                    self.problems[cid] = f"left as it is: {why}"
                    self._track(cid, info)
                    continue
                self._track(cid, info)
                log.info("definition of %s removed: stopping and deleting it", cid)
                if await self._stop(cid, remove=True):
                    result.removed.append(cid)
                else:
                    result.incomplete = True
            for cid in list(self._from_dir):
                if cid not in wanted and cid not in existing:
                    self.forget(cid)
        made: list[str] = []  # new or changed, to be (re)made
        for cid, definition in sorted(wanted.items()):
            current = existing.get(cid)
            if current is not None and current.labels.get(HASH) == definition.definition_hash():
                self.definitions[cid] = definition
                continue
            made.append(cid)
        # Their networks are checked against what stays and against each other
        # before anything is stopped: a definition whose port is taken keeps its
        # old container running.
        replaced = {cid for cid in made if cid in existing}
        problems = self.net_problems({cid: wanted[cid] for cid in made}, leaving=replaced)
        for cid, problem in problems.items():
            log.error("cannot make %s (%s): %s", cid, wanted[cid].source, problem)
            result.errors.append(f"{wanted[cid].source}: {problem}")
        made = [cid for cid in made if cid not in problems]
        ready = []
        for cid in made:  # every replaced one stopped first: two may swap ports
            current = existing.get(cid)
            if current is not None:
                self._track(cid, current)
                log.info("definition of %s changed: replacing it", cid)
                if not await self._stop(cid, remove=True):
                    result.incomplete = True  # the old one stays known, and is retried
                    continue
            ready.append(cid)
        for cid in _joined_last(ready, wanted):
            definition = wanted[cid]
            created = await self._create(definition, source)
            if created is None:
                result.incomplete = True
                continue
            if not created:
                continue
            (result.replaced if cid in existing else result.created).append(cid)
            if sync:
                error = await self._sync_and_report(cid)
                if error:
                    result.errors.append(error)
        return result

    def _track(self, cid: str, info: ContainerInfo) -> None:
        """Keep a container that is being replaced or removed known (ps, rm,
        its policy) until that is done."""
        if cid not in self.definitions:
            with contextlib.suppress(SupervisorError, ValueError):
                self.definitions[cid] = definition_from_labels(info)

    async def _sync_and_report(
        self, cid: str, *, first: bool = False, seen: Seen | None = None
    ) -> str | None:
        """Sync now; a failure is logged and left to the scheduler to retry.
        Returns why the container could not be started, if it could not."""
        began = time.monotonic()
        try:
            with anyio.fail_after(OPERATION_TIMEOUT):
                at = await self.sync(cid, first=first, seen=seen)
        except EXPECTED as exc:
            if isinstance(exc, TimeoutError):
                # Rare, and it holds up what waits for it (READY waits for the
                # first syncs): always worth a line, even if the retry works.
                took = time.monotonic() - began
                log.warning("sync of %s timed out after %.1fs; retrying", cid, took)
                exc = TimeoutError(f"timed out after {took:.1f}s")
            self.scheduler.request(cid, time.time() + 0.2)  # it logs what persists
            return f"{cid}: {exc}"
        if at is not None:
            self.scheduler.request(cid, at)
        return self.start_errors.pop(cid, None)

    def _adopt_networks(self, containers: list[ContainerInfo]) -> None:
        """Make up the network record of a container whose record was lost
        (an unreadable file), from its labels."""
        for info in containers:
            network = info.labels.get(NETWORK)
            if not network or info.id in self.net.attachments:
                continue
            try:
                ports = [parse_port(p) for p in json.loads(info.labels.get(PORTS) or "[]")]
                self.net.adopt(info.id, Mode.parse(network), ports)
            except (SupervisorError, ValueError, OSError) as exc:
                log.error("cannot make up the network record of %s: %s", info.id, exc)

    async def _sweep_leases(self) -> None:
        """Leases of ours that no pull or create of this daemon holds: left by
        a killed daemon, or by one whose delete met containerd away."""
        from ..client._leases import LEASE_PREFIX, leases_in_use

        in_use = leases_in_use()
        for lease in await self.client.leases.list():
            if lease.id.startswith(LEASE_PREFIX) and lease.id not in in_use:
                with contextlib.suppress(NotFound):
                    await self.client.leases.delete(lease.id)
                log.info("removed lease %s (a pull or create that did not finish)", lease.id)

    def _sweep_soon(self) -> None:
        """Sweep what pulls and creates left (see :meth:`_sweep_images`) in a
        task of its own, once none runs: at start (after READY: the sweep's
        calls load the content, lease and snapshot services, ~0.1 s, and list
        every snapshot) and whenever containerd comes back."""
        if not self._sweeping and self._tg is not None:
            self._sweeping = True
            self._tg.start_soon(self._sweep_when_idle)

    async def _sweep_when_idle(self) -> None:
        try:
            # Only while no pull or create runs (a lease or snapshot they just
            # made is not a leftover), and without making one wait: a pull
            # may take half an hour, a `run --rootfs` must not wait for it.
            while True:
                async with self.pulls.removing_if_idle() as idle:
                    if idle:
                        with anyio.fail_after(OPERATION_TIMEOUT * 2):
                            everything = {c.id for c in await self.client.list_containers()}
                            await self._sweep_images(everything)
                        return
                await anyio.sleep(SWEEP_RETRY)
        except EXPECTED as exc:
            # containerd away is reported where it is seen; another failure is news.
            level = logging.INFO if isinstance(exc, Unavailable) else logging.WARNING
            log.log(level, "what pulls left is not swept yet (%s); next time containerd returns",
                    exc)  # fmt: skip
        finally:
            self._sweeping = False

    async def _sweep_images(self, containers: set[str]) -> None:
        """What a daemon killed in the middle of a pull or a create leaves:
        its leases (what they held goes with them, to containerd's garbage
        collection) and containers' snapshots whose container was never made."""
        client = self.client
        await self._sweep_leases()
        from ..client import SnapshotKind

        for snapshot in await client.snapshots.list():
            name = snapshot.name
            if (
                snapshot.kind is SnapshotKind.ACTIVE
                and name not in containers
                and not name.startswith(("sha256:", "extract-"))
            ):
                with contextlib.suppress(NotFound):
                    await client.snapshots.remove(name)
                    log.info("removed snapshot %s (its container was never made)", name)

    def _sweep_fifo_dirs(self, tasks: Iterable[ProcessState]) -> None:
        """FIFO directories no task uses any more (a daemon died before
        removing them) go at start; ``tasks``: every task, listed just now."""
        base = str(self.config.fifo_dir)
        used = {os.path.dirname(p) for t in tasks for p in (t.stdout, t.stderr) if p}
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            # The scandir entry's type: no stat of its own, a link is not followed.
            if entry.path not in used and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)

    async def carried(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """``await work()`` in a task of the daemon's own: it runs to its end
        even if the caller (a control call whose client went away) is cancelled."""
        assert self._tg is not None
        finished = anyio.Event()
        results: list[_T] = []
        errors: list[Exception] = []

        async def run() -> None:
            try:
                results.append(await work())
            except Exception as exc:  # the caller's to raise, not the daemon's
                errors.append(exc)
            finally:
                finished.set()

        self._tg.start_soon(run)
        await finished.wait()
        if errors:
            raise errors[0]
        return results[0]

    async def reload(self) -> Applied:
        """Apply the definitions directory: create new, replace changed, remove gone."""
        self._wanted = await self._load()
        try:
            result = await self._converge_definitions()
        except EXPECTED as exc:
            self._definitions_dirty.set()
            result = Applied(errors=[f"not applied yet ({exc}); retrying"], incomplete=True)
        result.errors[:0] = self.load_errors
        return result

    async def apply(self, directory: Path) -> Applied:
        """Create the new definitions of ``directory`` and replace the changed
        ones. Containers applied from another directory are kept like those of
        ``run``: a reload does not remove them."""
        if directory == self.config.definitions_dir:
            return await self.reload()
        wanted = await self._load(directory)
        try:
            result = await self._converge(wanted, "apply", own=False, sync=True)
        except EXPECTED as exc:
            result = Applied(errors=[str(exc)], incomplete=True)
        result.errors[:0] = self.load_errors
        return result

    # -- containers --------------------------------------------------------------

    async def _create(
        self, definition: ContainerDefinition, source: str = "definitions"
    ) -> bool | None:
        """Create a definition's container with its start pending: the first
        sync starts it (also when this daemon dies before it can). False when
        containerd refused it (reported), None when it should be tried again."""
        labels = {**self._labels(definition, source), NEXT_START: f"{time.time():.6f}"}
        try:
            async with self.pulls.using():  # no image removal meanwhile
                if definition.image and source == "definitions" and self._tg is not None:
                    # In the background: the daemon is READY, answers and
                    # stops on SIGTERM while a big image comes.
                    image = await self.pulls.ready(
                        self.client, definition.image, definition.pull, self._tg,
                        lambda: self._definitions_dirty.set(),
                    )  # fmt: skip
                    if image is None:
                        log.info("%s waits for its image %s", definition.id, definition.image)
                        return None
                else:
                    image = await self.image_for(definition)
                with anyio.fail_after(OPERATION_TIMEOUT):
                    async with self._lock(definition.id):
                        await self.make(definition, labels, image)
                        self.definitions[definition.id] = definition
        except (Unavailable, TimeoutError, AlreadyExists, RegistryError, OSError) as exc:
            log.warning("cannot create %s yet (%s); retrying", definition.id, exc)
            return None
        except SupervisorError as exc:
            log.error("cannot create %s (%s): %s", definition.id, definition.source, exc)
            self.load_errors.append(f"{definition.source}: {exc}")
            return False
        return True

    # -- the backend -------------------------------------------------------------

    async def process_event(self, container_id: str, event_type: EventType, event: Event) -> None:
        publish(self.event_listeners, (container_id, event_type, event))
        if container_id not in self.definitions:
            return
        self.view.touch(container_id)  # an exit, an OOM, a pause: `ps` reads it again
        if event_type is EventType.OOM:
            self._oom_pending[container_id] = self._oom_pending.get(container_id, 0) + 1
            self.scheduler.request(container_id)
        elif event_type is EventType.EXIT and isinstance(event, TaskExit) and event.exec_id is None:
            self.scheduler.request(container_id)
