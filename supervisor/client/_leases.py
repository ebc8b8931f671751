"""Leases, and the set of store services (content, images, snapshots, diff)
whose calls may run under one."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
from grpclib.client import Channel

from .._proto.containerd.services.leases import v1 as leases_pb
from ..errors import NotFound, SupervisorError, map_errors
from ._content import ContentStore
from ._images import ImageStore
from ._snapshots import Differ, Snapshots
from ._types import DEFAULT_LEASE_EXPIRY, DEFAULT_SNAPSHOTTER
from ._wire import timestamp

log = logging.getLogger("supervisor.client")

#: A pull's lease expires on its own a day later, as containerd's Go client's does.
EXPIRE_LABEL = "containerd.io/gc.expire"
#: Bound on a lease call; a synchronous delete waits for a garbage collection.
CALL_TIMEOUT = 60.0


#: The start of the id of every lease this library makes.
LEASE_PREFIX = "supervisor-"
#: The leases of this process's open ``Stores.lease()`` blocks.
_IN_USE: set[str] = set()


def leases_in_use() -> frozenset[str]:
    """The ids of the leases this process's ``lease()`` blocks hold now: any
    other lease of ours is left over (a block whose delete failed while
    containerd was away, a process killed) and can go."""
    return frozenset(_IN_USE)


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease: what is made under it is kept from garbage collection."""

    id: str
    labels: Mapping[str, str]
    created_at: datetime | None


class Leases:
    """The leases of one namespace."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str]) -> None:
        self._stub = leases_pb.LeasesStub(channel, metadata=dict(metadata))

    async def create(
        self,
        lease_id: str | None = None,
        *,
        expire: timedelta | None = DEFAULT_LEASE_EXPIRY,
        labels: Mapping[str, str] | None = None,
    ) -> LeaseInfo:
        """A new lease (a random id if none given) that expires after ``expire``."""
        all_labels = dict(labels or {})
        if expire is not None:
            until = datetime.now(UTC) + expire
            all_labels[EXPIRE_LABEL] = until.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease_id = lease_id or f"{LEASE_PREFIX}{uuid.uuid4().hex}"
        request = leases_pb.CreateRequest(id=lease_id, labels=all_labels)
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"create lease {lease_id}"):
            reply = await self._stub.create(request)
        assert reply.lease is not None
        return _lease(reply.lease)

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """Delete the lease; with ``sync``, return after the garbage collection."""
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"delete lease {lease_id}"):
            await self._stub.delete(leases_pb.DeleteRequest(id=lease_id, sync=sync))

    async def list(self, *filters: str) -> list[LeaseInfo]:
        """Leases matching any of containerd's ``filters`` (all without)."""
        with anyio.fail_after(CALL_TIMEOUT), map_errors("list leases"):
            reply = await self._stub.list(leases_pb.ListRequest(filters=list(filters)))
        return [_lease(lease) for lease in reply.leases]

    async def collect_garbage(self) -> None:
        """Run containerd's garbage collection now and wait for it (the one
        way the API offers: delete a fresh lease synchronously)."""
        lease = await self.create(expire=None)
        await self.delete(lease.id, sync=True)


def _lease(lease: leases_pb.Lease) -> LeaseInfo:
    return LeaseInfo(id=lease.id, labels=dict(lease.labels), created_at=timestamp(lease.created_at))


class Stores:
    """containerd's content store, image records, snapshots and diff service
    for one namespace; calls made through a leased set (see
    :meth:`~supervisor.client.Client.lease`) carry the lease."""

    def __init__(
        self,
        channel: Channel,
        namespace: str,
        *,
        lease: str | None = None,
        snapshotter: str = DEFAULT_SNAPSHOTTER,
    ) -> None:
        metadata = {"containerd-namespace": namespace}
        if lease is not None:
            metadata["containerd-lease"] = lease
        self.namespace = namespace
        self.lease_id = lease
        self.content = ContentStore(channel, metadata)
        self.images = ImageStore(channel, metadata)
        self.snapshots = Snapshots(channel, metadata, snapshotter)
        self.diff = Differ(channel, metadata)
        self.leases = Leases(channel, metadata)
        self._channel = channel

    def with_snapshotter(self, snapshotter: str) -> Stores:
        """The same services for another snapshotter."""
        return Stores(self._channel, self.namespace, lease=self.lease_id, snapshotter=snapshotter)

    def with_lease(self, lease_id: str) -> Stores:
        """The same services with every call under an existing lease."""
        return Stores(self._channel, self.namespace, lease=lease_id,
                      snapshotter=self.snapshots.snapshotter)  # fmt: skip

    @asynccontextmanager
    async def lease(
        self, *, expire: timedelta | None = DEFAULT_LEASE_EXPIRY
    ) -> AsyncIterator[Stores]:
        """A new lease for the block: yields these services with every call
        under it; the lease is deleted at the end, whatever happens."""
        info = await self.leases.create(expire=expire)
        _IN_USE.add(info.id)
        try:
            yield Stores(
                self._channel, self.namespace, lease=info.id, snapshotter=self.snapshots.snapshotter
            )
        finally:
            _IN_USE.discard(info.id)
            with anyio.CancelScope(shield=True), anyio.move_on_after(CALL_TIMEOUT):
                try:
                    await self.leases.delete(info.id)
                except NotFound:
                    pass
                except SupervisorError as exc:
                    # It expires on its own; what it holds goes then.
                    log.warning("lease %s: not deleted: %s", info.id, exc)
