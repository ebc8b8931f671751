"""A container's own snapshot on top of an image's layers."""

from __future__ import annotations

import contextlib

from ..client import Client, ImageRecord, RootfsMount, Stores
from ..errors import InvalidArgument, NotFound
from ._manifest import Platform
from ._store import Image, resolve_image, stores_of
from ._unpack import unpack_image


async def prepare_rootfs(
    stores: Stores,
    container_id: str,
    image: str | ImageRecord | Image,
    *,
    platform: str | Platform | None = None,
    readonly: bool = False,
) -> list[RootfsMount]:
    """Make snapshot ``container_id`` (writable, or a read-only view) on the
    image's top layer, unpacking the image first if it is not; its mounts go
    to ``Container.new_task(rootfs=...)``.

    ``stores`` must be leased, and the container record made with
    ``snapshot_key=container_id`` before the lease ends: until then only the
    lease keeps the snapshot from garbage collection (and if the record is
    never made, the snapshot goes with the lease)::

        async with client.lease() as leased:
            mounts = await prepare_rootfs(leased, cid, "busybox")
            container = await client.create_container(cid, spec, snapshot_key=cid)
    """
    if not isinstance(stores, Stores) or stores.lease_id is None:
        raise InvalidArgument("prepare_rootfs needs leased stores (async with client.lease())")
    if not isinstance(image, Image):
        image = await resolve_image(stores, image, platform=platform)
    if not await stores.snapshots.exists(image.chain_id):
        await unpack_image(stores, image.layers, image.config.diff_ids, image.config_descriptor)
    if readonly:
        return await stores.snapshots.view(container_id, image.chain_id)
    return await stores.snapshots.prepare(container_id, image.chain_id)


async def rootfs_mounts(client: Client | Stores, container_id: str) -> list[RootfsMount]:
    """The mounts of a container's existing snapshot (e.g. after a restart)."""
    return await stores_of(client).snapshots.mounts(container_id)


async def remove_rootfs(client: Client | Stores, container_id: str) -> None:
    """Remove the container's snapshot; nothing happens if there is none."""
    with contextlib.suppress(NotFound):
        await stores_of(client).snapshots.remove(container_id)
