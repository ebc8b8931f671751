"""Images as containerd holds them: resolved, listed, removed, pruned."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

from ..client import Client, Descriptor, ImageRecord, Stores
from ..errors import ImageError, InvalidArgument, NotFound
from ._manifest import (
    INDEX_TYPES,
    MAX_MANIFEST_SIZE,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    chain_ids,
    media_type_of,
)
from ._reference import normalize


@dataclass(frozen=True, slots=True)
class Image:
    """An image in containerd for one platform: its record's name and root
    descriptor, the platform's manifest, config and layers."""

    name: str
    target: Descriptor
    manifest: Descriptor
    config_descriptor: Descriptor
    config: ImageConfig
    layers: tuple[Descriptor, ...]
    created_at: datetime | None = None

    @property
    def digest(self) -> str:
        """The digest of the root (index or manifest): what the image is pinned by."""
        return self.target.digest

    @property
    def chain_id(self) -> str:
        """The chain id of the top layer: the snapshot a container starts from."""
        return chain_ids(self.config.diff_ids)[-1]

    @property
    def size(self) -> int:
        """Bytes of the platform's manifest, config and (compressed) layers."""
        blobs = (self.manifest, self.config_descriptor, *self.layers)
        return sum(d.size for d in blobs)


def stores_of(client: Client | Stores) -> Stores:
    return client.stores if isinstance(client, Client) else client


def image_name(ref: str) -> str:
    """The record name for ``ref``: normalised if it is a reference, as is
    otherwise (an imported archive may name an image anything)."""
    try:
        return normalize(ref)
    except InvalidArgument:
        return ref


async def resolve_image(
    client: Client | Stores, ref: str | ImageRecord, *, platform: str | Platform | None = None
) -> Image:
    """The image named ``ref`` (``busybox`` finds ``docker.io/library/busybox:latest``)
    for ``platform`` (this machine's by default), read from the content store.
    ``NotFound`` if there is no such image."""
    stores = stores_of(client)
    plat = Platform.parse(platform) if isinstance(platform, str) else platform or Platform.host()
    record = ref if isinstance(ref, ImageRecord) else await stores.images.get(image_name(ref))
    return await _resolve(stores, record, plat)


async def _resolve(stores: Stores, record: ImageRecord, platform: Platform) -> Image:
    target = record.target
    data = await stores.content.read_all(target.digest, limit=MAX_MANIFEST_SIZE)
    media_type = target.media_type or media_type_of(data)
    manifest_desc = target
    if media_type in INDEX_TYPES:
        manifest_desc = Index.parse(data, media_type).select(platform)
        try:
            data = await stores.content.read_all(manifest_desc.digest, limit=MAX_MANIFEST_SIZE)
        except NotFound:
            raise ImageError(
                f"image {record.name}: the manifest for {platform} was not pulled"
            ) from None
    manifest = Manifest.parse(data, manifest_desc.media_type or media_type_of(data))
    config_data = await stores.content.read_all(manifest.config.digest, limit=MAX_MANIFEST_SIZE)
    config = ImageConfig.parse(config_data)
    return Image(
        name=record.name,
        target=target,
        manifest=manifest_desc,
        config_descriptor=manifest.config,
        config=config,
        layers=manifest.layers,
        created_at=record.created_at,
    )


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """One line of an image listing."""

    name: str
    digest: str
    size: int
    created_at: datetime | None


async def list_images(
    client: Client | Stores, *filters: str, platform: str | Platform | None = None
) -> list[ImageSummary]:
    """Every image of the namespace, by name: its digest, size for the
    platform (0 if its content is incomplete) and creation time."""
    stores = stores_of(client)
    plat = Platform.parse(platform) if isinstance(platform, str) else platform or Platform.host()
    out = []
    for record in sorted(await stores.images.list(*filters), key=lambda r: r.name):
        size = 0
        with contextlib.suppress(ImageError, NotFound):
            size = (await _resolve(stores, record, plat)).size
        out.append(ImageSummary(record.name, record.target.digest, size, record.created_at))
    return out


async def remove_image(client: Client | Stores, ref: str, *, sync: bool = False) -> None:
    """Delete the image record; containerd's garbage collection then removes
    its content and snapshots that nothing else holds (at once with ``sync``).
    Whether a container still uses it is the caller's to check."""
    await stores_of(client).images.delete(image_name(ref), sync=sync)


async def prune_images(client: Client, *, sync: bool = False) -> list[str]:
    """Remove every image of the namespace that no container record names
    (``Client.create_container(image=...)``); the names removed."""
    used = {info.image for info in await client.list_containers() if info.image}
    removed = []
    for record in await client.images.list():
        if record.name in used:
            continue
        with contextlib.suppress(NotFound):
            await client.images.delete(record.name)
            removed.append(record.name)
    if sync and removed:
        await client.leases.collect_garbage()
    return removed
