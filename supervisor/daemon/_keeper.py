"""Each container kept toward its policy: the level-triggered sync, starts,
stops, adoption of running tasks and the pumping of their output.

:class:`Keeper` is the part of the daemon that acts on one container at a
time, under that container's lock; :class:`~._daemon.Daemon` adds the
service around it (containerd, definitions, signals, the control API).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from .._supervisor import Supervisor
from ..client import (
    Client,
    Container,
    ContainerInfo,
    FifoIO,
    FifoReader,
    NullIO,
    ProcessIO,
    ProcessState,
    Task,
    TaskStatus,
)
from ..errors import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    NotFound,
    SupervisorError,
    Unavailable,
)
from ..events import PipelineStats
from ..net import DEFAULT_NETWORK, Attachment, Mode, NetworkManager, PortMapping
from ..net._ports import port_taken
from ._config import DaemonConfig
from ._definitions import ContainerDefinition
from ._groups import ShimGroups, group_of_spec
from ._images import Pulls, lookup_user, with_image
from ._labels import (
    COMMAND,
    DEFINITION_FILE,
    EXIT_CODE,
    EXIT_PID,
    FINISHED_AT,
    HASH,
    LOG_PATH,
    MANAGED,
    MANAGED_FILTER,
    NETWORK,
    NEXT_START,
    POLICY,
    PORTS,
    REMOVE_ON_EXIT,
    ROOTFS,
    SHIM_GROUP,
    SOURCE,
    STARTED_AT,
    STARTED_PID,
    STOP_SIGNAL,
    STOP_TIMEOUT,
    TERMINAL,
)
from ._logs import RotatingJsonLog
from ._output import Listener, copy_logs
from ._plan import (
    START_FAILED_EXIT,
    UNKNOWN_EXIT,
    Act,
    TaskView,
    lenient_state,
    plan,
    record_exit,
    restart_after_shutdown,
)
from ._policy import RestartState, manual_start, manual_stop, record_oom
from ._scheduler import SyncScheduler
from ._view import Entry, TouchingLock, View

if TYPE_CHECKING:
    from ..client import RootfsMount, Stores
    from ..images import Image

log = logging.getLogger("supervisor.daemon")

#: A container and its task (None: no task) as a listing found them.
Seen = tuple[ContainerInfo, "ProcessState | None"]


#: Bound on each container operation the daemon makes on its own.
OPERATION_TIMEOUT = 30.0
#: How long an exit waits for the rest of the process's output to be logged.
LOG_DRAIN_TIMEOUT = 2.0
#: How often every task is listed, to turn missed events into syncs (kubelet's PLEG).
RELIST_INTERVAL = 1.0
#: When a sync finds its container busy with an operation, it comes back after this.
BUSY_RETRY = 0.5
#: Steps one sync may take before it yields (a restart is at most five).
MAX_STEPS = 10
#: Starts that fail in the shim's start (a bundle a killed containerd left)
#: are retried this many times before they count as an exit 128.
SHIM_START_RETRIES = 3
#: How containerd says its shim could not be started for a task.
SHIM_START_ERROR = "failed to start shim: "
#: Held copies of output started between two looks at the event loop.
PUMPS_AT_ONCE = 64
#: A container's output to copy: its id, its FIFOs' read ends by stream, and
#: the event set once they hit EOF.
_Pump = tuple[str, list[tuple[str, "FifoReader"]], anyio.Event]
#: Errors that leave a start to be retried as it is (no exit recorded).
_TRANSIENT = (Unavailable, TimeoutError, OSError, AlreadyExists, NotFound)
_LIVE = (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.PAUSING)


#: Up to this many stale containers, the view reads each (two calls); beyond,
#: it lists them all (two calls in all, but a decode of every container).
READ_ONE_BY_ONE = 16


class Keeper:
    """Per-container state and steps; see the module docstring."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.definitions: dict[str, ContainerDefinition] = {}
        self._tasks: dict[str, Task] = {}
        self._logs: dict[str, RotatingJsonLog] = {}
        self._drained: dict[str, anyio.Event] = {}  # set when a task's output hit EOF
        self._from_dir: set[str] = set()  # ids the definitions directory owns
        self.output_listeners: dict[str, set[Listener]] = {}
        self._exits: dict[str, list[anyio.Event]] = {}
        self.last_exit: dict[str, int] = {}
        self._locks: dict[str, TouchingLock] = {}  # one container's changes, one at a time
        #: The last read of each container, for `ps` (see _view).
        self.view = View()
        self._seen: dict[str, tuple[str, int] | None] = {}  # task as the last sync saw it
        self._oom_pending: dict[str, int] = {}
        self.start_errors: dict[str, str] = {}
        self._doomed: set[str] = set()  # a failed `run` whose removal is still due
        self.scheduler = SyncScheduler(self.sync)
        self.net = NetworkManager(
            config.state_dir / "net",
            default_subnet=config.network_subnet,
            pool=config.network_pool,
            plugin_dirs=config.cni_path,
        )
        self.pulls = Pulls(config.insecure_registries)
        self.groups = ShimGroups(config.namespace, config.max_shim_group)
        #: Held while networks are made or removed (not while containers join them).
        self.network_lock = anyio.Lock()
        self._stopping = False
        self._sup: Supervisor | None = None
        self._tg: TaskGroup | None = None
        # While not None, pumps of adopted output wait here to be started (after
        # READY: at 1000 containers their tasks cost ~0.2 s of the restore).
        self._pumps_later: dict[str, _Pump] | None = None
        self._shim_retries: dict[str, int] = {}
        # Containers whose sync found them as a listing showed them (nothing done).
        self.as_listed: set[str] = set()
        self._fifo_dir = str(config.fifo_dir)

    @property
    def client(self) -> Client:
        assert self._sup is not None
        return self._sup.client

    def _labels(
        self, definition: ContainerDefinition, source: str = "definitions"
    ) -> dict[str, str]:
        return {
            **definition.labels,
            MANAGED: "true",
            SOURCE: source,
            DEFINITION_FILE: str(definition.source),
            COMMAND: json.dumps(list(definition.command)),
            ROOTFS: str(definition.rootfs or ""),
            HASH: definition.definition_hash(),
            POLICY: str(definition.restart),
            STOP_SIGNAL: str(int(definition.stop_signal)),
            STOP_TIMEOUT: str(definition.stop_timeout),
            LOG_PATH: str(self.config.log_dir / f"{definition.id}.log"),
            NETWORK: str(self.network_mode(definition)),
            PORTS: json.dumps([str(p) for p in definition.ports]),
            TERMINAL: "true" if definition.terminal else "false",
            **({SHIM_GROUP: definition.shim_group} if definition.shim_group else {}),
            **RestartState().to_labels(),
        }

    def network_mode(self, definition: ContainerDefinition) -> Mode:
        return Mode.parse(definition.network or self.config.default_network)

    def net_problems(
        self, batch: Mapping[str, ContainerDefinition], *, leaving: set[str]
    ) -> dict[str, str]:
        """Why some of ``batch`` (to be made) could not get their network, as
        things will be once ``leaving`` are gone and the batch is made: an
        unknown network, a container to join that will not be there, a port
        published by another."""
        problems: dict[str, str] = {}
        staying = {cid: a for cid, a in self.net.attachments.items()
                   if cid not in leaving and cid not in batch}  # fmt: skip
        claimed: dict[str, list[PortMapping]] = {}
        for cid, definition in sorted(batch.items()):
            try:
                mode = self.network_mode(definition)
            except SupervisorError as exc:
                problems[cid] = str(exc)
                continue
            known = mode.name in self.net.networks or mode.name == DEFAULT_NETWORK
            if mode.kind == "network" and not known:
                problems[cid] = f"no such network: {mode.name}"
            joinable = mode.name in staying or mode.name in batch
            if mode.kind == "container" and not joinable:
                problems[cid] = f"container {mode.name} has no network of ours to join"
            published = {**{other: a.ports for other, a in staying.items()}, **claimed}
            for port in definition.ports:
                problem = port_taken(port, published)
                if problem:
                    problems[cid] = problem
                    break
            if cid not in problems:
                claimed[cid] = list(definition.ports)
        return problems

    async def image_for(self, definition: ContainerDefinition) -> Image | None:
        """The image a new container needs, pulled as its policy says (this
        may take long: outside any container's lock)."""
        if not definition.image:
            return None
        return await self.pulls.ensure(self.client, definition.image, definition.pull)

    def group_members(self, name: str) -> set[str]:
        """The containers of shim group ``name`` the daemon knows."""
        return {cid for cid, d in self.definitions.items() if d.shim_group == name}

    def _turn(self, container: Container) -> AbstractAsyncContextManager[None]:
        """Held around a task's create or delete: those of one shim group take turns."""
        return self.groups.turn(group_of_spec(container.info.spec))

    async def make(
        self, definition: ContainerDefinition, labels: dict[str, str], image: Image | None
    ) -> Container:
        """Make a new container: a place in its shim group (FailedPrecondition
        when that is full), its network checked and recorded (its ports
        taken), its own snapshot on the image, its spec, its record. Nothing
        is left when it fails. The caller adds it to ``definitions`` at once."""
        group = definition.shim_group
        with self.groups.joining(group, definition.id, self.group_members(group)):
            return await self._make(definition, labels, image)

    async def _make(
        self, definition: ContainerDefinition, labels: dict[str, str], image: Image | None
    ) -> Container:
        cid = definition.id
        if cid in self.net.attachments:
            # Left by a create that did not finish (callers make only what
            # does not exist: make sure).
            with contextlib.suppress(NotFound):
                await self.client.load_container(cid)
                raise AlreadyExists(f"container {cid} already exists")
            await self.net.release(cid)
        effective = definition if image is None else with_image(definition, image.config)
        attachment = self.net.reserve(cid, self.network_mode(definition), definition.ports)
        try:
            if image is None:
                spec = await anyio.to_thread.run_sync(effective.spec)  # reads the rootfs
                self.net.configure_spec(spec, attachment)
                self.groups.annotate(spec, definition.shim_group)
                return await self.client.create_container(cid, spec, labels=labels)
            from ..images import remove_rootfs  # (images load on first use)

            labels = {**labels, COMMAND: json.dumps(list(effective.command)), ROOTFS: ""}
            # Under one lease: the snapshot is kept from garbage collection
            # until the record that holds it exists.
            async with self.client.lease() as leased:
                mounts = await self._prepare_rootfs(leased, cid, image)
                try:
                    user = await anyio.to_thread.run_sync(lookup_user, mounts, effective.user)
                    spec = replace(effective, user=user).spec()
                    self.net.configure_spec(spec, attachment)
                    self.groups.annotate(spec, definition.shim_group)
                    return await self.client.create_container(
                        cid, spec, labels=labels, snapshot_key=cid, image=image.name
                    )
                except BaseException:
                    with anyio.CancelScope(shield=True), contextlib.suppress(SupervisorError):
                        await remove_rootfs(leased, cid)
                    raise
        except BaseException:
            await self.release(cid)
            raise

    async def _prepare_rootfs(self, leased: Stores, cid: str, image: Image) -> list[RootfsMount]:
        from ..images import prepare_rootfs, remove_rootfs

        try:
            return await prepare_rootfs(leased, cid, image)
        except AlreadyExists:
            # A snapshot left by a create that did not finish, if no container holds it.
            with contextlib.suppress(NotFound):
                await self.client.load_container(cid)
                raise
            await remove_rootfs(leased, cid)
            return await prepare_rootfs(leased, cid, image)

    async def release(self, cid: str) -> None:
        """Release a container's network once the container is gone (its
        snapshot went with its record: Container.delete). A failure is logged
        (the sweep at the next start tries again)."""
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(OPERATION_TIMEOUT):
                await self.net.release(cid)
        except (SupervisorError, OSError, TimeoutError) as exc:
            log.error("cannot release the network of %s: %s", cid, exc)

    async def read_view(
        self, ids: Sequence[str]
    ) -> dict[str, tuple[ContainerInfo | None, ProcessState | None]]:
        """Read these containers (and their tasks) from containerd again, and
        keep in the view what nothing touched meanwhile. A few are read one
        by one; beyond ``READ_ONE_BY_ONE``, one listing of each serves all."""
        client, view = self.client, self.view
        generations = {cid: view.generation(cid) for cid in ids}
        read: dict[str, tuple[ContainerInfo | None, ProcessState | None]] = {}
        if len(ids) > READ_ONE_BY_ONE:
            containers = {c.id: c for c in await client.list_containers(MANAGED_FILTER)}
            tasks = {t.container_id: t for t in await client.list_tasks()}
            for cid in ids:
                read[cid] = (containers.get(cid), tasks.get(cid))
        else:

            async def one(cid: str) -> None:
                try:
                    info = (await client.load_container(cid)).info
                except NotFound:
                    read[cid] = (None, None)
                    return
                if info.labels.get(MANAGED) != "true":
                    read[cid] = (None, None)  # as the listing's filter would
                    return
                try:
                    task: ProcessState | None = await client.process_state(cid)
                except NotFound:
                    task = None
                read[cid] = (info, task)

            async with anyio.create_task_group() as tg:
                for cid in ids:
                    tg.start_soon(one, cid)
        for cid, (info, task) in read.items():
            if cid in self.definitions:
                view.store(cid, generations[cid], info, task)
        return read

    async def current(self) -> dict[str, tuple[ContainerInfo, ProcessState | None, Entry | None]]:
        """Every container the daemon keeps (in id order), its task as
        containerd says now, and the view's entry it came from (None: read
        just now). From the view; what is stale read again."""
        ids = sorted(self.definitions)
        before = {cid: self.view.fresh(cid) for cid in ids}
        stale = [cid for cid, entry in before.items() if entry is None]
        read = await self.read_view(stale) if stale else {}
        out: dict[str, tuple[ContainerInfo, ProcessState | None, Entry | None]] = {}
        for cid in ids:
            # Fresh when this began and touched since: as it was then (it is
            # not in ``read``), not left out.
            entry = self.view.fresh(cid) or before[cid]
            if entry is not None:
                info, task = entry.info, entry.task
            else:
                info, task = read.get(cid, (None, None))
            if info is not None:
                out[cid] = (info, task, entry)
        return out

    def attachment(self, cid: str) -> Attachment | None:
        return self.net.attachments.get(cid)

    def _lock(self, cid: str) -> TouchingLock:
        lock = self._locks.get(cid)
        if lock is None:
            lock = self._locks[cid] = TouchingLock(self.view, cid)
        return lock

    # -- sync: the level-triggered core -------------------------------------------

    async def sync(
        self, cid: str, *, first: bool = False, seen: Seen | None = None
    ) -> float | None:
        """Take container ``cid`` toward its policy, from what containerd says
        now. Returns the epoch time it wants to run again, or None. ``first``:
        the daemon's first look at it after its own start. ``seen``: the
        container and its task from a listing just made, so that a container
        with nothing to do costs no call (any step is taken on a fresh read)."""
        if self._stopping or cid not in self.definitions:
            return None
        lock = self._lock(cid)
        if lock.locked() and not first:
            # An operation holds it (a stop's grace period): come back rather
            # than hold one of the scheduler's slots meanwhile.
            return time.time() + BUSY_RETRY
        async with lock:
            if self._stopping or cid not in self.definitions:
                return None
            if cid in self._doomed:
                await self._stop_locked(cid, remove=True, grace=0.0, manual=True)
                return None
            if seen is not None and not self._oom_pending.get(cid):
                info, state = seen
                step = plan(_view(state), info.labels, time.time(), first=first)
                if step.act in (Act.NOTHING, Act.ADOPT, Act.WAIT):
                    self._seen[cid] = fingerprint(state)
                    if step.act is Act.ADOPT and state is not None:
                        await self._ensure_pumped(Container(self.client, info), state)
                    self.as_listed.add(cid)
                    return step.at if step.act is Act.WAIT else None
            return await self._sync_locked(cid, first=first)

    async def _sync_locked(
        self, cid: str, *, allow_start: bool = True, first: bool = False
    ) -> float | None:
        for _ in range(MAX_STEPS):
            try:
                container = await self.client.load_container(cid)
            except NotFound:
                await self.release(cid)
                self.forget(cid)
                return None
            await self._record_ooms(container)
            try:
                state: ProcessState | None = await self.client.process_state(cid)
            except NotFound:
                state = None
            step = plan(_view(state), container.info.labels, time.time(), first=first)
            self._seen[cid] = fingerprint(state)
            act = step.act
            if act is Act.NOTHING or act is Act.ADOPT:
                if state is not None and act is Act.ADOPT:
                    await self._ensure_pumped(container, state)
                return None
            if act is Act.WAIT:
                return step.at
            if act is Act.RECORD_EXIT:
                await container.update_labels(step.labels, remove=step.remove)
                log.info("container %s %s", cid, step.reason)
                self._exited(cid, step.exit_code)
            elif act is Act.DELETE_TASK or act is Act.DISCARD_CREATED:
                assert state is not None
                await self._delete_task(container, state, drain=act is Act.DELETE_TASK)
            elif act is Act.START:
                if not allow_start:
                    return None
                await self._start_step(container)
            elif act is Act.REMOVE:
                await container.delete()
                _remove_empty_cgroups(container.info.spec)
                await self.release(cid)
                self.forget(cid)
                return None
            else:  # MARK_STARTED, CLEAR_PENDING, SCHEDULE_START: labels only
                await container.update_labels(step.labels, remove=step.remove)
                if act is Act.SCHEDULE_START:
                    log.info("container %s: %s", cid, step.reason)
                elif act is Act.MARK_STARTED and state is not None:
                    await self._ensure_pumped(container, state)
        log.warning("container %s did not settle in %d steps; syncing again", cid, MAX_STEPS)
        return time.time() + 1.0

    async def _record_ooms(self, container: Container) -> None:
        count = self._oom_pending.pop(container.id, 0)
        if not count:
            return
        state = lenient_state(container.info.labels)
        for _ in range(count):
            state = record_oom(state)
        try:
            await container.update_labels(state.to_labels())
        except BaseException:
            self._oom_pending[container.id] = self._oom_pending.get(container.id, 0) + count
            raise
        log.warning("container %s: out of memory (kill %d)", container.id, state.oom_kills)

    def _exited(self, cid: str, code: int | None) -> None:
        if code is not None:
            self.last_exit[cid] = code
        for waiter in self._exits.pop(cid, []):
            waiter.set()

    async def _delete_task(self, container: Container, state: ProcessState, *, drain: bool) -> None:
        cid = container.id
        task = self._tasks.get(cid)
        if task is not None and task.pid == state.pid:
            drained = self._drained.get(cid)
            self._release_pump(cid)
            if drain and drained is not None:
                with anyio.move_on_after(LOG_DRAIN_TIMEOUT):
                    await drained.wait()  # the tail of its output, before the FIFOs go
        else:
            task = await container.task()
        try:
            async with self._turn(container):
                if drain:
                    await task.delete()
                else:
                    await task.force_delete()
        except NotFound:
            pass
        if self._tasks.get(cid) is task:
            del self._tasks[cid]
        self._remove_fifo_dir(state)

    def _remove_fifo_dir(self, state: ProcessState) -> None:
        """A task deleted through a handle that did not make its FIFOs (one from
        before a restart of the daemon) leaves their directory: remove it."""
        for path in (state.stdout, state.stderr):
            if not path:
                continue
            directory = Path(path).parent
            if directory.parent == self.config.fifo_dir and not directory.is_symlink():
                shutil.rmtree(directory, ignore_errors=True)

    async def _ensure_pumped(self, container: Container, state: ProcessState) -> None:
        """A running task's output is logged: reattach to its FIFOs when this
        daemon did not start it."""
        cid = container.id
        current = self._tasks.get(cid)
        if current is not None and current.pid == state.pid:
            return
        io: ProcessIO = NullIO()
        if state.stdout and os.path.dirname(os.path.dirname(state.stdout)) == self._fifo_dir:
            try:
                io = FifoIO.attach(state.stdout, state.stderr, terminal=state.terminal)
            except OSError as exc:
                log.warning("container %s: cannot reattach its output (%s)", cid, exc)
        if current is not None:
            self._closing_io(current.io)  # a task that is gone
        self._tasks[cid] = Task(container, state.pid, io)
        if isinstance(io, FifoIO):
            self._pump(cid, io, hold=True)
        log.debug("adopted %s (pid %d, %s)", cid, state.pid, state.status.value)

    async def _start_step(self, container: Container) -> None:
        """A due start. A failure containerd will not get over by itself (a
        missing binary, a bad rootfs) counts as an exit with code 128 for the
        policy, as Docker counts it; any other is retried as it is."""
        cid = container.id
        try:
            await self._start_task(container)
        except _TRANSIENT:
            raise
        except SupervisorError as exc:
            if self._shim_failed(cid, exc):
                raise  # what a killed containerd left, not the container's fault: retried
            labels = (await container.refresh()).labels
            step = record_exit(
                labels, START_FAILED_EXIT, time.time(), labels.get(STARTED_PID, "0"),
                "could not start; ", ran_for=0.0,
            )  # fmt: skip
            await container.update_labels(step.labels, remove=step.remove)
            log.error("cannot start %s: %s; %s", cid, exc, step.reason)
            self.start_errors[cid] = f"{cid}: {exc}"
            self._exited(cid, step.exit_code)

    def _shim_failed(self, cid: str, exc: SupervisorError) -> bool:
        """Whether a failed start is one of the shim's, not the container's:
        a bundle a killed containerd left (which the client clears when it
        knows containerd's state dir), a bundle removed under a starting shim
        ("getwd: no such file or directory") or under runc (its log.json gone,
        by containerd's clean-up after an earlier shim). Retried a few times, then
        recorded as the container's exit (128) like any failed start."""
        text = str(exc)
        # runc's own log in the bundle gone: the bundle was removed under it.
        removed = "unable to retrieve OCI runtime error" in text and "log.json: no such" in text
        if SHIM_START_ERROR not in text and not removed:
            return False
        tries = self._shim_retries[cid] = self._shim_retries.get(cid, 0) + 1
        if tries > SHIM_START_RETRIES:
            del self._shim_retries[cid]
            return False
        return True

    async def _start_task(self, container: Container, *, stdin: bool = False) -> Task:
        """Create and start a task whose output is logged, and record the start.
        A task that was created but could not start is discarded."""
        cid = container.id
        definition = self.definitions.get(cid)
        terminal = definition.terminal if definition else False
        with anyio.fail_after(OPERATION_TIMEOUT):
            await self.net.ensure(cid)
            mounts = []
            if container.info.image:
                from ..images import rootfs_mounts

                mounts = await rootfs_mounts(self.client, cid)
        async with self._turn(container):
            io = FifoIO.create(self.config.fifo_dir, cid, terminal=terminal, stdin=stdin)
            task = await container.new_task(io, rootfs=mounts)
        old = self._tasks.get(cid)
        if old is not None:
            self._closing_io(old.io)  # a task that went while nobody watched
        self._tasks[cid] = task
        self._pump(cid, io)
        self._shim_retries.pop(cid, None)
        try:
            pid = await task.start()
        except _TRANSIENT:
            raise  # the next sync discards the created task
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(SupervisorError, TimeoutError):
                async with self._turn(container):
                    await task.force_delete()
            if self._tasks.get(cid) is task:
                del self._tasks[cid]
            raise
        try:
            await container.update_labels(
                {STARTED_AT: f"{time.time():.6f}", STARTED_PID: str(pid)},
                remove=(NEXT_START, EXIT_PID),
            )
        except SupervisorError as exc:
            # It runs: the next sync records the start (MARK_STARTED).
            log.debug("container %s: start not recorded yet (%s)", cid, exc)
            self.scheduler.request(cid)
        return task

    def _pump(self, cid: str, io: FifoIO, *, hold: bool = False) -> None:
        """Copy the task's output into its JSON log until EOF (the process's end).
        ``hold``: an adopted task's, which may wait for :meth:`start_pumps`."""
        assert self._tg is not None
        drained = self._drained[cid] = anyio.Event()
        streams = (("stdout", io.stdout_reader), ("stderr", io.stderr_reader))
        pump: _Pump = (cid, [(s, r) for s, r in streams if r is not None], drained)
        self.output_listeners.setdefault(cid, set())
        if hold and self._pumps_later is not None:
            self._pumps_later[cid] = pump
        else:
            self._start_pump(*pump)

    def _start_pump(
        self, cid: str, readers: list[tuple[str, FifoReader]], drained: anyio.Event
    ) -> None:
        assert self._tg is not None
        journal = self._logs.get(cid)
        if journal is None:
            path = self.config.log_dir / f"{cid}.log"
            try:
                journal = self._logs[cid] = RotatingJsonLog(
                    path, self.config.log_max_bytes, self.config.log_max_files
                )
            except OSError as exc:
                # A full or read-only log disk: the output is read and dropped
                # (so the container never blocks); the next run tries again.
                log.error("cannot write %s: %s", path, exc)
        listeners = self.output_listeners.setdefault(cid, set())
        self._tg.start_soon(copy_logs, readers, journal, listeners, drained)

    def defer_pumps(self) -> None:
        """Hold the copying of adopted tasks' output from here until
        :meth:`start_pumps` (a FIFO keeps 64 KiB meanwhile). Tasks this daemon
        starts are copied at once, and a held copy starts before its task is
        deleted."""
        if self._pumps_later is None:
            self._pumps_later = {}

    def start_pumps(self) -> None:
        """Start the copying held since :meth:`defer_pumps`, in a task that lets
        other work (a `ps`, an event) in between every few (1000 take ~0.2 s)."""
        assert self._tg is not None
        self._tg.start_soon(self._start_held_pumps)

    async def _start_held_pumps(self) -> None:
        started = 0
        while self._pumps_later:
            self._release_pump(next(iter(self._pumps_later)))
            started += 1
            if started % PUMPS_AT_ONCE == 0:
                await anyio.lowlevel.checkpoint()
        self._pumps_later = None

    def _release_pump(self, cid: str) -> None:
        """Start the held copying of ``cid``'s output, if any. A container
        forgotten meanwhile (its FIFOs closed) has nothing left to copy."""
        pump = self._pumps_later.pop(cid, None) if self._pumps_later else None
        if pump is None:
            return
        if self._drained.get(cid) is pump[2]:
            self._start_pump(*pump)
        else:
            pump[2].set()

    def forget(self, cid: str) -> None:
        """Drop what the daemon holds for a container that is gone."""
        self.definitions.pop(cid, None)
        self.view.forget(cid)
        self._from_dir.discard(cid)
        self._seen.pop(cid, None)
        self._oom_pending.pop(cid, None)
        self._drained.pop(cid, None)
        if self._pumps_later is not None:
            self._pumps_later.pop(cid, None)  # its FIFOs are closed below
        self._shim_retries.pop(cid, None)
        self.start_errors.pop(cid, None)
        self._doomed.discard(cid)
        self.scheduler.forget(cid)
        task = self._tasks.pop(cid, None)
        if task is not None:
            self._closing_io(task.io)  # the task is gone: release the read ends
        journal = self._logs.pop(cid, None)
        if journal is not None:
            journal.close()
        for listener in self.output_listeners.pop(cid, set()):
            listener.close()
        self._exited(cid, None)

    def _closing_io(self, io: ProcessIO) -> None:
        assert self._tg is not None
        self._tg.start_soon(io.aclose)

    # -- operations for the control API --------------------------------------------

    def pipeline_stats(self) -> PipelineStats:
        """The event pipeline's counters (zeros before it runs)."""
        return self._sup.pipeline.stats if self._sup is not None else PipelineStats()

    def is_running(self, cid: str) -> bool:
        """Whether the daemon pumps a live task's output for this container."""
        drained = self._drained.get(cid)
        return cid in self._tasks and drained is not None and not drained.is_set()

    def exit_waiter(self, cid: str) -> anyio.Event:
        """An event set at the container's next exit (once recorded), or when it goes."""
        waiter = anyio.Event()
        self._exits.setdefault(cid, []).append(waiter)
        return waiter

    def drop_exit_waiter(self, cid: str, waiter: anyio.Event) -> None:
        """Forget a waiter nobody will wait on (a run that failed)."""
        waiters = self._exits.get(cid, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._exits.pop(cid, None)

    async def run_container(
        self, definition: ContainerDefinition, *, remove: bool, stdin: bool
    ) -> FifoIO:
        """Create and start a container for the control API; returns its IO."""
        cid = definition.id
        labels = self._labels(definition, source="api")
        if remove:
            labels[REMOVE_ON_EXIT] = "true"
        async with self.pulls.using():  # no image removal meanwhile
            image = await self.image_for(definition)
            with anyio.fail_after(OPERATION_TIMEOUT):
                async with self._lock(cid):
                    container = await self.make(definition, labels, image)
                    self.definitions[cid] = definition
                    try:
                        task = await self._start_task(container, stdin=stdin)
                    except BaseException:
                        if not await self._undo_run(container):
                            # containerd went away: the removal is retried by sync,
                            # the container stays known until it is gone.
                            self._doomed.add(cid)
                            self.scheduler.request(cid)
                        raise
        self.scheduler.request(cid)
        assert isinstance(task.io, FifoIO)
        return task.io

    async def _undo_run(self, container: Container) -> bool:
        """Remove what a failed `run` made; whether that worked."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(OPERATION_TIMEOUT):
            try:
                with contextlib.suppress(NotFound):
                    task = await container.task()
                    async with self._turn(container):
                        await task.force_delete()
                with contextlib.suppress(NotFound):
                    await container.delete()
            except (SupervisorError, TimeoutError):
                return False
            await self.release(container.id)
            self.forget(container.id)
            return True
        return False

    async def start_container(self, cid: str) -> None:
        """An operator's start: clears a manual stop and the restart history."""
        try:
            await self._start_container(cid)
        finally:
            self.scheduler.request(cid)  # whatever failed here is retried there
        error = self.start_errors.pop(cid, None)
        if error:
            raise FailedPrecondition(f"cannot start {error}")

    async def _start_container(self, cid: str) -> None:
        with anyio.fail_after(OPERATION_TIMEOUT * 2):
            async with self._lock(cid):
                await self._sync_locked(cid, allow_start=False)  # settle an ended task
                with contextlib.suppress(NotFound):
                    state = await self.client.process_state(cid)
                    if state.status in _LIVE or state.status is TaskStatus.CREATED:
                        raise FailedPrecondition(f"container {cid} is already {state.status.value}")
                container = await self.client.load_container(cid)
                started = manual_start(lenient_state(container.info.labels)).to_labels()
                await container.update_labels({**started, NEXT_START: f"{time.time():.6f}"})
                self.start_errors.pop(cid, None)
                await self._sync_locked(cid)

    async def kill_container(self, cid: str, signum: int, *, manual: bool) -> None:
        """Send ``signum`` to every process of the container; ``manual`` marks
        it a stop the policy will not undo."""
        with anyio.fail_after(OPERATION_TIMEOUT):
            async with self._lock(cid):
                container = await self.client.load_container(cid)
                if manual:
                    await container.update_labels(
                        manual_stop(lenient_state(container.info.labels)).to_labels()
                    )
                task = await container.task()
                await task.kill(signum, all=True)
                if signum == signal.SIGKILL:  # frozen, it could not die: thaw it (moby does)
                    state = await self.client.process_state(cid)
                    if state.status in (TaskStatus.PAUSED, TaskStatus.PAUSING):
                        with contextlib.suppress(SupervisorError):  # it may be gone already
                            await task.resume()

    async def stop_container(self, cid: str, *, grace: float | None = None) -> None:
        """A manual stop: signal, ``grace`` seconds (default: the container's
        stop timeout), SIGKILL. The restart policy will not undo it."""
        await self._stop(cid, remove=False, grace=grace, quiet=False)

    async def remove_container(self, cid: str, *, kill: bool = False) -> None:
        """Stop (if running) and delete a container, and forget it. ``kill``:
        SIGKILL at once instead of the stop signal and its grace (``rm -f``)."""
        await self._stop(cid, remove=True, quiet=False, kill=kill)

    async def _shutdown_stop(self, cid: str) -> None:
        await self._stop(cid, remove=False, manual=False)

    async def _stop(
        self,
        cid: str,
        *,
        remove: bool,
        grace: float | None = None,
        manual: bool = True,
        quiet: bool = True,
        kill: bool = False,
    ) -> bool:
        """Stop a container on our own account (signal, timeout, SIGKILL);
        with ``remove``, delete it too. ``manual``: the policy must not undo it.
        Errors are logged (and False returned), or with ``quiet=False`` raised."""
        definition = self.definitions.get(cid)
        wait = grace if grace is not None else definition.stop_timeout if definition else 0.0
        try:
            with anyio.fail_after(OPERATION_TIMEOUT * 2 + wait):
                async with self._lock(cid):
                    await self._stop_locked(
                        cid, remove=remove, grace=grace, manual=manual, kill=kill
                    )
        except (SupervisorError, TimeoutError) as exc:
            if not quiet:
                raise
            log.error("cannot stop %s: %s", cid, exc)
            return False
        finally:
            if cid in self.definitions:
                self.scheduler.request(cid)  # a step left undone is retried
        return True

    async def _stop_locked(
        self, cid: str, *, remove: bool, grace: float | None, manual: bool, kill: bool = False
    ) -> None:
        try:
            container = await self.client.load_container(cid)
        except NotFound:
            await self.release(cid)  # before waiters hear of it: ports are free then
            self.forget(cid)
            return
        labels = container.info.labels
        if manual:
            # The intent first: whatever happens next, no policy restarts it,
            # and a removal a killed daemon left half done is finished by the
            # next one (as `run --rm`), not undone by `always` at its start.
            intent = manual_stop(lenient_state(labels)).to_labels()
            if remove:
                intent[REMOVE_ON_EXIT] = "true"
            await container.update_labels(intent)
        try:
            state: ProcessState | None = await self.client.process_state(cid)
        except NotFound:
            state = None
        code: int | None = None
        if state is not None and state.status is not TaskStatus.STOPPED:
            task = await container.task()
            paused = state.status in (TaskStatus.PAUSED, TaskStatus.PAUSING)
            code = await _stop_task(task, labels, grace, kill=kill, paused=paused)
            if not manual and not remove:
                # A stop by the daemon's shutdown: recorded, not counted as a
                # restart; the next daemon starts it again if its policy would
                # restart it after a failure (as Docker does).
                again = restart_after_shutdown(labels)
                await container.update_labels(
                    {
                        EXIT_CODE: str(code),
                        EXIT_PID: str(state.pid),
                        FINISHED_AT: datetime.now(UTC).isoformat(),
                        **({NEXT_START: f"{time.time():.6f}"} if again else {}),
                    },
                    remove=() if again else (NEXT_START,),
                )
        if remove:
            await self._remove_locked(container, state, code)
        else:
            await self._sync_locked(cid, allow_start=False)  # record the exit, delete the task

    async def _remove_locked(
        self, container: Container, state: ProcessState | None, code: int | None
    ) -> None:
        """The rest of a removal, the task ended: what a sync would record of
        the exit would go with the record, so the task and the record are
        deleted at once. A daemon killed meanwhile finds the container
        stopped by hand and marked to go on exit, and removes it."""
        cid = container.id
        if state is not None:
            if code is None and state.exit_status is not None:
                code = state.exit_status.code
            await self._delete_task(container, state, drain=True)
            log.info("container %s exited with %s; removing it", cid, code)
        try:
            await container.delete()
        except FailedPrecondition:
            # A task made meanwhile (not by us: we hold its lock).
            with contextlib.suppress(NotFound):
                async with self._turn(container):
                    await (await container.task()).force_delete()
            await container.delete()
        _remove_empty_cgroups(container.info.spec)
        await self.release(cid)  # before waiters hear of it: ports are free then
        self._exited(cid, code)
        self.forget(cid)


def fingerprint(state: ProcessState | None) -> tuple[str, int] | None:
    return None if state is None else (state.status.value, state.pid)


def _view(state: ProcessState | None) -> TaskView | None:
    if state is None:
        return None
    exit_status = state.exit_status
    status = state.status
    if status is TaskStatus.CREATED and _runs_user_process(state.pid):
        # containerd died during Start after runc had started the process: the
        # shim still says CREATED, but the command runs. It is a start (its
        # exit will come as any other), not a leftover to discard.
        status = TaskStatus.RUNNING
    return TaskView(
        status,
        state.pid,
        exit_status.code if exit_status else 0,
        exit_status.exited_at.timestamp() if exit_status and exit_status.exited_at else None,
    )


def _runs_user_process(pid: int) -> bool:
    """Whether ``pid`` (a created task's init) has left ``runc init`` for the
    container's own command. /proc/PID/cmdline is the kernel's, not a file of
    the container's."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read(4096).split(b"\0")
    except OSError:
        return False
    return bool(args[0]) and not (args[0].endswith(b"runc") and b"init" in args[1:2])


def _remove_empty_cgroups(spec: Mapping[str, Any]) -> None:
    """rmdir the container's cgroups where runc left them empty (a task lost
    by a killed containerd and deleted later leaves them); never recursive."""
    path = str((spec.get("linux") or {}).get("cgroupsPath") or "")
    if not path.startswith("/") or ".." in path.split("/"):
        return
    root = Path("/sys/fs/cgroup")
    with contextlib.suppress(OSError):
        for base in [root, *root.iterdir()]:
            with contextlib.suppress(OSError):
                (base / path.lstrip("/")).rmdir()


async def _stop_task(
    task: Task, labels: Any, grace: float | None, *, kill: bool = False, paused: bool = False
) -> int:
    """The stop signal, ``grace`` seconds, then SIGKILL to all (at once with
    ``kill``); the exit code. A paused task is resumed once signalled, as moby
    does: frozen, it could act on neither signal."""
    if kill:
        await _signal(task, signal.SIGKILL, paused)
        with anyio.fail_after(10):
            return await _exit_code(task)
    try:
        signum = int(labels.get(STOP_SIGNAL, signal.SIGTERM))
        timeout = float(labels.get(STOP_TIMEOUT, 10.0)) if grace is None else grace
    except ValueError:
        signum, timeout = int(signal.SIGTERM), 10.0
    await _signal(task, signum, paused, all=False)
    with anyio.move_on_after(timeout) as waited:
        return await _exit_code(task)
    if waited.cancelled_caught:
        log.warning("container %s ignored signal %d for %gs; SIGKILL",
                    task.container_id, signum, timeout)  # fmt: skip
    with contextlib.suppress(NotFound, FailedPrecondition):
        await task.kill(signal.SIGKILL, all=True)
    with anyio.fail_after(10):
        return await _exit_code(task)


async def _signal(task: Task, signum: int, paused: bool, *, all: bool = True) -> None:
    with contextlib.suppress(NotFound, FailedPrecondition):
        await task.kill(signum, all=all)
    if paused:
        with contextlib.suppress(SupervisorError):  # "cannot resume a stopped container"
            await task.resume()


async def _exit_code(task: Task) -> int:
    try:
        return (await task.wait()).code
    except (NotFound, ContainerdError):
        # Its shim died meanwhile ("ttrpc: closed"): the task is over, with a
        # status nobody knows; the sync records what containerd says next.
        return UNKNOWN_EXIT
