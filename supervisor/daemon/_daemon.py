"""The long-running service: definitions in, containers kept alive, state in containerd.

The daemon is one backend of the event pipeline. Everything it must know
after a crash lives in labels on the containers (policy, restart count,
backoff, manual stop, definition hash, start time, log path), so a new
daemon rebuilds itself from containerd alone and touches nothing that runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._supervisor import Supervisor
from ..client import Client, Container, FifoIO, Task, TaskStatus
from ..errors import NotFound, SupervisorError
from ..events import Event, EventType, TaskExit
from ._config import DaemonConfig
from ._containerd import ManagedContainerd
from ._control import serve
from ._definitions import ContainerDefinition, load_definitions
from ._labels import (
    COMMAND,
    EXIT_CODE,
    FINISHED_AT,
    HASH,
    LOG_PATH,
    MANAGED,
    MANAGED_FILTER,
    POLICY,
    REMOVE_ON_EXIT,
    ROOTFS,
    SOURCE,
    STARTED_AT,
    STOP_SIGNAL,
    STOP_TIMEOUT,
    definition_from_labels,
    policy,
    timestamp,
)
from ._logs import RotatingJsonLog
from ._notify import Notifier, watchdog_interval
from ._output import Listener, copy_logs, publish
from ._policy import (
    RestartPolicy,
    RestartState,
    decide,
    manual_stop,
    record_oom,
    restart_on_daemon_start,
)

log = logging.getLogger("supervisor.daemon")


#: Bound on each container operation the daemon makes on its own.
OPERATION_TIMEOUT = 30.0
#: How long an exit waits for the rest of the process's output to be logged.
LOG_DRAIN_TIMEOUT = 2.0


@dataclass
class Applied:
    """What applying a definitions directory did."""

    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Daemon:
    """Runs the definitions in ``config.definitions_dir`` under their restart
    policies, until SIGTERM or SIGINT; SIGHUP reloads the definitions."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        # Read the watchdog interval before the environment loses it (so that
        # the managed containerd does not inherit systemd's variables).
        self.watchdog_interval = watchdog_interval()
        self.notifier = Notifier.from_env(unset=True)
        self.definitions: dict[str, ContainerDefinition] = {}
        self._tasks: dict[str, Task] = {}
        self._logs: dict[str, RotatingJsonLog] = {}
        self._drained: dict[str, anyio.Event] = {}  # set when a task's output hit EOF
        self._from_dir: set[str] = set()  # ids the definitions directory owns
        self.output_listeners: dict[str, set[Listener]] = {}
        self.event_listeners: set[Listener] = set()
        self._exits: dict[str, list[anyio.Event]] = {}
        self.last_exit: dict[str, int] = {}
        self._busy: set[str] = set()  # ids being stopped or replaced by us
        self._locks: dict[str, anyio.Lock] = {}  # one container's changes, one at a time
        self._stopping = False
        self.load_errors: list[str] = []
        self._restored = anyio.Event()
        self._sup: Supervisor | None = None
        self._tg: TaskGroup | None = None
        self.managed: ManagedContainerd | None = None

    @property
    def client(self) -> Client:
        assert self._sup is not None
        return self._sup.client

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT (signals that arrive while starting wait
        their turn); SIGHUP reloads the definitions."""
        with anyio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            try:
                await self._run(signals)
            finally:
                self._stopping = True
                for journal in self._logs.values():
                    journal.close()
                if self.managed is not None:
                    with anyio.CancelScope(shield=True):
                        await self.managed.stop()

    async def _run(self, signals: Any) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
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
            Supervisor(self, address, config.namespace, fifo_dir=str(config.fifo_dir)) as sup,
            anyio.create_task_group() as tg,
        ):
            self._sup, self._tg = sup, tg
            if self.managed is not None:
                tg.start_soon(self.managed.watch)
            await self._restore()
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
                    for cid in list(self.definitions):
                        await self._stop(cid, remove=False, manual=False)
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

    # -- definitions -------------------------------------------------------------

    def _load(self, directory: Path | None = None) -> dict[str, ContainerDefinition]:
        definitions, errors = load_definitions(directory or self.config.definitions_dir)
        self.load_errors = [str(e) for e in errors]
        for error in errors:
            log.error("skipping definition %s", error)
        return {d.id: d for d in definitions}

    async def _restore(self) -> None:
        """Live restore: adopt what runs, apply the definitions, then let the
        pipeline's handlers (held until now) apply policies to what ended."""
        wanted = self._load()
        existing = {c.id: c for c in await self.client.list_containers(MANAGED_FILTER)}
        for cid, info in existing.items():
            definition = wanted.get(cid)
            if definition is None and info.labels.get(SOURCE) in ("api", "apply"):
                try:
                    self.definitions[cid] = definition_from_labels(info)
                    await self._adopt(await self.client.load_container(cid), self.definitions[cid])
                except (SupervisorError, OSError, ValueError) as exc:
                    log.error("cannot adopt %s: %s", cid, exc)
                continue
            if definition is None:
                log.info("container %s has no definition any more: removing it", cid)
                await self._stop(cid, remove=True)
            elif info.labels.get(HASH) != definition.definition_hash():
                log.info("definition of %s changed: replacing it", cid)
                await self._stop(cid, remove=True)
                await self._create_and_start(definition)
            else:
                self.definitions[cid] = definition
                try:
                    await self._adopt(await self.client.load_container(cid), definition)
                except (SupervisorError, OSError, ValueError) as exc:
                    log.error("cannot adopt %s: %s", cid, exc)
        for cid, definition in wanted.items():
            if cid not in existing:
                await self._create_and_start(definition)
        self._from_dir = set(wanted)
        self._restored.set()

    async def _adopt(self, container: Container, definition: ContainerDefinition) -> None:
        cid = container.id
        try:
            state = await self.client.process_state(cid)
        except NotFound:
            state = None
        if state is not None and state.status is TaskStatus.CREATED:
            # Created but never started: a daemon died between the two.
            await (await container.task()).force_delete()
            state = None
        if state is None:
            await self._adopt_without_task(container)
            return
        if state.status in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.PAUSING):
            io = FifoIO.attach(state.stdout, state.stderr) if state.stdout else None
            task = await container.task(io)
            self._tasks[cid] = task
            if io is not None:
                self._pump(cid, io)
            log.info("adopted %s (pid %d, %s)", cid, state.pid, state.status.value)
        # A stopped task: the pipeline reported its exit; _on_exit applies the policy.

    async def _adopt_without_task(self, container: Container) -> None:
        cid = container.id
        labels = container.info.labels
        state = RestartState.from_labels(labels)
        restart_policy = policy(labels)
        started = timestamp(labels.get(STARTED_AT))
        finished = timestamp(labels.get(FINISHED_AT))
        if started is not None and (finished is None or finished < started):
            # It was running when a daemon died before recording its end (or
            # before starting its replacement): an exit with unknown status, as
            # Docker counts it, and the policy decides.
            decision = decide(restart_policy, state, 255, 0.0)
            await container.update_labels(
                {**decision.state.to_labels(), EXIT_CODE: "255",
                 FINISHED_AT: datetime.now(UTC).isoformat()}
            )  # fmt: skip
            log.info("container %s ended while no daemon watched: %s", cid, decision.reason)
            restart = decision.restart
        else:
            restart = restart_on_daemon_start(restart_policy, state)
        if restart:
            log.info("container %s was stopped; its policy starts it again", cid)
            try:
                with anyio.fail_after(OPERATION_TIMEOUT):
                    await self._start(container)
            except (SupervisorError, TimeoutError) as exc:
                log.error("cannot start %s: %s", cid, exc)

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
                if await self._create_and_start(definition, source):
                    result.created.append(cid)
            elif current.definition_hash() != definition.definition_hash():
                log.info("definition of %s changed: replacing it", cid)
                await self._stop(cid, remove=True)
                if await self._create_and_start(definition, source):
                    result.replaced.append(cid)
            if own:
                self._from_dir.add(cid)
        result.errors = list(self.load_errors)
        return result

    # -- containers --------------------------------------------------------------

    def _labels(
        self, definition: ContainerDefinition, source: str = "definitions"
    ) -> dict[str, str]:
        return {
            **definition.labels,
            MANAGED: "true",
            SOURCE: source,
            COMMAND: json.dumps(list(definition.command)),
            ROOTFS: str(definition.rootfs),
            HASH: definition.definition_hash(),
            POLICY: str(definition.restart),
            STOP_SIGNAL: str(int(definition.stop_signal)),
            STOP_TIMEOUT: str(definition.stop_timeout),
            LOG_PATH: str(self.config.log_dir / f"{definition.id}.log"),
            **RestartState().to_labels(),
        }

    async def _create_and_start(
        self, definition: ContainerDefinition, source: str = "definitions"
    ) -> bool:
        try:
            with anyio.fail_after(OPERATION_TIMEOUT):
                async with self._lock(definition.id):
                    container = await self.client.create_container(
                        definition.id, definition.spec(), labels=self._labels(definition, source)
                    )
                    self.definitions[definition.id] = definition
                    await self._start(container)
        except (SupervisorError, TimeoutError) as exc:
            log.error("cannot run %s (%s): %s", definition.id, definition.source, exc)
            self.load_errors.append(f"{definition.source}: {exc}")
            return False
        return True

    async def _start(self, container: Container, *, stdin: bool = False) -> Task:
        cid = container.id
        definition = self.definitions.get(cid)
        terminal = definition.terminal if definition else False
        io = FifoIO.create(self.config.fifo_dir, cid, terminal=terminal, stdin=stdin)
        task = await container.new_task(io)
        self._pump(cid, io)
        await task.start()
        self._tasks[cid] = task
        await container.update_labels({STARTED_AT: f"{time.time():.6f}"})
        return task

    def _pump(self, cid: str, io: FifoIO) -> None:
        """Copy the task's output into its JSON log until EOF (the process's end)."""
        assert self._tg is not None
        journal = self._logs.get(cid)
        if journal is None:
            journal = self._logs[cid] = RotatingJsonLog(
                self.config.log_dir / f"{cid}.log",
                self.config.log_max_bytes,
                self.config.log_max_files,
            )
        drained = self._drained[cid] = anyio.Event()
        readers = [(s, r) for s, r in (("stdout", io.stdout_reader), ("stderr", io.stderr_reader))]
        listeners = self.output_listeners.setdefault(cid, set())
        self._tg.start_soon(copy_logs, [(s, r) for s, r in readers if r is not None], journal,
                            listeners, drained)  # fmt: skip

    def forget(self, cid: str) -> None:
        """Drop what the daemon holds for a container that is gone."""
        self.definitions.pop(cid, None)
        self._from_dir.discard(cid)
        journal = self._logs.pop(cid, None)
        if journal is not None:
            journal.close()
        for listener in self.output_listeners.pop(cid, set()):
            listener.close()

    def is_running(self, cid: str) -> bool:
        """Whether the daemon pumps a live task's output for this container."""
        drained = self._drained.get(cid)
        return cid in self._tasks and drained is not None and not drained.is_set()

    def exit_waiter(self, cid: str) -> anyio.Event:
        """An event set at the container's next exit (after the policy ran)."""
        waiter = anyio.Event()
        self._exits.setdefault(cid, []).append(waiter)
        return waiter

    async def run_container(
        self, definition: ContainerDefinition, *, remove: bool, stdin: bool
    ) -> FifoIO:
        """Create and start a container for the control API; returns its IO."""
        labels = self._labels(definition, source="api")
        if remove:
            labels[REMOVE_ON_EXIT] = "true"
        with anyio.fail_after(OPERATION_TIMEOUT):
            async with self._lock(definition.id):
                container = await self.client.create_container(
                    definition.id, definition.spec(), labels=labels
                )
                self.definitions[definition.id] = definition
                try:
                    task = await self._start(container, stdin=stdin)
                except BaseException:
                    self.definitions.pop(definition.id, None)
                    with anyio.CancelScope(shield=True), contextlib.suppress(SupervisorError):
                        with contextlib.suppress(NotFound):
                            await (await container.task()).force_delete()
                        await container.delete()
                    raise
        assert isinstance(task.io, FifoIO)
        return task.io

    async def stop_container(self, cid: str, *, grace: float | None = None) -> None:
        """A manual stop: signal, ``grace`` seconds (default: the container's
        stop timeout), SIGKILL. The restart policy will not undo it."""
        await self._stop(cid, remove=False, grace=grace, quiet=False)

    async def remove_container(self, cid: str) -> None:
        """Stop (if running) and delete a container, and forget it."""
        await self._stop(cid, remove=True, quiet=False)

    def _lock(self, cid: str) -> anyio.Lock:
        lock = self._locks.get(cid)
        if lock is None:
            lock = self._locks[cid] = anyio.Lock()
        return lock

    async def _stop(
        self,
        cid: str,
        *,
        remove: bool,
        grace: float | None = None,
        manual: bool = True,
        quiet: bool = True,
    ) -> None:
        """Stop a container on our own account (signal, timeout, SIGKILL);
        with ``remove``, delete it too. ``manual``: the policy must not undo it.
        Errors are logged, or with ``quiet=False`` raised to the caller."""
        self._busy.add(cid)
        try:
            with anyio.fail_after(OPERATION_TIMEOUT * 2 + (grace or 0.0)):
                async with self._lock(cid):
                    await self._stop_locked(cid, remove=remove, grace=grace, manual=manual)
        except (SupervisorError, TimeoutError) as exc:
            if not quiet:
                raise
            log.error("cannot stop %s: %s", cid, exc)
        finally:
            self._busy.discard(cid)

    async def _stop_locked(
        self, cid: str, *, remove: bool, grace: float | None, manual: bool
    ) -> None:
        try:
            container = await self.client.load_container(cid)
        except NotFound:
            return
        labels = container.info.labels
        if manual:
            await container.update_labels(manual_stop(RestartState.from_labels(labels)).to_labels())
        task = self._tasks.pop(cid, None)
        if task is None:
            with contextlib.suppress(NotFound):
                task = await container.task()
        if task is not None:
            code = await _stop_task(task, labels, grace)
            self.last_exit[cid] = code
            for waiter in self._exits.pop(cid, []):
                waiter.set()
            if not remove:
                finished = datetime.now(UTC).isoformat()
                await container.update_labels({EXIT_CODE: str(code), FINISHED_AT: finished})
        if remove:
            await container.delete()
            self.forget(cid)

    # -- the backend -------------------------------------------------------------

    async def process_event(self, container_id: str, event_type: EventType, event: Event) -> None:
        publish(self.event_listeners, (container_id, event_type, event))
        await self._restored.wait()
        if container_id not in self.definitions or container_id in self._busy:
            return
        if event_type is EventType.OOM:
            container = await self.client.load_container(container_id)
            state = record_oom(RestartState.from_labels(container.info.labels))
            await container.update_labels(state.to_labels())
            log.warning("container %s: out of memory (kill %d)", container_id, state.oom_kills)
        elif event_type is EventType.EXIT and isinstance(event, TaskExit) and event.exec_id is None:
            await self._on_exit(container_id, event)

    async def _on_exit(self, cid: str, event: TaskExit) -> None:
        """Apply the restart policy. Nothing changes before the backoff delay is
        over, so a daemon stopped meanwhile leaves the stopped task for the next
        one, which decides the same way."""
        if self._stopping:
            return
        try:
            container = await self.client.load_container(cid)
        except NotFound:
            return
        current = self._tasks.get(cid)
        if current is None:
            with contextlib.suppress(NotFound):
                current = await container.task()
        if current is not None and current.pid != event.pid:
            return  # the exit of a task this container had before its current one
        labels = container.info.labels
        ended = event.exited_at.timestamp() if event.exited_at else time.time()
        ran_for = max(0.0, ended - float(labels.get(STARTED_AT, ended)))
        decision = decide(policy(labels), RestartState.from_labels(labels), event.exit_status,
                          ran_for)  # fmt: skip
        log.info("container %s exited with %d: %s", cid, event.exit_status, decision.reason)
        if decision.restart:
            await anyio.sleep(decision.delay)
        async with self._lock(cid):
            if self._stopping or cid in self._busy or cid not in self.definitions:
                return
            await self._after_exit(container, event, decision, current, ended)

    async def _after_exit(
        self, container: Container, event: TaskExit, decision: Any, current: Task | None,
        ended: float,
    ) -> None:  # fmt: skip
        cid = container.id
        # Whatever happened during the backoff (a stop, a replace, an operator's
        # start) wins: act only if the stopped task is still this container's.
        try:
            await container.refresh()
            now = await self.client.process_state(cid)
        except NotFound:
            return
        if now.pid != event.pid:
            return
        state_now = RestartState.from_labels(container.info.labels)
        if decision.restart and state_now.manually_stopped:
            decision = decide(RestartPolicy.parse("no"), state_now, event.exit_status, 0.0)
        drained = self._drained.pop(cid, None)
        if drained is not None:
            with anyio.move_on_after(LOG_DRAIN_TIMEOUT):
                await drained.wait()  # the tail of its output, before the FIFOs go
        task = self._tasks.pop(cid, None) or current
        if task is not None:
            with contextlib.suppress(NotFound):
                await task.delete()
        await container.update_labels(
            {
                **decision.state.to_labels(),
                EXIT_CODE: str(event.exit_status),
                FINISHED_AT: datetime.fromtimestamp(ended, UTC).isoformat(),
            }
        )
        self.last_exit[cid] = event.exit_status
        for waiter in self._exits.pop(cid, []):
            waiter.set()
        if not decision.restart:
            if container.info.labels.get(REMOVE_ON_EXIT) == "true":
                with contextlib.suppress(NotFound):
                    await container.delete()
                self.forget(cid)
            return
        try:
            with anyio.fail_after(OPERATION_TIMEOUT):
                await self._start(container)
        except (SupervisorError, TimeoutError) as exc:
            log.error("cannot restart %s: %s", cid, exc)


async def _stop_task(task: Task, labels: Mapping[str, str], grace: float | None) -> int:
    signum = int(labels.get(STOP_SIGNAL, signal.SIGTERM))
    timeout = float(labels.get(STOP_TIMEOUT, 10.0)) if grace is None else grace
    state = await task.status()
    if state.status is not TaskStatus.STOPPED:
        with contextlib.suppress(NotFound):
            await task.kill(signum)
        with anyio.move_on_after(timeout) as waited:
            await task.wait()
        if waited.cancelled_caught:
            log.warning("container %s ignored signal %d for %gs; SIGKILL",
                        task.container_id, signum, timeout)  # fmt: skip
    try:
        return (await task.force_delete()).code
    except NotFound:
        return 255
