"""containerd's snapshots of one snapshotter, and its diff service that
applies a layer onto a snapshot's mounts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
from grpclib.client import Channel

from .._proto.containerd.services.diff import v1 as diff_pb
from .._proto.containerd.services.snapshots import v1 as snapshots_pb
from ..errors import NotFound, map_errors
from ._store_types import Descriptor, RootfsMount, SnapshotInfo
from ._types import DEFAULT_SNAPSHOTTER

#: Bound on a snapshot call (a Remove of a big snapshot deletes its files).
CALL_TIMEOUT = 60.0
#: Bound on applying one layer: containerd decompresses and untars it.
APPLY_TIMEOUT = 600.0


class Snapshots:
    """The snapshots of one snapshotter in one namespace (and lease)."""

    def __init__(
        self, channel: Channel, metadata: Mapping[str, str], snapshotter: str = DEFAULT_SNAPSHOTTER
    ) -> None:
        self.snapshotter = snapshotter
        self._stub = snapshots_pb.SnapshotsStub(channel, metadata=dict(metadata))

    async def prepare(
        self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None
    ) -> list[RootfsMount]:
        """A new writable snapshot ``key`` on top of committed ``parent``; its mounts."""
        request = snapshots_pb.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"prepare snapshot {key}"):
            reply = await self._stub.prepare(request)
        return [RootfsMount.from_wire(m) for m in reply.mounts]

    async def view(
        self, key: str, parent: str, *, labels: Mapping[str, str] | None = None
    ) -> list[RootfsMount]:
        """A read-only snapshot ``key`` of committed ``parent``; its mounts."""
        request = snapshots_pb.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"view snapshot {key}"):
            reply = await self._stub.view(request)
        return [RootfsMount.from_wire(m) for m in reply.mounts]

    async def mounts(self, key: str) -> list[RootfsMount]:
        """The mounts of an active or view snapshot."""
        request = snapshots_pb.MountsRequest(snapshotter=self.snapshotter, key=key)
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"get mounts of snapshot {key}"):
            reply = await self._stub.mounts(request)
        return [RootfsMount.from_wire(m) for m in reply.mounts]

    async def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None) -> None:
        """Commit active snapshot ``key`` as ``name`` (a layer's chain id)."""
        request = snapshots_pb.CommitSnapshotRequest(
            snapshotter=self.snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"commit snapshot {key} as {name}"):
            await self._stub.commit(request)

    async def remove(self, key: str) -> None:
        """Remove a snapshot; ``FailedPrecondition`` while it has children."""
        request = snapshots_pb.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"remove snapshot {key}"):
            await self._stub.remove(request)

    async def stat(self, key: str) -> SnapshotInfo:
        """The snapshot's record; ``NotFound`` if there is none."""
        request = snapshots_pb.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"stat snapshot {key}"):
            reply = await self._stub.stat(request)
        assert reply.info is not None
        return SnapshotInfo.from_wire(reply.info)

    async def exists(self, key: str) -> bool:
        """Whether snapshot ``key`` exists."""
        try:
            await self.stat(key)
        except NotFound:
            return False
        return True

    async def list(self, *filters: str) -> list[SnapshotInfo]:
        """Snapshots matching any of containerd's ``filters`` (all without)."""
        request = snapshots_pb.ListSnapshotsRequest(
            snapshotter=self.snapshotter, filters=list(filters)
        )
        out: list[SnapshotInfo] = []
        with anyio.fail_after(CALL_TIMEOUT), map_errors("list snapshots"):
            async for reply in self._stub.list(request):
                out += [SnapshotInfo.from_wire(info) for info in reply.info]
        return out

    async def usage(self, key: str) -> tuple[int, int]:
        """Disk use of the snapshot's own layer: (bytes, inodes)."""
        request = snapshots_pb.UsageRequest(snapshotter=self.snapshotter, key=key)
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"get usage of snapshot {key}"):
            reply = await self._stub.usage(request)
        return reply.size, reply.inodes


class Differ:
    """containerd's diff service: applies layers from its content store."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str]) -> None:
        self._stub = diff_pb.DiffStub(channel, metadata=dict(metadata))

    async def apply(self, layer: Descriptor, mounts: Sequence[RootfsMount]) -> Descriptor:
        """Unpack ``layer`` (tar, gzip or zstd, read from the content store)
        onto ``mounts``; the answer describes the uncompressed tar (its diff id)."""
        request = diff_pb.ApplyRequest(diff=layer.to_wire(), mounts=[m.to_wire() for m in mounts])
        with anyio.fail_after(APPLY_TIMEOUT), map_errors(f"apply layer {layer.digest}"):
            reply = await self._stub.apply(request)
        return Descriptor.from_wire(reply.applied)
