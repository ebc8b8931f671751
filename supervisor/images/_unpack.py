"""Unpacking layers into snapshots by chain id, as containerd's Go client does."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ..client import Descriptor, Stores
from ..errors import AlreadyExists, DigestMismatch, ImageError, SupervisorError
from ._manifest import chain_ids

#: Label on an extraction snapshot: the chain id it becomes.
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
#: Label on a layer blob: its diff id (digest of the uncompressed tar).
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
#: Bound on removing a half-made snapshot after a failure.
CLEANUP_TIMEOUT = 30.0


def snapshot_gc_label(snapshotter: str) -> str:
    """The label on an image config that keeps its unpacked snapshot from GC."""
    return f"containerd.io/gc.ref.snapshot.{snapshotter}"


async def unpack(
    stores: Stores,
    layers: Sequence[Descriptor],
    diff_ids: Sequence[str],
    *,
    layer_ready: Callable[[int], Awaitable[None]] | None = None,
    on_layer: Callable[[int, bool], None] | None = None,
) -> str:
    """Apply ``layers`` bottom first as committed snapshots named by chain id;
    layers whose chain is there already are skipped. ``layer_ready(i)``
    returns once layer ``i`` is in the content store (a pull fetches while
    this unpacks); ``on_layer(i, applied)`` reports each one. Returns the top
    chain id. Raises :class:`DigestMismatch` if a layer's tar is not its diff id.

    It runs under the lease of ``stores``, or one of its own: containerd's
    garbage collection removes an extraction snapshot nothing holds.
    """
    if stores.lease_id is None:
        async with stores.lease() as leased:
            return await unpack(
                leased, layers, diff_ids, layer_ready=layer_ready, on_layer=on_layer
            )
    if len(layers) != len(diff_ids):
        raise ImageError(f"image has {len(layers)} layers but {len(diff_ids)} diff ids")
    if not layers:
        raise ImageError("image has no layers")
    chains = chain_ids(diff_ids)
    parent = ""
    for i, (layer, diff_id, chain) in enumerate(zip(layers, diff_ids, chains, strict=True)):
        applied = False
        if not await stores.snapshots.exists(chain):
            if layer_ready is not None:
                await layer_ready(i)
            await apply_layer(stores, layer, diff_id, chain, parent)
            applied = True
        if on_layer is not None:
            on_layer(i, applied)
        parent = chain
    return chains[-1]


async def unpack_image(
    stores: Stores, layers: Sequence[Descriptor], diff_ids: Sequence[str], config: Descriptor
) -> str:
    """:func:`unpack`, then the labels that make the image hold what was
    unpacked: the config refers to the top snapshot, each layer names its
    diff id. Returns the top chain id. Under a lease, as :func:`unpack`."""
    if stores.lease_id is None:
        async with stores.lease() as leased:
            return await unpack_image(leased, layers, diff_ids, config)
    top = await unpack(stores, layers, diff_ids)
    label = snapshot_gc_label(stores.snapshots.snapshotter)
    await stores.content.update(config.digest, {label: top})
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        await stores.content.update(layer.digest, {UNCOMPRESSED_LABEL: diff_id})
    return top


async def apply_layer(
    stores: Stores, layer: Descriptor, diff_id: str, chain: str, parent: str
) -> None:
    """Make committed snapshot ``chain`` = ``parent`` + ``layer``."""
    key = f"extract-{uuid.uuid4().hex} {chain}"
    try:
        mounts = await stores.snapshots.prepare(key, parent, labels={SNAPSHOT_REF_LABEL: chain})
    except AlreadyExists:
        # containerd's answer when the snapshot that label names exists (made
        # meanwhile by another pull sharing the layer); it is then in our lease.
        return
    try:
        applied = await stores.diff.apply(layer, mounts)
        if applied.digest != diff_id:
            raise DigestMismatch(
                f"layer {layer.digest} unpacks to {applied.digest}, its config says {diff_id}"
            )
        try:
            await stores.snapshots.commit(chain, key)
        except AlreadyExists:
            # Unpacked meanwhile by someone else: theirs is as good.
            await _remove_quietly(stores, key)
    except BaseException:
        await _remove_quietly(stores, key)
        raise


async def _remove_quietly(stores: Stores, key: str) -> None:
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(CLEANUP_TIMEOUT),
        contextlib.suppress(SupervisorError),
    ):
        await stores.snapshots.remove(key)
