"""The control API: a gRPC service on a unix socket, for the CLI and other programs.

The socket is created 0660, owned by root and the configured group; every
call's peer is checked with SO_PEERCRED and refused unless it is root or in
that group.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import math
import os
import signal
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import grpclib.const
import grpclib.server
from grpclib.encoding.proto import ProtoCodec
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError

from .. import __version__
from .._messages import _varint
from .._messages import new as new_message
from .._proto.supervisor import v1 as pb
from .._units import parse_signal
from ..client import ContainerInfo, FifoIO, Mount, ProcessState, TaskStatus, validate_id
from ..client._spec import parse_user
from ..errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SupervisorError,
    one_line,
    to_grpc,
)
from ..net import DEFAULT_NETWORK, Mode, parse_port
from ..net._ports import check_ports
from ._definitions import (
    ENV_NAME_RULE,
    MAX_CPUS,
    MAX_PIDS,
    MIN_CPUS,
    PULL_POLICIES,
    ContainerDefinition,
    directory_problem,
)
from ._groups import validate_group
from ._images import lookup_user, normalize_image
from ._labels import (
    COMMAND,
    EXIT_CODE,
    FINISHED_AT,
    LOG_PATH,
    MANAGED,
    MANAGED_FILTER,
    NETWORK,
    POLICY,
    PREFIX,
    ROOTFS,
    SHIM_GROUP,
    SOURCE,
    STARTED_AT,
    timestamp,
)
from ._logs import iter_records, next_batch
from ._names import pick_name
from ._output import FOLLOWER_LIMIT, Follower, Listener
from ._plan import lenient_state
from ._policy import RestartPolicy
from ._sockdir import prepare_socket_dir as prepare_socket_dir

if TYPE_CHECKING:
    from ._daemon import Daemon

log = logging.getLogger("supervisor.control")

#: Buffered items per `events` client (small: a few MiB at most) or attached `run` client
#: before it is dropped; a `logs -f` client is bounded by bytes (_output.FOLLOWER_LIMIT).
LISTENER_BUFFER = 4096
#: How long an attached call waits for its client to close after the exit code.
CLIENT_CLOSE_TIMEOUT = 5.0


_STOPPING_SIGNALS = frozenset(
    {int(signal.SIGKILL), int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGQUIT)}
)


@contextlib.contextmanager
def _status() -> Iterator[None]:
    try:
        yield
    except SupervisorError as exc:
        raise to_grpc(exc) from exc
    except TimeoutError as exc:  # a bound of the daemon's own (containerd did not answer)
        raise GRPCError(
            grpclib.const.Status.DEADLINE_EXCEEDED, "timed out; is containerd answering?"
        ) from exc
    except BaseExceptionGroup as group:
        # An error from inside a task group: report the first of ours as a status.
        matched, _ = group.split(SupervisorError)
        if matched is None:
            raise
        first = matched.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        assert isinstance(first, SupervisorError)
        raise to_grpc(first) from group


def _signal(value: str) -> int:
    return parse_signal(value.strip() or "SIGKILL")


def _ts(text: str | None) -> datetime | None:
    seconds = timestamp(text)
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MAX = (1 << 63) - 1


def _unix_nanos(when: datetime | None) -> int:
    """A time as the API's int64 Unix nanoseconds; 0 for none (or before 1970)."""
    if when is None:
        return 0
    nanos = (when - _EPOCH) // timedelta(microseconds=1) * 1000
    return min(max(nanos, 0), _INT64_MAX)


def _from_unix_nanos(nanos: int) -> datetime | None:
    """The other way, for a request's time: 0 (or less) is none."""
    if nanos <= 0:
        return None
    return _EPOCH + timedelta(microseconds=nanos // 1000)


class ControlService(pb.ControlBase):  # type: ignore[misc]
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._reserved: set[str] = set()

    # -- helpers -----------------------------------------------------------------

    async def _info(self, cid: str) -> pb.ContainerInfo:
        client = self.daemon.client
        container = await client.load_container(cid)
        if container.info.labels.get(MANAGED) != "true":
            raise NotFound(f"container {cid} is not managed by this daemon")
        try:
            task = await client.process_state(cid)
        except NotFound:
            task = None
        return self._info_of(cid, container.info.labels, task, container.info.image)

    def _info_of(
        self, cid: str, labels: Mapping[str, str], task: ProcessState | None, image: str = ""
    ) -> pb.ContainerInfo:
        return pb.ContainerInfo(**self._info_fields(cid, labels, task, image))

    def _info_fields(
        self, cid: str, labels: Mapping[str, str], task: ProcessState | None, image: str = ""
    ) -> dict[str, Any]:
        state = lenient_state(labels)
        status = _status_of(task)
        pid = task.pid if task is not None and task.status is not TaskStatus.STOPPED else 0
        exit_code = labels.get(EXIT_CODE)
        return dict(
            id=cid,
            status=status,
            pid=pid,
            restart=labels.get(POLICY, "no"),
            restart_count=state.restart_count,
            exit_code=int(exit_code) if exit_code and exit_code.isdigit() else 0,
            exited=exit_code is not None,
            started_at_unix_nanos=_unix_nanos(_ts(labels.get(STARTED_AT))),
            finished_at_unix_nanos=_unix_nanos(_ts(labels.get(FINISHED_AT))),
            source=labels.get(SOURCE, "definitions"),
            command=_json_list(labels.get(COMMAND)),
            rootfs=labels.get(ROOTFS, ""),
            labels={k: v for k, v in labels.items() if not k.startswith(PREFIX)},
            manually_stopped=state.manually_stopped,
            oom_kills=state.oom_kills,
            log_path=labels.get(LOG_PATH, ""),
            problem=self.daemon.problems.get(cid, ""),
            image=image,
            shim_group=labels.get(SHIM_GROUP, ""),
            **self._network_fields(cid, labels),
        )

    def _network_fields(self, cid: str, labels: Mapping[str, str]) -> dict[str, Any]:
        attachment = self.daemon.attachment(cid)
        if attachment is None:
            return {"network": labels.get(NETWORK, "")}
        return {
            "network": str(attachment.mode),
            "address": attachment.address,
            "ports": [str(p) for p in attachment.ports],
        }

    def _managed(self, cid: str) -> None:
        if cid not in self.daemon.definitions:
            raise NotFound(f"no container {cid!r} (supervisor ps lists them)")

    # -- unary calls ---------------------------------------------------------------

    async def version(self, message: pb.VersionRequest) -> pb.VersionResponse:
        with _status():
            v = await self.daemon.client.version()
        return pb.VersionResponse(
            version=__version__,
            containerd_version=v.version,
            containerd_revision=v.revision,
            namespace=self.daemon.config.namespace,
        )

    async def list(self, message: pb.ListRequest) -> Encoded:
        # From the daemon's view of its containers (see _view): what is fresh
        # costs no call, what is stale is read again (at most one listing of
        # containers and one of tasks, whatever their number).
        daemon = self.daemon
        with _status():
            current = await daemon.current()
        out = bytearray()
        wanted = ("running", "paused", "created")
        for cid, (info, task, entry) in current.items():
            if not message.all and _status_of(task) not in wanted:
                continue
            if entry is None:
                item = self._encode_info(cid, info, task)
            else:
                key = (daemon.problems.get(cid), daemon.attachment(cid))
                if entry.encoded is None or entry.encoded_key != key:
                    entry.encoded = self._encode_info(cid, info, task)
                    entry.encoded_key = key
                item = entry.encoded
            out += b"\x0a"  # ListResponse.containers, field 1, length-delimited
            out += _varint(len(item))
            out += item
        return Encoded(bytes(out))

    def _encode_info(self, cid: str, info: ContainerInfo, task: ProcessState | None) -> bytes:
        fields = self._info_fields(cid, info.labels, task, info.image)
        # Encoded by the CLI's codec: betterproto2 took ~0.2 ms a container here.
        return bytes(new_message("ContainerInfo", **fields))

    async def inspect(self, message: pb.ContainerRef) -> pb.ContainerInfo:
        with _status():
            self._managed(message.id)
            return await self._info(message.id)

    async def start(self, message: pb.ContainerRef) -> pb.ContainerInfo:
        with _status():
            cid = message.id
            self._managed(cid)
            await self.daemon.start_container(cid)
            return await self._info(cid)

    async def stop(self, message: pb.StopRequest) -> pb.ContainerInfo:
        with _status():
            self._managed(message.id)
            grace = message.timeout if message.has_timeout else None
            if grace is not None and not grace >= 0:  # NaN too
                raise InvalidArgument(f"timeout must be 0 or more seconds, not {grace}")
            await self.daemon.stop_container(message.id, grace=grace)
            return await self._info(message.id)

    async def kill(self, message: pb.KillRequest) -> pb.ContainerInfo:
        with _status():
            cid = message.id
            self._managed(cid)
            signum = _signal(message.signal)
            # A SIGHUP or SIGUSR1 is not a stop, nor a signal an attached client forwards.
            manual = signum in _STOPPING_SIGNALS and not message.proxy
            await self.daemon.kill_container(cid, signum, manual=manual)
            return await self._info(cid)

    async def remove(self, message: pb.RemoveRequest) -> pb.RemoveResponse:
        with _status():
            cid = message.id
            self._managed(cid)
            try:
                state = await self.daemon.client.process_state(cid)
            except NotFound:
                state = None
            if state is not None and state.status is not TaskStatus.STOPPED and not message.force:
                raise FailedPrecondition(
                    f"container {cid} is {state.status.value}; stop it first or use --force"
                )
            # `rm -f` kills at once, as `docker rm -f` does: no stop signal, no grace.
            await self.daemon.remove_container(cid, kill=message.force)
        return pb.RemoveResponse()

    async def pause(self, message: pb.ContainerRef) -> pb.ContainerInfo:
        with _status():
            self._managed(message.id)
            container = await self.daemon.client.load_container(message.id)
            try:
                await (await container.task()).pause()
            finally:
                self.daemon.view.touch(message.id)
            return await self._info(message.id)

    async def resume(self, message: pb.ContainerRef) -> pb.ContainerInfo:
        with _status():
            self._managed(message.id)
            container = await self.daemon.client.load_container(message.id)
            try:
                await (await container.task()).resume()
            finally:
                self.daemon.view.touch(message.id)
            return await self._info(message.id)

    async def stats_all(self, message: pb.StatsRequest) -> pb.StatsList:
        """Of the given containers, or of every running one: three calls in all."""
        client, known = self.daemon.client, self.daemon.definitions
        wanted = list(message.ids)
        with _status():
            for cid in wanted:
                self._managed(cid)
            containers = {c.id: c for c in await client.list_containers(MANAGED_FILTER)}
            metrics = await client.metrics()
        read_at = _unix_nanos(datetime.now(UTC))
        if not wanted:
            wanted = sorted(cid for cid in metrics if cid in known and cid in containers)
        replies, missing = [], []
        for cid in wanted:
            stats, container = metrics.get(cid), containers.get(cid)
            if stats is None or container is None:
                missing.append(cid)
                continue
            replies.append(pb.StatsResponse(
                id=cid, read_at_unix_nanos=read_at, cpu_total_ns=stats.cpu_total_ns,
                memory_usage=stats.memory_usage, memory_limit=stats.memory_limit or 0,
                pids_current=stats.pids_current, pids_limit=stats.pids_limit or 0,
                oom_kills=lenient_state(container.labels).oom_kills,
            ))  # fmt: skip
        await self._add_network_stats(replies)
        return pb.StatsList(stats=replies, not_running=missing)

    async def _add_network_stats(self, replies: Sequence[pb.StatsResponse]) -> None:
        async def read(reply: pb.StatsResponse) -> None:
            try:
                counters = await self.daemon.net.link_stats(reply.id)
            except (OSError, TimeoutError, SupervisorError) as exc:
                log.debug("no network counters for %s: %s", reply.id, exc)
                return
            if counters is not None:
                reply.net_rx_bytes, reply.net_tx_bytes = counters
                reply.has_network = True

        limit = anyio.Semaphore(16)

        async def bounded(reply: pb.StatsResponse) -> None:
            async with limit:
                await read(reply)

        async with anyio.create_task_group() as tg:
            for reply in replies:
                if self.daemon.attachment(reply.id) is not None:
                    tg.start_soon(bounded, reply)

    async def stats(self, message: pb.ContainerRef) -> pb.StatsResponse:
        with _status():
            self._managed(message.id)
            container = await self.daemon.client.load_container(message.id)
            stats = await (await container.task()).metrics()
            read_at = _unix_nanos(datetime.now(UTC))
            state = lenient_state(container.info.labels)
        reply = pb.StatsResponse(
            read_at_unix_nanos=read_at,
            id=message.id,
            cpu_total_ns=stats.cpu_total_ns,
            memory_usage=stats.memory_usage,
            memory_limit=stats.memory_limit or 0,
            pids_current=stats.pids_current,
            pids_limit=stats.pids_limit or 0,
            oom_kills=state.oom_kills,
        )
        await self._add_network_stats([reply])
        return reply

    # -- images --------------------------------------------------------------------

    async def pull(self, message: pb.PullRequest) -> AsyncIterator[pb.PullProgress]:
        """Pull an image, streaming each layer's progress (at most every 0.2 s
        a layer), then the image's name and digest."""
        from ..images import Platform, PullProgress, normalize

        with _status():
            name = normalize(message.ref)
            platform = Platform.parse(message.platform) if message.platform else None
        send, receive = anyio.create_memory_object_stream[pb.PullProgress](PULL_QUEUE)
        last: dict[str, float] = {}

        def progress(update: PullProgress) -> None:
            now = time.monotonic()
            final = update.status.value in ("downloaded", "unpacked", "exists")
            if not final and now - last.get(update.digest, 0.0) < PULL_PROGRESS_INTERVAL:
                return
            last[update.digest] = now
            with contextlib.suppress(anyio.WouldBlock):  # a slow client misses some
                send.send_nowait(pb.PullProgress(
                    digest=update.digest, status=update.status.value,
                    done=update.done, total=update.total,
                ))  # fmt: skip

        async def run() -> None:
            async with send, self.daemon.pulls.using():
                image = await self.daemon.pulls.pull(
                    self.daemon.client, name, platform=platform, progress=progress
                )
                await send.send(pb.PullProgress(image=image.name, image_digest=image.digest,
                                                done_image=True))  # fmt: skip

        with _status():
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(run)
                async for update in receive:
                    yield update

    async def image_list(self, message: pb.ImageListRequest) -> pb.ImageListResponse:
        from ..images import list_images

        with _status():
            images = await list_images(self.daemon.client)
            users = await self._image_users()
        return pb.ImageListResponse(images=[
            pb.ImageInfo(name=i.name, digest=i.digest, size=i.size,
                         created_unix_nanos=_unix_nanos(i.created_at),
                         containers=sorted(users.get(i.name, ())))
            for i in images
        ])  # fmt: skip

    async def _image_users(self) -> dict[str, set[str]]:
        users: dict[str, set[str]] = {}
        for info in await self.daemon.client.list_containers():
            if info.image:
                users.setdefault(info.image, set()).add(info.id)
        return users

    async def image_remove(self, message: pb.ImageRemoveRequest) -> pb.ImageRemoveResponse:
        from ..images import normalize, remove_image

        with _status():
            name = normalize(message.ref)
            users = (await self._image_users()).get(name)
            if users and not message.force:
                raise FailedPrecondition(
                    f"image {name} is used by {', '.join(sorted(users)[:10])}; "
                    "remove them first or use --force"
                )
            async with self.daemon.pulls.removing():  # no pull or create from images meanwhile
                await remove_image(self.daemon.client, name, sync=True)
        return pb.ImageRemoveResponse()

    async def image_prune(self, message: pb.ImagePruneRequest) -> pb.ImagePruneResponse:
        from ..images import prune_images

        with _status():
            async with self.daemon.pulls.removing():
                removed = await prune_images(self.daemon.client, sync=True)
        return pb.ImagePruneResponse(removed=removed)

    async def image_import(self, message: pb.ImageImportRequest) -> pb.ImageImportResponse:
        from ..images import import_archive

        with _status():
            path = Path(message.path)
            if not path.is_absolute():
                raise InvalidArgument(f"{message.path!r} must be an absolute path")
            base = message.name or None
            images = await import_archive(self.daemon.client, path, base_name=base)
        return pb.ImageImportResponse(names=[i.name for i in images])

    async def image_save(self, message: pb.ImageSaveRequest) -> pb.ImageSaveResponse:
        from ..images import save

        with _status():
            path = Path(message.path)
            if not path.is_absolute():
                raise InvalidArgument(f"{message.path!r} must be an absolute path")
            await save(self.daemon.client, message.ref, path)
        return pb.ImageSaveResponse()

    # -- networks ------------------------------------------------------------------

    def _network_info(self, name: str) -> pb.NetworkInfo:
        net = self.daemon.net
        network = net.network(name)
        members = sorted(net.members(name), key=lambda a: a.container_id)
        return pb.NetworkInfo(
            name=network.name,
            subnet=str(network.subnet),
            gateway=str(network.gateway),
            bridge=network.bridge,
            containers=[pb.NetworkMember(id=a.container_id, address=a.address) for a in members],
            created_unix_nanos=int(network.created * 1e9),
        )

    async def network_create(self, message: pb.NetworkCreateRequest) -> pb.NetworkInfo:
        with _status():
            async with self.daemon.network_lock:
                network = self.daemon.net.create_network(message.name, message.subnet or None)
            return self._network_info(network.name)

    async def network_list(self, message: pb.NetworkListRequest) -> pb.NetworkListResponse:
        names = sorted(self.daemon.net.networks)
        return pb.NetworkListResponse(networks=[self._network_info(n) for n in names])

    async def network_inspect(self, message: pb.NetworkRef) -> pb.NetworkInfo:
        with _status():
            return self._network_info(message.name)

    async def network_remove(self, message: pb.NetworkRef) -> pb.NetworkRemoveResponse:
        with _status():
            if message.name == DEFAULT_NETWORK:
                raise FailedPrecondition(f"the default network {DEFAULT_NETWORK} cannot be removed")
            async with self.daemon.network_lock:
                await self.daemon.net.remove_network(message.name)
        return pb.NetworkRemoveResponse()

    async def apply(self, message: pb.ApplyRequest) -> pb.ApplyResponse:
        directory = Path(message.directory)
        problem = (
            await anyio.to_thread.run_sync(directory_problem, directory)
            if directory.is_absolute()
            else f"{str(directory)!r} is not an absolute path"
        )
        if problem:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, one_line(problem))
        # Carried through when the client goes (each of its steps is bounded):
        # half a reload would leave removed definitions running until the next.
        done = await self.daemon.carried(lambda: self.daemon.apply(directory))
        return pb.ApplyResponse(done.created, done.replaced, done.removed, done.errors)

    async def reload(self, message: pb.ReloadRequest) -> pb.ApplyResponse:
        done = await self.daemon.carried(self.daemon.reload)  # as apply's
        return pb.ApplyResponse(done.created, done.replaced, done.removed, done.errors)

    # -- streams -------------------------------------------------------------------

    async def logs(self, message: pb.LogsRequest) -> AsyncIterator[pb.LogRecord]:
        cid = message.id
        with _status():
            self._managed(cid)
        if message.has_tail and message.tail < 0:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "--tail must be 0 or more")
        daemon = self.daemon
        follower = Follower()
        listeners: set[Listener] = set()
        follow = message.follow and daemon.is_running(cid)  # nothing to follow otherwise
        if follow:
            listeners = daemon.output_listeners.setdefault(cid, set())
            listeners.add(follower)  # before the files are read: nothing falls in between
        path = daemon.config.log_dir / f"{cid}.log"
        # Streamed from a thread a batch at a time: the call holds one batch, not the files.
        records = iter_records(path, tail=message.tail if message.has_tail else None)
        since = _from_unix_nanos(message.since_unix_nanos)
        last: datetime | None = None
        try:
            with follower:
                while batch := await anyio.to_thread.run_sync(next_batch, records):
                    for record in batch:
                        when = _ts(record["time"].replace("Z", "+00:00"))
                        if since is not None and when is not None and when < since:
                            continue
                        last = when
                        yield pb.LogRecord(
                            time_unix_nanos=_unix_nanos(when),
                            stream=record["stream"],
                            line=record["log"].encode(),
                            partial=bool(record.get("partial")),
                        )
                records.close()
                if not follow:
                    return
                async for when, stream, chunk in follower:
                    if last is not None and when <= last:
                        continue  # already in the file we just read
                    yield pb.LogRecord(time_unix_nanos=_unix_nanos(when), stream=stream, line=chunk)
        finally:
            # A client gone while a batch is read: grpclib's cancellation can
            # end the wait while the worker thread still runs the reader (its
            # files then close when it is collected, not here).
            with contextlib.suppress(ValueError):  # "generator already executing"
                records.close()
            listeners.discard(follower)
        if follower.dropped:
            raise GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"log follower too slow, dropped: more than {FOLLOWER_LIMIT >> 20} MiB "
                "of output behind",
            )

    async def events(self, message: pb.EventsRequest) -> AsyncIterator[pb.Event]:
        send, receive = anyio.create_memory_object_stream[Any](LISTENER_BUFFER)
        self.daemon.event_listeners.add(send)
        with receive:
            async for cid, event_type, event in receive:
                code = getattr(event, "exit_status", None)
                yield pb.Event(
                    time_unix_nanos=_unix_nanos(event.timestamp or datetime.now(UTC)),
                    container_id=cid,
                    type=event_type.value,
                    exec_id=getattr(event, "exec_id", None) or "",
                    pid=getattr(event, "pid", 0),
                    exit_code=code or 0,
                    has_exit_code=code is not None,
                )

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = super().__mapping__()
        mapping["/supervisor.v1.Control/Run"] = grpclib.const.Handler(
            self._run, grpclib.const.Cardinality.STREAM_STREAM, pb.RunInput, pb.RunOutput
        )
        mapping["/supervisor.v1.Control/Exec"] = grpclib.const.Handler(
            self._exec, grpclib.const.Cardinality.STREAM_STREAM, pb.ExecInput, pb.ExecOutput
        )
        return mapping

    async def _run(self, stream: grpclib.server.Stream[pb.RunInput, pb.RunOutput]) -> None:
        first = await stream.recv_message()
        if first is None or first.request is None or first.request.definition is None:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "the first input is the request")
        request = first.request
        with _status():
            if not request.definition.id:
                taken = _Taken(self.daemon.definitions, self._reserved)
                request.definition.id = pick_name(taken)
            definition = _definition(request.definition)
            if definition.id in self.daemon.definitions or definition.id in self._reserved:
                raise AlreadyExists(f"container {definition.id} already exists")
            self._reserved.add(definition.id)  # before any await: two runs, one winner
            try:
                io, follower, exited = await self._create_for_run(definition, request)
            finally:
                self._reserved.discard(definition.id)
        await stream.send_message(pb.RunOutput(started=await self._info_or_gone(definition.id)))
        if not request.attach:
            return
        await self._attach(stream, io, follower, exited, definition.id, remove=request.remove)

    async def _create_for_run(self, definition: ContainerDefinition, request: pb.RunRequest) -> Any:
        listeners: set[Listener] = set()
        follower = Follower()  # bounded by bytes: a slow client is dropped, not buffered
        if request.attach:
            listeners.add(follower)
            self.daemon.output_listeners[definition.id] = listeners
        exited = self.daemon.exit_waiter(definition.id)
        assert request.definition is not None
        try:
            io = await self.daemon.run_container(
                definition, remove=request.remove, stdin=request.definition.stdin
            )
        except BaseException:  # nothing will follow or wait: leave nothing behind
            if self.daemon.output_listeners.get(definition.id) is listeners:
                del self.daemon.output_listeners[definition.id]
            self.daemon.drop_exit_waiter(definition.id, exited)
            raise
        return io, follower, exited

    async def _info_or_gone(self, cid: str) -> pb.ContainerInfo:
        """A container made with --rm may be gone already: say so, don't fail."""
        try:
            return await self._info(cid)
        except NotFound:
            return pb.ContainerInfo(id=cid, status="removed")

    async def _attach(
        self,
        stream: Any,
        io: FifoIO | None,
        follower: Follower,
        exited: anyio.Event,
        cid: str,
        *,
        remove: bool = False,
    ) -> None:
        inputs_done = anyio.Event()
        dropped = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._forward_input, stream, io, cid, None, inputs_done)
            with follower:
                async for _when, name, chunk in follower:
                    if name == "stdout":
                        await stream.send_message(pb.RunOutput(stdout=chunk))
                    else:
                        await stream.send_message(pb.RunOutput(stderr=chunk))
            if follower.dropped:
                tg.cancel_scope.cancel()
                dropped = True
            # The output may end long before the process (it closed its
            # stdout): wait for the exit as `docker run` does, for as long as
            # the client stays (grpclib cancels this call when it goes).
            await exited.wait()
            if remove:  # as `docker run --rm`: back once it is gone (its ports free again)
                await self._gone(cid)
            await stream.send_message(pb.RunOutput(exit_code=self.daemon.last_exit.get(cid, 255)))
            await _client_done(inputs_done)
            tg.cancel_scope.cancel()
        if dropped:
            raise GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"client too slow, detached: more than {FOLLOWER_LIMIT >> 20} MiB of output "
                f"behind; {cid} goes on and its output is in its log (supervisor logs {cid})",
            )

    async def _gone(self, cid: str) -> None:
        """Wait (bounded) until the daemon has removed a container."""
        with anyio.move_on_after(REMOVE_WAIT):
            while cid in self.daemon.definitions:
                waiter = self.daemon.exit_waiter(cid)  # set when it goes, too
                if cid not in self.daemon.definitions:
                    self.daemon.drop_exit_waiter(cid, waiter)
                    break
                await waiter.wait()

    async def _forward_input(
        self, stream: Any, io: FifoIO | None, cid: str, proc: Any, done: anyio.Event
    ) -> None:
        try:
            await self._forward(stream, io, cid, proc)
        finally:
            done.set()

    async def _forward(self, stream: Any, io: FifoIO | None, cid: str, proc: Any) -> None:
        async for item in stream:
            if item.stdin is not None and io is not None and io.stdin_writer is not None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await io.stdin_writer.send(item.stdin)
            elif item.close_stdin:
                target = proc if proc is not None else self.daemon._tasks.get(cid)
                if target is not None:
                    with contextlib.suppress(SupervisorError):
                        await target.close_stdin()
            elif item.resize is not None:
                target = proc if proc is not None else self.daemon._tasks.get(cid)
                if target is not None:
                    with contextlib.suppress(SupervisorError):
                        await target.resize(item.resize.width, item.resize.height)

    async def _exec(self, stream: grpclib.server.Stream[pb.ExecInput, pb.ExecOutput]) -> None:
        first = await stream.recv_message()
        if first is None or first.start is None:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "the first input is the start")
        start = first.start
        with _status():
            self._managed(start.id)
            container = await self.daemon.client.load_container(start.id)
            task = await container.task()
            exec_id = f"exec-{os.urandom(4).hex()}"
            process = dict(container.info.spec.get("process") or {})
            process["args"] = list(start.command)
            process["terminal"] = start.terminal
            if start.env:
                extra = [f"{k}={v}" for k, v in start.env.items()]
                process["env"] = [*process.get("env", []), *extra]
            if start.cwd:
                process["cwd"] = start.cwd
            if start.user and container.info.snapshot_key:
                # Names from the container's own snapshot (in a thread: files).
                from ..images import rootfs_mounts

                mounts = await rootfs_mounts(self.daemon.client, start.id)
                user = await anyio.to_thread.run_sync(lookup_user, mounts, start.user)
                process["user"] = parse_user(user)
            elif start.user:
                rootfs = (container.info.spec.get("root") or {}).get("path")
                # In a thread: it reads the container's own /etc/passwd.
                process["user"] = await anyio.to_thread.run_sync(
                    parse_user, start.user, Path(rootfs) if rootfs else None
                )
            if start.terminal and start.size is not None and start.size.width:
                # The first size is in place before the process runs.
                process["consoleSize"] = {"height": start.size.height, "width": start.size.width}
            # Named after the exec alone: the container's id may already be 76 characters.
            io = self.daemon.client.new_fifo_io(exec_id, stdin=start.stdin, terminal=start.terminal)
            proc = None
            try:
                proc = await task.exec(exec_id, process, io)  # refused: its FIFOs go too
                await proc.start()
                inputs_done = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._forward_input, stream, io, start.id, proc, inputs_done)
                    async with anyio.create_task_group() as outputs:
                        for name, reader in (
                            ("stdout", io.stdout_reader),
                            ("stderr", io.stderr_reader),
                        ):
                            if reader is not None:
                                outputs.start_soon(_send_output, stream, name, reader)
                    status = await proc.wait()
                    await stream.send_message(pb.ExecOutput(exit_code=status.code))
                    await _client_done(inputs_done)
                    tg.cancel_scope.cancel()
            finally:
                # The client may have gone mid-call: end the process, then delete
                # it, and release its FIFOs whatever happens.
                with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                    if proc is not None:
                        with contextlib.suppress(SupervisorError):
                            if (await proc.status()).status is not TaskStatus.STOPPED:
                                await proc.kill(signal.SIGKILL)
                                await proc.wait()
                        with contextlib.suppress(SupervisorError):
                            await proc.delete()
                    await io.aclose()


async def _client_done(inputs_done: anyio.Event) -> None:
    """Give the client a moment to half-close after the exit code: ending the
    call before that makes grpclib reset the stream under the last message."""
    with anyio.move_on_after(CLIENT_CLOSE_TIMEOUT):
        await inputs_done.wait()


async def _send_output(stream: Any, name: str, reader: Any) -> None:
    async for chunk in reader:
        out = pb.ExecOutput(stdout=chunk) if name == "stdout" else pb.ExecOutput(stderr=chunk)
        await stream.send_message(out)


class _Taken:
    """The ids in use: the daemon's containers and the ids of runs under way."""

    def __init__(self, *sets: Any) -> None:
        self._sets = sets

    def __contains__(self, cid: object) -> bool:
        return any(cid in s for s in self._sets)


#: Progress updates queued for a pull's client; a slower one misses some.
PULL_QUEUE = 256
#: The most often one layer's progress is sent.
PULL_PROGRESS_INTERVAL = 0.2
#: How long an attached `run --rm` waits for its container's removal after the exit.
REMOVE_WAIT = 60.0


def _status_of(task: ProcessState | None) -> str:
    if task is None:
        return "stopped"
    return "exited" if task.status is TaskStatus.STOPPED else task.status.value


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _definition(d: pb.Definition) -> ContainerDefinition:
    """The definition of a Run, checked as a definition file's would be (what
    the OCI spec checks is left to it). Zero values mean the defaults."""
    validate_id(d.id, "container id")
    if d.image and d.rootfs:
        raise InvalidArgument("give either an image or a rootfs, not both")
    if not d.rootfs and not d.image:
        raise InvalidArgument("an image or a rootfs directory (--rootfs) is needed")
    problem = directory_problem(Path(d.rootfs)) if d.rootfs.startswith("/") else None
    if problem:
        raise InvalidArgument(f"rootfs {problem}")
    if not d.command and not d.image:
        raise InvalidArgument("a command is needed")
    if d.pull and d.pull not in PULL_POLICIES:
        raise InvalidArgument(f"pull must be one of {', '.join(PULL_POLICIES)}, not {d.pull!r}")
    if d.has_entrypoint and d.entrypoint and not d.entrypoint[0]:
        raise InvalidArgument("the entrypoint must not start with an empty string")
    if any(key.startswith(PREFIX) for key in d.labels):
        raise InvalidArgument(f"labels under {PREFIX} are the daemon's own")
    if any(not name or "=" in name or "\0" in name for name in d.env):
        raise InvalidArgument(ENV_NAME_RULE)
    if d.stop_timeout and not 0 < d.stop_timeout < math.inf:
        raise InvalidArgument(f"stop timeout must be a positive number, not {d.stop_timeout}")
    if d.cpus and not MIN_CPUS <= d.cpus <= MAX_CPUS:
        raise InvalidArgument(f"cpus must be from {MIN_CPUS:g} to {MAX_CPUS:g}, not {d.cpus}")
    if d.network:
        Mode.parse(d.network)
    if d.pids > MAX_PIDS:
        raise InvalidArgument(f"pids must be at most {MAX_PIDS} (the kernel's limit), not {d.pids}")
    given = {"command": bool(d.command), "user": bool(d.user), "cwd": bool(d.cwd),
             "stop_signal": bool(d.stop_signal)}  # fmt: skip
    return ContainerDefinition(
        id=d.id,
        rootfs=Path(d.rootfs) if d.rootfs else None,
        image=normalize_image(d.image) if d.image else "",
        pull=d.pull or "missing",
        entrypoint=tuple(d.entrypoint) if d.has_entrypoint else None,
        explicit=frozenset(key for key, was in given.items() if was),
        command=tuple(d.command),
        env=dict(d.env),
        user=d.user or "0:0",
        cwd=d.cwd or "/",
        restart=RestartPolicy.parse(d.restart or "no"),
        stop_signal=_signal(d.stop_signal or "SIGTERM"),
        stop_timeout=d.stop_timeout or 10.0,
        memory=d.memory or None,
        cpus=d.cpus or None,
        pids=d.pids or None,
        mounts=tuple(
            Mount(m.source, m.destination, options=("rbind", "ro" if m.readonly else "rw"))
            for m in d.mounts
        ),
        labels=dict(d.labels),
        terminal=d.terminal,
        network=d.network or None,
        ports=check_ports(parse_port(p) for p in d.ports),
        shim_group=validate_group(d.shim_group) if d.shim_group else "",
        source=Path("<api>"),
    )


_INTEGERS = frozenset(
    {"int32", "int64", "uint32", "uint64", "sint32", "sint64"}
    | {"fixed32", "fixed64", "sfixed32", "sfixed64", "enum"}
)
_SCALARS: dict[str, type] = {"string": str, "bytes": bytes, "bool": bool}
_SCALARS |= {"double": float, "float": float}


class Encoded:
    """A reply already in wire form, sent as it is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class StrictCodec(ProtoCodec):
    """Protobuf, refusing requests the handlers cannot trust: betterproto
    decodes a field sent with another wire type as whatever it got (an int
    for a string, None, a list), and fails on bad UTF-8 with a UnicodeDecodeError.
    A reply may come already encoded (:class:`Encoded`)."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        data: bytes = super().encode(message, message_type)
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        what = getattr(message_type, "__name__", "request")
        try:
            message = super().decode(data, message_type)
        except Exception as exc:  # whatever the decoder trips on: the bytes are wrong
            raise GRPCError(
                grpclib.const.Status.INVALID_ARGUMENT, one_line(f"malformed {what}: {exc}")
            ) from None
        problem = _ill_typed(message)
        if problem:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"malformed {what}: {problem}")
        return message


def _ill_typed(message: Any, prefix: str = "") -> str | None:
    """The first field of ``message`` whose value is not of its declared type."""
    meta = message._betterproto
    for name, field in meta.meta_by_field_name.items():
        value = getattr(message, name)
        where = f"{prefix}{name}"
        if field.map_meta is not None:  # the maps of this API are of scalars
            key, val = (entry.proto_type for entry in field.map_meta)
            ok = isinstance(value, dict) and all(
                _is(k, key, object) and _is(v, val, object) for k, v in value.items()
            )
            if not ok:
                return f"{where} is not a map of {key} to {val}"
            continue
        expected = meta.cls_by_field[name]
        items = value if field.repeated else [value]
        if not isinstance(items, list):
            return f"{where} is not a list"
        for item in items:
            if (
                item is None
                and not field.repeated
                and (field.optional or field.proto_type == "message")
            ):
                continue  # not set
            if not _is(item, field.proto_type, expected):
                return f"{where} is not of type {field.proto_type}"
            if field.proto_type == "message" and field.unwrap is None:
                problem = _ill_typed(item, f"{where}.")
                if problem:
                    return problem
    return None


def _is(value: Any, proto_type: str, expected: type) -> bool:
    if proto_type in _INTEGERS:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _SCALARS.get(proto_type, expected))


async def serve(
    daemon: Daemon,
    path: Path,
    group: str | None,
    *,
    observe: Callable[[RecvRequest], None] | None = None,
) -> grpclib.server.Server:
    """Start the control server on ``path`` (0660, root:group); peers are checked."""
    gid = grp.getgrnam(group).gr_gid if group else None
    server = grpclib.server.Server([ControlService(daemon)], codec=StrictCodec())

    async def check_peer(event: RecvRequest) -> None:
        uid, gids = _peer(event)
        if uid == 0 or (gid is not None and gid in gids):
            return

        async def refuse(stream: Any) -> None:
            raise GRPCError(
                grpclib.const.Status.PERMISSION_DENIED,
                "permission denied: the control socket is for root"
                + (f" and group {group}" if group else ""),
            )

        event.method_func = refuse

    listen(server, RecvRequest, check_peer)
    if observe is not None:

        async def observed(event: RecvRequest) -> None:
            observe(event)

        listen(server, RecvRequest, observed)
    prepare_socket_dir(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket (or anything else: the name is ours)
    # Made with the process's umask (peers are checked anyway), then set to
    # 0660 root:group through a handle on what bind made, so that nothing put
    # in its place meanwhile is followed.
    await server.start(path=str(path))
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise SupervisorError(f"control socket {path} was replaced while being made")
            handle = f"/proc/self/fd/{fd}"
            os.chown(handle, 0, gid if gid is not None else 0)
            os.chmod(handle, 0o660)
        finally:
            os.close(fd)
    except BaseException:
        server.close()
        raise
    return server


def _peer(event: RecvRequest) -> tuple[int, set[int]]:
    sock = event.peer._transport.get_extra_info("socket")
    if sock is None:
        return -1, set()
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    groups = {gid}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                groups |= {int(g) for g in line.split()[1:]}
    return uid, groups
