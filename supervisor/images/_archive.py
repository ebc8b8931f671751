"""Image archives: import OCI archives and ``docker save`` archives, save OCI archives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio

from ..client import Client, Descriptor, Stores
from ..errors import AlreadyExists, ImageError, InvalidArgument, NotFound
from ._manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    media_type_of,
    sha256_digest,
)
from ._reference import parse_reference
from ._store import Image, image_name, resolve_image, stores_of
from ._unpack import UNCOMPRESSED_LABEL, unpack_image

#: Bytes read from or written to an archive at a time.
ARCHIVE_CHUNK = 1 << 20
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
_BLOCK = 512


@dataclass
class _Archive:
    tar: tarfile.TarFile
    file: IO[bytes]
    members: dict[str, tarfile.TarInfo] = field(default_factory=dict)

    def close(self) -> None:
        self.tar.close()  # a TarFile given a file object leaves it open
        self.file.close()

    def has(self, name: str) -> bool:
        return _member(name) in self.members

    def read_small(self, name: str) -> bytes:
        info = self.members.get(_member(name))
        if info is None:
            raise ImageError(f"archive has no {name}")
        if info.size > MAX_MANIFEST_SIZE:
            raise ImageError(f"archive member {name} is too big ({info.size} bytes)")
        file = self.tar.extractfile(info)
        if file is None:
            raise ImageError(f"archive member {name} is not a file")
        return file.read()

    def open(self, name: str) -> tuple[IO[bytes], int]:
        info = self.members.get(_member(name))
        file = self.tar.extractfile(info) if info is not None else None
        if info is None or file is None:
            raise ImageError(f"archive has no file {name}")
        return file, info.size


def _member(name: str) -> str:
    return os.path.normpath(name).lstrip("/")


def _open_archive(path: Path) -> _Archive:
    try:
        # Opened without blocking and checked: a FIFO or a device is refused,
        # never read (or waited on) for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"{path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{path}: not a regular file")
        os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        tar = tarfile.open(fileobj=file, mode="r:*")  # noqa: SIM115 (import_archive closes it)
    except (OSError, tarfile.TarError) as exc:
        file.close()
        raise InvalidArgument(f"{path}: not a readable tar archive ({exc})") from None
    archive = _Archive(tar, file)
    try:
        _index(archive, tar)
    except RecursionError:
        archive.close()
        raise InvalidArgument(f"{path}: links in the archive nest too deep") from None
    except BaseException:
        archive.close()
        raise
    return archive


def _index(archive: _Archive, tar: tarfile.TarFile) -> None:
    for info in tar.getmembers():
        if info.isfile():
            archive.members[_member(info.name)] = info
        elif info.issym() or info.islnk():
            # docker save links repeated layers to their first copy.
            linked = info.linkname
            if info.issym():
                linked = os.path.normpath(os.path.join(os.path.dirname(info.name), linked))
            try:
                archive.members[_member(info.name)] = tar.getmember(linked)
            except KeyError:
                continue


async def _chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(file.read, ARCHIVE_CHUNK):
        yield chunk


async def import_archive(
    client: Client | Stores,
    path: str | os.PathLike[str],
    *,
    platform: str | Platform | None = None,
    base_name: str | None = None,
    unpack_layers: bool = True,
) -> list[Image]:
    """Import an OCI archive (``oci-layout`` + ``index.json``, as
    ``skopeo copy ... oci-archive:`` or ``ctr image export`` write) or a
    ``docker save`` archive (``manifest.json``) into the content store, name
    the images it holds and unpack them for ``platform`` (this machine's).

    Names come from ``io.containerd.image.name``, else
    ``org.opencontainers.image.ref.name`` (a bare tag is appended to
    ``base_name``), or a docker archive's ``RepoTags``. Returns the images.
    """
    plat = Platform.parse(platform) if isinstance(platform, str) else platform or Platform.host()
    archive = await anyio.to_thread.run_sync(_open_archive, Path(path))
    try:
        async with stores_of(client).lease() as leased:
            if archive.has("index.json"):
                named = await _import_oci(leased, archive, base_name)
            elif archive.has("manifest.json"):
                named = await _import_docker(leased, archive)
            else:
                raise ImageError(f"{path}: neither an OCI archive nor a docker save archive")
            if not named:
                raise ImageError(f"{path}: no named image in the archive (give a base name)")
            images = []
            for name, target in named:
                try:
                    await leased.images.create(name, target)
                except AlreadyExists:
                    await leased.images.update(name, target)
                image = await resolve_image(leased, name, platform=plat)
                if unpack_layers:
                    await unpack_image(
                        leased, image.layers, image.config.diff_ids, image.config_descriptor
                    )
                images.append(image)
            return images
    finally:
        await anyio.to_thread.run_sync(archive.close)


def _blob_name(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"


async def _write_member(
    stores: Stores, archive: _Archive, name: str, desc: Descriptor, labels: Mapping[str, str]
) -> None:
    if await stores.content.hold(desc.digest, desc.size):
        if labels:
            await stores.content.update(desc.digest, labels)
        return
    file, size = archive.open(name)
    if size != desc.size:
        raise ImageError(f"archive member {name} is {size} bytes, its descriptor says {desc.size}")
    written = await stores.content.write(
        f"import-{desc.digest}", _chunks(file), digest=desc.digest, size=size, labels=labels
    )
    if not written and labels:
        await stores.content.update(desc.digest, labels)


async def _import_oci(
    stores: Stores, archive: _Archive, base_name: str | None
) -> list[tuple[str, Descriptor]]:
    index = Index.parse(archive.read_small("index.json"), OCI_INDEX)
    named = []
    for entry in index.manifests:
        await _import_tree(stores, archive, entry)
        name = _oci_name(entry.annotations, base_name)
        if name is not None:
            named.append((name, Descriptor(entry.media_type, entry.digest, entry.size)))
    return named


def _oci_name(annotations: Mapping[str, str], base_name: str | None) -> str | None:
    name = annotations.get(IMAGE_NAME_ANNOTATION)
    if name:
        return image_name(name)
    ref = annotations.get(REF_NAME_ANNOTATION)
    if not ref:
        return str(parse_reference(base_name)) if base_name else None
    if "/" in ref or (":" in ref and not ref.startswith(":")):
        try:
            return str(parse_reference(ref))
        except InvalidArgument:
            pass
    if base_name is not None:
        base = parse_reference(base_name)
        return str(parse_reference(f"{base.domain}/{base.path}:{ref}"))
    return None


async def _import_tree(stores: Stores, archive: _Archive, desc: Descriptor) -> None:
    """Write ``desc`` and what it refers to (what the archive has of it)."""
    name = _blob_name(desc.digest)
    if desc.media_type in (*INDEX_TYPES, *MANIFEST_TYPES, ""):
        data = archive.read_small(name)
        if sha256_digest(data) != desc.digest:
            raise ImageError(f"archive member {name} does not match its digest")
        media_type = desc.media_type or media_type_of(data)
        labels: dict[str, str] = {}
        if media_type in INDEX_TYPES:
            present = [m for m in Index.parse(data, media_type).manifests
                       if archive.has(_blob_name(m.digest))]  # fmt: skip
            for i, child in enumerate(present):
                await _import_tree(stores, archive, child)
                labels[f"containerd.io/gc.ref.content.m.{i}"] = child.digest
        else:
            manifest = Manifest.parse(data, media_type)
            labels["containerd.io/gc.ref.content.config"] = manifest.config.digest
            await _write_member(stores, archive, _blob_name(manifest.config.digest),
                                manifest.config, {})  # fmt: skip
            for i, layer in enumerate(manifest.layers):
                labels[f"containerd.io/gc.ref.content.l.{i}"] = layer.digest
                await _write_member(stores, archive, _blob_name(layer.digest), layer, {})
        if not await stores.content.write_bytes(
            f"import-{desc.digest}", data, digest=desc.digest, labels=labels
        ):
            await stores.content.update(desc.digest, labels)
        return
    await _write_member(stores, archive, name, desc, {})


async def _import_docker(stores: Stores, archive: _Archive) -> list[tuple[str, Descriptor]]:
    try:
        entries = json.loads(archive.read_small("manifest.json"))
    except ValueError:
        raise ImageError("docker archive: manifest.json is not JSON") from None
    if not isinstance(entries, list):
        raise ImageError("docker archive: manifest.json is not a list")
    named = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ImageError("docker archive: manifest.json entry without Config")
        config_data = archive.read_small(entry["Config"])
        config = ImageConfig.parse(config_data)
        config_desc = Descriptor(DOCKER_CONFIG, sha256_digest(config_data), len(config_data))
        layer_names = entry.get("Layers") or []
        if len(layer_names) != len(config.diff_ids):
            raise ImageError("docker archive: layer count differs from the config's diff ids")
        layers = []
        for layer_name, diff_id in zip(layer_names, config.diff_ids, strict=True):
            layers.append(await _docker_layer(stores, archive, str(layer_name), diff_id))
        await stores.content.write_bytes(
            f"import-{config_desc.digest}", config_data, digest=config_desc.digest
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": config_desc.to_oci(),
            "layers": [layer.to_oci() for layer in layers],
        }
        data = json.dumps(manifest, separators=(",", ":")).encode()
        target = Descriptor(DOCKER_MANIFEST, sha256_digest(data), len(data))
        labels = {"containerd.io/gc.ref.content.config": config_desc.digest}
        labels |= {f"containerd.io/gc.ref.content.l.{i}": d.digest for i, d in enumerate(layers)}
        if not await stores.content.write_bytes(
            f"import-{target.digest}", data, digest=target.digest, labels=labels
        ):
            await stores.content.update(target.digest, labels)
        for tag in entry.get("RepoTags") or []:
            named.append((image_name(str(tag)), target))
    return named


async def _docker_layer(stores: Stores, archive: _Archive, name: str, diff_id: str) -> Descriptor:
    file, size = archive.open(name)
    magic = await anyio.to_thread.run_sync(file.read, 2)
    if magic == b"\x1f\x8b":
        digest = await _hash_member(archive, name)
        desc = Descriptor(DOCKER_LAYER_GZIP, digest, size)
    else:
        # An uncompressed layer is its own diff: the writer checks it against that.
        desc = Descriptor(DOCKER_LAYER, diff_id, size)
    await _write_member(stores, archive, name, desc, {UNCOMPRESSED_LABEL: diff_id})
    return desc


async def _hash_member(archive: _Archive, name: str) -> str:
    file, _ = archive.open(name)
    hasher = hashlib.sha256()
    async for chunk in _chunks(file):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


async def save(
    client: Client | Stores,
    ref: str,
    path: str | os.PathLike[str],
    *,
    platform: str | Platform | None = None,
) -> Descriptor:
    """Write image ``ref`` as an OCI archive at ``path``: an index of several
    platforms if all of its manifests were pulled, else the ``platform``'s
    manifest alone. ``import_archive`` and ``ctr image import`` read it back.
    Returns the descriptor ``index.json`` names."""
    stores = stores_of(client)
    image = await resolve_image(stores, ref, platform=platform)
    root = image.target
    blobs: list[Descriptor] = []
    if root.media_type in INDEX_TYPES:
        data = await stores.content.read_all(root.digest, limit=MAX_MANIFEST_SIZE)
        children = Index.parse(data, root.media_type).manifests
        try:
            for child in children:
                manifest = Manifest.parse(
                    await stores.content.read_all(child.digest, limit=MAX_MANIFEST_SIZE),
                    child.media_type,
                )
                blobs += [child, manifest.config, *manifest.layers]
            blobs.append(root)
        except NotFound:
            root = image.manifest
            blobs = []
    if not blobs:
        blobs = [image.manifest, image.config_descriptor, *image.layers]
    annotations = {IMAGE_NAME_ANNOTATION: image.name}
    tag = _tag_of(image.name)
    if tag:
        annotations[REF_NAME_ANNOTATION] = tag
    top = Descriptor(root.media_type, root.digest, root.size, annotations)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top.to_oci()]}
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        async with await anyio.open_file(tmp, "wb") as out:
            await _add(out, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            await _add(out, "index.json", json.dumps(index).encode())
            seen = set()
            for blob in blobs:
                if blob.digest in seen:
                    continue
                seen.add(blob.digest)
                await _add_blob(stores, out, blob)
            await out.write(b"\0" * (2 * _BLOCK))
        await anyio.Path(tmp).rename(target)
    except BaseException as exc:
        with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
            await anyio.Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a directory, a missing one, no room: one line
            raise InvalidArgument(f"{target}: {exc.strerror or exc}") from None
        raise
    return top


def _tag_of(name: str) -> str | None:
    try:
        return parse_reference(name).tag
    except InvalidArgument:
        return None


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


async def _add(out: Any, name: str, data: bytes) -> None:
    await out.write(_header(name, len(data)) + data + b"\0" * (-len(data) % _BLOCK))


async def _add_blob(stores: Stores, out: Any, blob: Descriptor) -> None:
    await out.write(_header(_blob_name(blob.digest), blob.size))
    hasher = hashlib.sha256()
    written = 0
    async with contextlib.aclosing(stores.content.read(blob.digest)) as chunks:
        async for chunk in chunks:
            hasher.update(chunk)
            written += len(chunk)
            await out.write(chunk)
    if written != blob.size or "sha256:" + hasher.hexdigest() != blob.digest:
        raise ImageError(f"content {blob.digest} in containerd does not match its descriptor")
    await out.write(b"\0" * (-blob.size % _BLOCK))
