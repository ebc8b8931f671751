from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel
from grpclib.client import Channel

from .._proto.containerd.services.containers import v1 as containers_pb
from .._proto.containerd.services.events import v1 as events_pb
from .._proto.containerd.services.tasks import v1 as tasks_pb
from .._proto.containerd.services.version import v1 as version_pb
from .._proto.google.protobuf import Empty, FieldMask
from .._proto.grpc.health import v1 as health_pb
from ..errors import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SupervisorError,
    Unavailable,
    map_errors,
)
from . import _wire
from ._bundles import (
    DEAD_BUNDLE_ERROR,
    RUNC_EXISTS_ERROR,
    clear_for_create,
    clear_half_deleted,
    clear_runc_state,
    half_deleted,
    settle_lost_task,
)
from ._ids import validate_id
from ._io import FifoIO, NullIO, ProcessIO
from ._listing import RawReply, decode_container, decode_containers, decode_metrics, decode_tasks
from ._spec import IMAGE_ROOTFS
from ._tasks import Task
from ._types import (
    DEFAULT_LEASE_EXPIRY,
    DEFAULT_SNAPSHOTTER,
    ContainerInfo,
    ProcessState,
    RuncOptions,
    Stats,
    Version,
)

if TYPE_CHECKING:
    from ..images import Image, PullProgress
    from ._content import ContentStore
    from ._images import ImageStore
    from ._leases import Leases, Stores
    from ._snapshots import Differ, Snapshots
    from ._store_types import RootfsMount

log = logging.getLogger("supervisor.client")

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
DEFAULT_RUNTIME = "io.containerd.runc.v2"
DEFAULT_FIFO_DIR = "/run/containerd-supervisor/fifo"
#: How long ``is_serving`` waits for containerd's health service (moby: 3 s).
HEALTH_CHECK_TIMEOUT = 3.0
_MAX_LABEL_SIZE = 4096
#: Bound on Tasks.Create (normally 50-100 ms: the shim and ``runc create``).
CREATE_TIMEOUT = 60.0
#: Bound on the clean-up of a task whose creation was interrupted.
DISCARD_TIMEOUT = 10.0


class _State(enum.Enum):
    UNOPENED = 1
    OPEN = 2
    CLOSED = 3


def _socket_path(address: str) -> str:
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        raise InvalidArgument(f"containerd address {address!r} must be an absolute socket path")
    return path


def _check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in labels.items():
        if not key or not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(f"label {key!r}={value!r}: keys and values must be strings")
        if len(key) + len(value) > _MAX_LABEL_SIZE:
            raise InvalidArgument(f"label {key!r} is longer than {_MAX_LABEL_SIZE} bytes")
        out[key] = value
    return out


def container_info(c: containers_pb.Container) -> ContainerInfo:
    runtime = c.runtime.name if c.runtime is not None else ""
    try:
        spec = _wire.unpack_json(c.spec)
    except ContainerdError as exc:
        # One unreadable record must not make every listing fail.
        log.warning("container %s: %s", c.id, exc)
        spec = {}
    return ContainerInfo(
        id=c.id,
        labels=dict(c.labels),
        runtime=runtime,
        spec=spec,
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=_wire.timestamp(c.created_at),
        updated_at=_wire.timestamp(c.updated_at),
        runtime_options=_wire.runc_options_from(c.runtime.options if c.runtime else None),
    )


class Client:
    """A typed async client for one containerd namespace.

    Use it as an async context manager; the connection is made on the first
    call and survives containerd restarts (calls in between raise
    :class:`~supervisor.errors.Unavailable`)::

        async with Client("/run/containerd/containerd.sock", "demo") as client:
            print(await client.version())

    ``fifo_dir`` is where :meth:`new_fifo_io` makes per-process FIFO
    directories. ``containerd_state``, containerd's (state, root) directories
    when the caller knows them, lets the client clear the task bundles a killed
    containerd leaves and never clears itself, which otherwise block every new
    task of that container (see :mod:`supervisor.client._bundles`). Calls made
    after the client is closed raise ``RuntimeError``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        fifo_dir: str = DEFAULT_FIFO_DIR,
        runtime: str = DEFAULT_RUNTIME,
        containerd_state: tuple[str, str] | None = None,
        snapshotter: str = DEFAULT_SNAPSHOTTER,
    ) -> None:
        self.address = _socket_path(address)
        self.snapshotter = snapshotter
        self.containerd_state = containerd_state
        # Set once containerd was seen away: tasks may have been lost since.
        self.outage_seen = False
        self.namespace = validate_id(namespace, "namespace")
        self.fifo_dir = fifo_dir
        self.runtime = runtime
        self._state = _State.UNOPENED
        self._channel: Channel | None = None

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a Client can be opened only once")
        self._channel = Channel(path=self.address)
        metadata = {"containerd-namespace": self.namespace}
        self._containers_stub = containers_pb.ContainersStub(self._channel, metadata=metadata)
        self._tasks_stub = tasks_pb.TasksStub(self._channel, metadata=metadata)
        self._events_stub = events_pb.EventsStub(self._channel, metadata=metadata)
        self._version = version_pb.VersionStub(self._channel)
        self._health = health_pb.HealthStub(self._channel)
        self._stores: Stores | None = None  # made on first use (its stubs cost an import)
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection. Streams using it must have been closed first."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._state = _State.CLOSED

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise RuntimeError(f"the Client is {self._state.name.lower()}; use 'async with'")

    def new_fifo_io(self, name: str, *, stdin: bool = False, terminal: bool = False) -> FifoIO:
        """A FIFO set for one process in a private directory under ``fifo_dir``."""
        return FifoIO.create(self.fifo_dir, name, stdin=stdin, terminal=terminal)

    # -- content, images, snapshots, leases -----------------------------------

    @property
    def stores(self) -> Stores:
        """The content store, image records, snapshots and diff service of the
        namespace, as one set (what :mod:`supervisor.images` works on)."""
        self._check_open()
        if self._stores is None:
            from ._leases import Stores

            assert self._channel is not None  # open (checked above)
            self._stores = Stores(self._channel, self.namespace, snapshotter=self.snapshotter)
        return self._stores

    @property
    def content(self) -> ContentStore:
        """containerd's content store (blobs by digest) in this namespace."""
        return self.stores.content

    @property
    def images(self) -> ImageStore:
        """containerd's image records in this namespace."""
        return self.stores.images

    @property
    def snapshots(self) -> Snapshots:
        """The snapshots of the client's snapshotter (overlayfs by default)."""
        return self.stores.snapshots

    @property
    def diff(self) -> Differ:
        """containerd's diff service (applies layers onto mounts)."""
        return self.stores.diff

    @property
    def leases(self) -> Leases:
        """containerd's leases in this namespace."""
        return self.stores.leases

    def lease(
        self, *, expire: timedelta | None = DEFAULT_LEASE_EXPIRY
    ) -> contextlib.AbstractAsyncContextManager[Stores]:
        """``async with client.lease() as stores:`` the store services with
        every call under a new lease, deleted when the block ends."""
        return self.stores.lease(expire=expire)

    # -- daemon --------------------------------------------------------------

    async def version(self) -> Version:
        """containerd's version; raises ``Unavailable`` if it is not serving."""
        self._check_open()
        with map_errors("version"):
            reply = await self._version.version(Empty())
        return Version(version=reply.version, revision=reply.revision)

    async def is_serving(self) -> bool:
        """Whether containerd answers its health check as serving, within 3 s."""
        self._check_open()
        request = health_pb.HealthCheckRequest()
        with anyio.move_on_after(HEALTH_CHECK_TIMEOUT):
            try:
                reply = await self._health.check(request, timeout=HEALTH_CHECK_TIMEOUT)
            except Exception:
                self.outage_seen = True
                return False
            serving: bool = reply.status == health_pb.HealthCheckResponseServingStatus.SERVING
            return serving
        return False

    # -- containers ----------------------------------------------------------

    async def create_container(
        self,
        container_id: str,
        spec: Mapping[str, Any],
        *,
        labels: Mapping[str, str] | None = None,
        runtime: str | None = None,
        runtime_options: RuncOptions | None = None,
        snapshot_key: str = "",
        image: str = "",
    ) -> Container:
        """Create a container record from an OCI spec (see :func:`oci_spec`).

        A spec without ``linux.cgroupsPath`` gets ``/<namespace>/<id>``.
        ``image`` (a reference, e.g. ``busybox:1.36``, already pulled: see
        :meth:`pull`) gives the container a writable snapshot of its own on the
        image, keyed by the container's id: the spec's ``root.path`` becomes
        ``rootfs`` (:data:`IMAGE_ROOTFS`), :meth:`Container.new_task` mounts it
        and :meth:`Container.delete` removes it. (``snapshot_key`` instead
        names a snapshot the caller made, under a lease that lasts until the
        record exists; ``image`` is then only recorded.)
        """
        self._check_open()
        validate_id(container_id, "container id")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("process"), Mapping):
            raise InvalidArgument("spec must be an OCI spec mapping with a 'process' object")
        if not isinstance(spec.get("root"), Mapping) or not spec["root"].get("path"):
            raise InvalidArgument("spec must have root.path")
        spec = dict(spec)
        if image and not snapshot_key:
            return await self._create_from_image(
                container_id, spec, image, labels=labels, runtime=runtime,
                runtime_options=runtime_options,
            )  # fmt: skip
        linux = dict(spec.get("linux") or {})
        if runtime_options is not None and runtime_options.systemd_cgroup:
            linux.setdefault("cgroupsPath", f"system.slice:{self.namespace}:{container_id}")
        else:
            linux.setdefault("cgroupsPath", f"/{self.namespace}/{container_id}")
        spec["linux"] = linux
        record = containers_pb.Container(
            id=container_id,
            labels=_check_labels(labels or {}),
            runtime=containers_pb.ContainerRuntime(
                name=runtime or self.runtime,
                options=_wire.runc_options(runtime_options) if runtime_options else None,
            ),
            spec=_wire.pack_json(_wire.SPEC_TYPE_URL, spec),
            image=image,
            snapshotter=self.snapshotter if snapshot_key else "",
            snapshot_key=snapshot_key,
        )
        with map_errors(f"create container {container_id}"):
            # The reply read straight from the wire (see _listing): betterproto
            # and a JSON parse of the spec took ~1 ms a container.
            reply = await self._containers_stub._unary_unary(
                "/containerd.services.containers.v1.Containers/Create",
                containers_pb.CreateContainerRequest(container=record),
                RawReply,
            )
        return Container(self, decode_container(reply.data, "create container"))

    async def _create_from_image(
        self, container_id: str, spec: dict[str, Any], image: str, **options: Any
    ) -> Container:
        from ..images import normalize, prepare_rootfs, remove_rootfs

        name = normalize(image)
        spec["root"] = {**spec["root"], "path": IMAGE_ROOTFS}
        async with self.lease() as leased:
            await prepare_rootfs(leased, container_id, name)
            try:
                return await self.create_container(
                    container_id, spec, snapshot_key=container_id, image=name, **options
                )
            except BaseException:
                with anyio.CancelScope(shield=True), contextlib.suppress(SupervisorError):
                    await remove_rootfs(leased, container_id)
                raise

    async def pull(
        self,
        ref: str,
        *,
        platform: str | None = None,
        progress: Callable[[PullProgress], None] | None = None,
    ) -> Image:
        """Pull an image from its registry and unpack it (see
        :func:`supervisor.images.pull`, which this calls)."""
        from ..images import pull

        return await pull(self, ref, platform=platform, progress=progress)

    async def load_container(self, container_id: str) -> Container:
        """A handle on an existing container; ``NotFound`` if there is none."""
        self._check_open()
        validate_id(container_id, "container id")
        return Container(self, await self._get_container(container_id))

    async def _get_container(self, container_id: str) -> ContainerInfo:
        with map_errors(f"get container {container_id}"):
            reply = await self._containers_stub._unary_unary(
                "/containerd.services.containers.v1.Containers/Get",
                containers_pb.GetContainerRequest(id=container_id),
                RawReply,
            )
        return decode_container(reply.data, "get container")

    async def list_containers(self, *filters: str) -> list[ContainerInfo]:
        """Containers in the namespace matching any of containerd's ``filters``.

        e.g. ``'labels."app"==web'``; within one filter ``,`` means AND.
        """
        self._check_open()
        with map_errors("list containers"):
            reply = await self._containers_stub._unary_unary(
                "/containerd.services.containers.v1.Containers/List",
                containers_pb.ListContainersRequest(filters=list(filters)),
                RawReply,
            )
        return decode_containers(reply.data)

    async def process_state(self, container_id: str, exec_id: str | None = None) -> ProcessState:
        """A task's init process, or one of its exec processes, as containerd sees it."""
        self._check_open()
        validate_id(container_id, "container id")
        if exec_id is not None:
            validate_id(exec_id, "exec id")
        name = f"{container_id}/{exec_id}" if exec_id else container_id
        with map_errors(f"get {name}"):
            reply = await self._tasks_stub.get(
                tasks_pb.GetRequest(container_id=container_id, exec_id=exec_id or "")
            )
        assert reply.process is not None
        return _wire.process_state(reply.process, container_id, exec_id or "")

    async def list_tasks(self) -> list[ProcessState]:
        """Every task (container init process) in the namespace."""
        self._check_open()
        with map_errors("list tasks"):
            reply = await self._tasks_stub._unary_unary(
                "/containerd.services.tasks.v1.Tasks/List",
                tasks_pb.ListTasksRequest(),
                RawReply,
            )
        return decode_tasks(reply.data)

    async def metrics(self, *filters: str) -> dict[str, Stats]:
        """The cgroup statistics of every task matching any of ``filters`` (all
        without), by container id, in one call."""
        self._check_open()
        with map_errors("get metrics"):
            reply = await self._tasks_stub._unary_unary(
                "/containerd.services.tasks.v1.Tasks/Metrics",
                tasks_pb.MetricsRequest(filters=list(filters)),
                RawReply,
            )
        return decode_metrics(reply.data)


class Container:
    """A handle on a container record; :attr:`info` is as of the last fetch."""

    def __init__(self, client: Client, info: ContainerInfo) -> None:
        self.client = client
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"<Container {self.id!r}>"

    async def refresh(self) -> ContainerInfo:
        """Fetch the record again."""
        self.client._check_open()
        self.info = await self.client._get_container(self.id)
        return self.info

    async def update_labels(
        self, labels: Mapping[str, str] | None = None, *, remove: Iterable[str] = ()
    ) -> ContainerInfo:
        """Set ``labels`` and drop the keys in ``remove``; other labels stay."""
        self.client._check_open()
        labels = _check_labels(labels or {})
        removed = [key for key in remove if key not in labels]
        paths = [f"labels.{key}" for key in [*labels, *removed]]
        if not paths:
            return self.info
        request = containers_pb.UpdateContainerRequest(
            container=containers_pb.Container(id=self.id, labels=labels),
            update_mask=FieldMask(paths=paths),
        )
        with map_errors(f"update container {self.id}"):
            reply = await self.client._containers_stub._unary_unary(
                "/containerd.services.containers.v1.Containers/Update", request, RawReply
            )
        self.info = decode_container(reply.data, "update container")
        return self.info

    async def delete(self) -> None:
        """Delete the record. ``FailedPrecondition`` while a task exists."""
        try:
            task = await self.task()
        except NotFound:
            if self.client.outage_seen:
                # A task containerd lost while it died mid-create would keep
                # its shim and bundle until containerd's next start.
                await self._delete_lost_task()
        else:
            state = await task.status()
            raise FailedPrecondition(
                f"container {self.id} still has a task ({state.status.value}); "
                "delete the task first"
            )
        with map_errors(f"delete container {self.id}"):
            await self.client._containers_stub.delete(
                containers_pb.DeleteContainerRequest(id=self.id)
            )
        if self.info.snapshot_key:
            # The record kept it from garbage collection: it goes now.
            with contextlib.suppress(NotFound), map_errors(f"remove snapshot {self.id}"):
                snapshots = self.client.stores.with_snapshotter(self.info.snapshotter).snapshots
                await snapshots.remove(self.info.snapshot_key)

    async def new_task(
        self,
        io: ProcessIO | None = None,
        *,
        restore_from: str | None = None,
        runtime_options: RuncOptions | None = None,
        rootfs: Sequence[RootfsMount] = (),
    ) -> Task:
        """Create the container's task (its init process), not yet started.

        The task owns ``io`` from here on: it is closed when the task is
        deleted, or at once if creation fails. ``restore_from`` restores a
        checkpoint written by :meth:`Task.checkpoint`. ``rootfs`` are the
        mounts of the container's snapshot (see :meth:`Client.create_container`);
        left empty, a container with a snapshot gets its mounts.
        """
        io = io or NullIO()
        created = False
        try:
            self.client._check_open()
            process = self.info.spec.get("process") or {}
            if bool(process.get("terminal", False)) != io.terminal:
                raise InvalidArgument(
                    f"container {self.id}: the spec's process.terminal is "
                    f"{bool(process.get('terminal'))} but the IO's terminal is {io.terminal}"
                )
            if not rootfs and self.info.snapshot_key:
                snapshots = self.client.stores.with_snapshotter(self.info.snapshotter).snapshots
                rootfs = await snapshots.mounts(self.info.snapshot_key)
            options = None
            if restore_from is not None or runtime_options is not None:
                # Task options replace the container's: start from those.
                base = runtime_options or self.info.runtime_options or RuncOptions()
                options = _wire.runc_options(base, criu_image_path=restore_from or "")
            request = tasks_pb.CreateTaskRequest(
                container_id=self.id,
                stdin=io.stdin,
                stdout=io.stdout,
                stderr=io.stderr,
                terminal=io.terminal,
                options=options,
                rootfs=[m.to_wire() for m in rootfs],
            )
            # Interrupting Create leaves containerd half-way (a bundle, maybe a
            # shim), so it runs to its end; a cancellation is honoured after.
            with anyio.CancelScope(shield=True), anyio.fail_after(CREATE_TIMEOUT):
                reply = await self._create_recovering(request)
            created = True
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException as exc:
            if isinstance(exc, Unavailable):
                self.client.outage_seen = True
            with anyio.CancelScope(shield=True):
                if created or isinstance(exc, Unavailable | TimeoutError):
                    await self._discard_task()
                await io.aclose()
            raise
        io.process_ready()
        return Task(self, reply.pid, io)

    async def _create_recovering(self, request: tasks_pb.CreateTaskRequest) -> Any:
        """Create, clearing what a killed containerd left of an earlier task of
        this id: a task it lost (AlreadyExists), a dead bundle (which the lost
        task's delete can itself leave), runc's state of a lost container, each
        at most once."""
        ghost_cleared = bundle_cleared = runc_cleared = False
        while True:
            try:
                return await self._create_task(request)
            except AlreadyExists:
                if ghost_cleared or not await self._clear_ghost_task():
                    raise
                ghost_cleared = True
            except ContainerdError as exc:
                if RUNC_EXISTS_ERROR in str(exc):
                    if runc_cleared or not await self._clear_runc_state(exc):
                        raise
                    runc_cleared = True
                elif bundle_cleared or not await self._clear_dead_bundle(exc):
                    raise
                else:
                    bundle_cleared = True

    async def _create_task(self, request: tasks_pb.CreateTaskRequest) -> Any:
        with map_errors(f"create task {self.id}"):
            return await self.client._tasks_stub.create(request)

    async def _clear_ghost_task(self) -> bool:
        """Whether a task that containerd cannot show but will not replace was
        cleared. A containerd killed in the middle of creating a task comes
        back with its bundle and shim but without the task: Get says NotFound
        and Create AlreadyExists, for ever. Delete still reaches the bundle: it
        stops that shim and removes the bundle."""
        if await self._task_known():
            return False  # a task containerd shows: the caller decides about it
        log.info("container %s: clearing a task containerd lost (it died mid-create)", self.id)
        await self._delete_lost_task()
        state = self.client.containerd_state
        await anyio.to_thread.run_sync(
            settle_lost_task, Path(state[0]) if state else None, self.client.namespace, self.id
        )
        return True

    async def _task_known(self) -> bool:
        try:
            with map_errors(f"get task {self.id}"):
                await self.client._tasks_stub.get(tasks_pb.GetRequest(container_id=self.id))
        except NotFound:
            return False
        return True

    async def _delete_lost_task(self) -> None:
        """Delete reaches a task containerd cannot show (it answers NotFound
        all the same): it stops that shim and removes the bundle."""
        await self._clear_half_deleted()
        with contextlib.suppress(NotFound), map_errors(f"delete lost task {self.id}"):
            await self.client._tasks_stub.delete(tasks_pb.DeleteTaskRequest(container_id=self.id))

    async def _clear_half_deleted(self) -> None:
        state = self.client.containerd_state
        if state is None:
            return
        where = (Path(state[0]), Path(state[1]), self.client.namespace, self.id)
        if half_deleted(*where):  # rare: only then scan /proc (and maybe stop a shim)
            await anyio.to_thread.run_sync(clear_half_deleted, *where)

    async def _clear_dead_bundle(self, exc: ContainerdError) -> bool:
        state = self.client.containerd_state
        if DEAD_BUNDLE_ERROR not in str(exc):
            return False
        if state is None:
            log.error(
                "container %s: containerd keeps a dead task bundle (%s); give the Client "
                "containerd_state, or remove it by hand",
                self.id,
                exc,
            )
            return False
        if await self._task_known():
            return False  # containerd serves a task for it: not a dead bundle
        return await anyio.to_thread.run_sync(
            clear_for_create, Path(state[0]), Path(state[1]), self.client.namespace, self.id
        )

    async def _clear_runc_state(self, exc: ContainerdError) -> bool:
        """runc kept the state of a container of this id that containerd lost
        (its shim was killed mid-create, or containerd's clean-up after it gave
        up): remove it with runc's own clean-up, only when this client manages
        containerd's state (``containerd_state``) and containerd has no task."""
        if self.client.containerd_state is None:
            log.error(
                "container %s: runc keeps a lost container's state (%s); give the "
                "Client containerd_state, or `runc delete --force` it",
                self.id,
                exc,
            )
            return False
        if await self._task_known():
            return False
        log.info("container %s: removing runc's state of a container containerd lost", self.id)
        state = Path(self.client.containerd_state[0])
        return await anyio.to_thread.run_sync(
            clear_runc_state, state, self.client.namespace, self.id
        )

    async def _discard_task(self) -> None:
        # Best effort: the task may never have existed.
        with anyio.move_on_after(DISCARD_TIMEOUT), contextlib.suppress(Exception):
            await self.client._tasks_stub.delete(tasks_pb.DeleteTaskRequest(container_id=self.id))

    async def task(self, io: ProcessIO | None = None) -> Task:
        """A handle on the existing task; ``NotFound`` if there is none."""
        self.client._check_open()
        with map_errors(f"get task {self.id}"):
            reply = await self.client._tasks_stub.get(tasks_pb.GetRequest(container_id=self.id))
        assert reply.process is not None
        return Task(self, reply.process.pid, io or NullIO())
