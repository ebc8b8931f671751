from __future__ import annotations

import contextlib
import signal as _signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._proto.containerd.services.tasks import v1 as tasks_pb
from ..errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    map_errors,
)
from . import _wire
from ._ids import validate_id
from ._io import NullIO, ProcessIO
from ._types import ExitStatus, ProcessInfo, ProcessState, Resources, Stats, TaskStatus

if TYPE_CHECKING:
    from ._client import Container

#: Bound on ``force_delete`` as a whole.
FORCE_DELETE_TIMEOUT = 10.0
#: Bound on the clean-up of an exec whose creation was interrupted.
DISCARD_TIMEOUT = 10.0


class _Process:
    """What a task's init process and an exec process have in common."""

    def __init__(self, container: Container, exec_id: str, pid: int, io: ProcessIO) -> None:
        self.container = container
        self.exec_id = exec_id
        self.pid = pid
        self.io = io
        # CloseIO only once the shim holds the process's stdin: at once for a
        # task, after Start for an exec (the shim opens its stdin there).
        self._stdin_ready = not exec_id
        self._stdin_close_pending = False

    @property
    def container_id(self) -> str:
        return self.container.id

    @property
    def _stub(self) -> tasks_pb.TasksStub:
        client = self.container.client
        client._check_open()
        return client._tasks_stub

    def _what(self, verb: str) -> str:
        name = f"{self.container_id}/{self.exec_id}" if self.exec_id else self.container_id
        return f"{verb} {name}"

    async def start(self) -> int:
        """Start the process; returns its pid."""
        with map_errors(self._what("start")):
            reply = await self._stub.start(
                tasks_pb.StartRequest(container_id=self.container_id, exec_id=self.exec_id)
            )
        self.pid = reply.pid
        self._stdin_ready = True
        self.io.process_ready()
        if self._stdin_close_pending:
            self._stdin_close_pending = False
            await self.io.close_stdin()
            await self._close_io()
        return self.pid

    async def wait(self) -> ExitStatus:
        """Wait for the process to exit (bound it with ``anyio.fail_after``)."""
        with map_errors(self._what("wait for")):
            reply = await self._stub.wait(
                tasks_pb.WaitRequest(container_id=self.container_id, exec_id=self.exec_id)
            )
        return _wire.exit_status(reply.exit_status, reply.exited_at)

    async def kill(self, signal: int = _signal.SIGTERM, *, all: bool = False) -> None:
        """Send ``signal``; with ``all`` (tasks only), to every process in the container."""
        if all and self.exec_id:
            raise InvalidArgument("all=True applies to a task, not to an exec process")
        with map_errors(self._what(f"signal {int(signal)} to")):
            await self._stub.kill(
                tasks_pb.KillRequest(
                    container_id=self.container_id,
                    exec_id=self.exec_id,
                    signal=int(signal),
                    all=all,
                )
            )

    async def status(self) -> ProcessState:
        """The process as containerd sees it now."""
        return await self.container.client.process_state(self.container_id, self.exec_id or None)

    async def resize(self, width: int, height: int) -> None:
        """Resize the process's terminal."""
        if not self.io.terminal:
            raise FailedPrecondition(f"{self._what('resize')}: the process has no terminal")
        if not (0 < width < 65536 and 0 < height < 65536):
            raise InvalidArgument(f"terminal size {width}x{height} is out of range")
        with map_errors(self._what("resize")):
            await self._stub.resize_pty(
                tasks_pb.ResizePtyRequest(
                    container_id=self.container_id,
                    exec_id=self.exec_id,
                    width=width,
                    height=height,
                )
            )

    async def close_stdin(self) -> None:
        """Signal end of input. For an exec not yet started, done right after start."""
        if self._stdin_ready:
            await self.io.close_stdin()
            await self._close_io()
        else:
            # Closing our end now would discard what was written: a FIFO's
            # buffer dies with its last open descriptor.
            self._stdin_close_pending = True

    async def _close_io(self) -> None:
        with map_errors(self._what("close stdin of")):
            await self._stub.close_io(
                tasks_pb.CloseIoRequest(
                    container_id=self.container_id, exec_id=self.exec_id, stdin=True
                )
            )


class Task(_Process):
    """A container's task: its init process, and the handle for execs.

    Get one from :meth:`Container.new_task` or :meth:`Container.task`.
    """

    def __init__(self, container: Container, pid: int, io: ProcessIO) -> None:
        super().__init__(container, "", pid, io)
        self._execs: dict[str, Process] = {}

    def __repr__(self) -> str:
        return f"<Task {self.container_id!r} pid={self.pid}>"

    async def pause(self) -> None:
        """Freeze every process in the container."""
        with map_errors(self._what("pause")):
            await self._stub.pause(tasks_pb.PauseTaskRequest(container_id=self.container_id))

    async def resume(self) -> None:
        """Thaw a paused container."""
        with map_errors(self._what("resume")):
            await self._stub.resume(tasks_pb.ResumeTaskRequest(container_id=self.container_id))

    async def pids(self) -> list[ProcessInfo]:
        """Every pid in the container, each with its exec id if it is an exec."""
        with map_errors(self._what("list pids of")):
            reply = await self._stub.list_pids(
                tasks_pb.ListPidsRequest(container_id=self.container_id)
            )
        return [_wire.process_info(p) for p in reply.processes]

    async def metrics(self) -> Stats:
        """The container's cgroup statistics (cgroup v1 or v2, one shape)."""
        with map_errors(self._what("get metrics of")):
            reply = await self._stub.metrics(
                tasks_pb.MetricsRequest(filters=[f"id=={self.container_id}"])
            )
        for metric in reply.metrics:
            if metric.id == self.container_id:
                return _wire.stats(metric.data, metric.timestamp)
        raise NotFound(f"no metrics for task {self.container_id}")

    async def update(
        self, resources: Resources, *, annotations: Mapping[str, str] | None = None
    ) -> None:
        """Change the running container's resource limits."""
        linux = _wire.linux_resources(resources)
        if not linux and not annotations:
            raise InvalidArgument("update needs at least one resource or annotation")
        with map_errors(self._what("update")):
            await self._stub.update(
                tasks_pb.UpdateTaskRequest(
                    container_id=self.container_id,
                    resources=_wire.pack_json(_wire.RESOURCES_TYPE_URL, linux) if linux else None,
                    annotations=dict(annotations or {}),
                )
            )

    async def checkpoint(self, image_path: str, *, exit: bool = False, work_path: str = "") -> None:
        """Dump the task with CRIU into ``image_path``; with ``exit`` it stops after.

        Restore with ``Container.new_task(restore_from=image_path)``.
        """
        if not image_path.startswith("/"):
            raise InvalidArgument(f"checkpoint path {image_path!r} must be absolute")
        with map_errors(self._what("checkpoint")):
            await self._stub.checkpoint(
                tasks_pb.CheckpointTaskRequest(
                    container_id=self.container_id,
                    options=_wire.checkpoint_options(image_path, work_path, exit),
                )
            )

    async def exec(
        self,
        exec_id: str,
        process: Sequence[str] | Mapping[str, Any],
        io: ProcessIO | None = None,
    ) -> Process:
        """Add an exec process (not yet started) to the running task.

        ``process`` is either args, run with the container's env, cwd, user and
        capabilities, or a whole OCI process object. The process owns ``io``.
        """
        io = io or NullIO()
        added = False
        try:
            validate_id(exec_id, "exec id")
            if exec_id in self._execs:
                raise FailedPrecondition(f"exec {exec_id} is already held by this task handle")
            spec = self._exec_spec(process, io.terminal)
            request = tasks_pb.ExecProcessRequest(
                container_id=self.container_id,
                exec_id=exec_id,
                stdin=io.stdin,
                stdout=io.stdout,
                stderr=io.stderr,
                terminal=io.terminal,
                spec=_wire.pack_json(_wire.PROCESS_TYPE_URL, spec),
            )
            # Like Tasks.Create, an interrupted Exec leaves the shim half-way.
            with (
                anyio.CancelScope(shield=True),
                anyio.fail_after(DISCARD_TIMEOUT),
                map_errors(self._what(f"exec {exec_id} in")),
            ):
                await self._stub.exec(request)
            added = True
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if added or isinstance(exc, Unavailable | TimeoutError):
                    with anyio.move_on_after(DISCARD_TIMEOUT), contextlib.suppress(Exception):
                        await self._stub.delete_process(
                            tasks_pb.DeleteProcessRequest(
                                container_id=self.container_id, exec_id=exec_id
                            )
                        )
                await io.aclose()
            raise
        proc = Process(self, exec_id, io)
        self._execs[exec_id] = proc
        return proc

    def _exec_spec(
        self, process: Sequence[str] | Mapping[str, Any], terminal: bool
    ) -> dict[str, Any]:
        if isinstance(process, Mapping):
            spec = dict(process)
            if "terminal" in spec and bool(spec["terminal"]) != terminal:
                raise InvalidArgument(
                    f"the process's terminal is {bool(spec['terminal'])} "
                    f"but the IO's terminal is {terminal}"
                )
        else:
            if isinstance(process, str | bytes) or not process:
                raise InvalidArgument("exec args must be a non-empty list of strings")
            spec = dict(self.container.info.spec.get("process") or {})
            spec["args"] = list(process)
        if not spec.get("args"):
            raise InvalidArgument("exec process has no args")
        spec["terminal"] = terminal
        spec.setdefault("cwd", "/")
        return spec

    async def delete(self) -> ExitStatus:
        """Delete the stopped task; returns how it exited and releases its IO."""
        await self.container._clear_half_deleted()
        try:
            with map_errors(self._what("delete task")):
                reply = await self._stub.delete(
                    tasks_pb.DeleteTaskRequest(container_id=self.container_id)
                )
        except NotFound:
            await self._release()  # already gone: nothing will use the IO again
            raise
        await self._release()
        return _wire.exit_status(reply.exit_status, reply.exited_at)

    async def force_delete(self) -> ExitStatus:
        """SIGKILL every process, wait for the task, delete it; all within 10 s
        (``TimeoutError`` beyond)."""
        with anyio.fail_after(FORCE_DELETE_TIMEOUT):
            state = await self.status()
            if state.status not in (TaskStatus.STOPPED, TaskStatus.CREATED):
                # NotFound or FailedPrecondition: it exited on its own meanwhile.
                with contextlib.suppress(NotFound, FailedPrecondition):
                    await self.kill(_signal.SIGKILL, all=True)
                await self.wait()
            return await self.delete()

    async def _release(self) -> None:
        with anyio.CancelScope(shield=True):
            for proc in self._execs.values():
                await proc.io.aclose()
            self._execs.clear()
            await self.io.aclose()


class Process(_Process):
    """An exec process inside a task. Get one from :meth:`Task.exec`."""

    def __init__(self, task: Task, exec_id: str, io: ProcessIO) -> None:
        super().__init__(task.container, exec_id, 0, io)
        self.task = task

    def __repr__(self) -> str:
        return f"<Process {self.container_id!r}/{self.exec_id!r} pid={self.pid}>"

    async def _release(self) -> None:
        self.task._execs.pop(self.exec_id, None)
        with anyio.CancelScope(shield=True):
            await self.io.aclose()

    async def delete(self) -> ExitStatus:
        """Delete the exited exec process; returns how it exited."""
        with map_errors(self._what("delete")):
            reply = await self._stub.delete_process(
                tasks_pb.DeleteProcessRequest(container_id=self.container_id, exec_id=self.exec_id)
            )
        self.task._execs.pop(self.exec_id, None)
        with anyio.CancelScope(shield=True):
            await self.io.aclose()
        return _wire.exit_status(reply.exit_status, reply.exited_at)
