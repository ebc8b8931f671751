"""Pulling an image from a registry into containerd, as its Go client does:
under a lease, blobs streamed into the content store with GC labels, layers
unpacked by chain id while later ones download, then the image record."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio

from ..client import Client, Descriptor, Stores
from ..errors import AlreadyExists, DigestMismatch, ImageError, PlatformNotFound, SupervisorError
from ._manifest import (
    INDEX_TYPES,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    chain_ids,
    media_type_of,
    sha256_digest,
)
from ._reference import Reference, parse_reference
from ._registry import RegistryClient
from ._store import Image, stores_of
from ._unpack import UNCOMPRESSED_LABEL, snapshot_gc_label, unpack

#: Layers downloaded at once (containerd's Go client defaults to 3 too).
DEFAULT_CONCURRENCY = 3
#: How long a layer's download, its request made, waits for the layer below
#: to be read before its bytes flow too (seconds; 0: no waiting). When
#: containerd's intake is what limits a pull (a near registry), taking
#: layers in order starts the unpack early and leaves one layer, not the
#: last three, to unpack at the end; from a far registry, whose connections
#: are the limit, a slow layer holds the next ones back this long at most.
TURN_WAIT = 1.0


class PullStatus(enum.Enum):
    """Where one blob of a pull is."""

    WAITING = "waiting"
    DOWNLOADING = "downloading"
    EXISTS = "exists"
    DOWNLOADED = "downloaded"
    UNPACKED = "unpacked"


@dataclass(frozen=True, slots=True)
class PullProgress:
    """A progress report on one layer: bytes so far of its total."""

    digest: str
    status: PullStatus
    done: int
    total: int


ProgressCallback = Callable[[PullProgress], None]


def _gc_content_label(kind: str, i: int | None = None) -> str:
    return f"containerd.io/gc.ref.content.{kind}" + (f".{i}" if i is not None else "")


async def pull(
    client: Client | Stores,
    ref: str | Reference,
    *,
    platform: str | Platform | None = None,
    progress: ProgressCallback | None = None,
    registry: RegistryClient | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    unpack: bool = True,
) -> Image:
    """Pull ``ref`` (``busybox``, ``host:5000/app:1``, ``name@sha256:...``) for
    ``platform`` (this machine's by default) and unpack it into the client's
    snapshotter. Blobs already in the content store are not downloaded again;
    every blob is checked against its digest while it streams. ``progress``
    is called with each layer's :class:`PullProgress`. ``registry`` carries
    credentials and insecure hosts (default: a fresh :class:`RegistryClient`).

    Everything is made under a lease deleted at the end: a pull that fails or
    is killed leaves nothing that containerd's garbage collection keeps.
    Raises :class:`~supervisor.errors.PlatformNotFound`,
    :class:`~supervisor.errors.DigestMismatch`, :class:`~supervisor.errors.RegistryError`...
    """
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    plat = Platform.parse(platform) if isinstance(platform, str) else platform or Platform.host()
    if concurrency < 1:
        raise ImageError(f"concurrency must be at least 1, not {concurrency}")
    async with AsyncExitStack() as stack:
        if registry is None:
            registry = await stack.enter_async_context(RegistryClient())
        leased = await stack.enter_async_context(stores_of(client).lease())
        puller = _Pull(leased, registry, reference, plat, progress, concurrency)
        return await puller.run(unpack)
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the stack may swallow)


class _Pull:
    def __init__(
        self,
        stores: Stores,
        registry: RegistryClient,
        ref: Reference,
        platform: Platform,
        progress: ProgressCallback | None,
        concurrency: int,
    ) -> None:
        self.stores = stores
        self.registry = registry
        self.ref = ref
        self.platform = platform
        self.progress = progress
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.source = {f"containerd.io/distribution.source.{ref.domain}": ref.path}

    def _report(self, layer: Descriptor, status: PullStatus, done: int) -> None:
        if self.progress is not None:
            self.progress(PullProgress(layer.digest, status, done, layer.size))

    async def _manifest(self, obj: str | None, expected: Descriptor | None) -> tuple[bytes, str]:
        data, declared = await self.registry.manifest(self.ref, obj)
        digest = sha256_digest(data)
        want = expected.digest if expected is not None else self.ref.digest
        if want is not None and digest != want:
            raise DigestMismatch(f"{self.ref}: manifest {want} arrived with digest {digest}")
        if expected is not None and expected.size != len(data):
            raise DigestMismatch(
                f"{self.ref}: manifest {want} is {len(data)} bytes, not {expected.size}"
            )
        return data, media_type_of(data, declared)

    async def _write_small(
        self, kind: str, desc: Descriptor, data: bytes, labels: dict[str, str]
    ) -> None:
        written = await self.stores.content.write_bytes(
            f"{kind}-{desc.digest}", data, digest=desc.digest, labels=labels
        )
        if not written:
            await self.stores.content.update(desc.digest, labels)

    async def run(self, do_unpack: bool) -> Image:
        data, media_type = await self._manifest(None, None)
        target = Descriptor(media_type, sha256_digest(data), len(data))
        parents: list[tuple[str, Descriptor, bytes, dict[str, str]]] = []
        manifest_desc, manifest_data = target, data
        if media_type in INDEX_TYPES:
            manifest_desc = Index.parse(data, media_type).select(self.platform)
            manifest_data, found_type = await self._manifest(manifest_desc.digest, manifest_desc)
            if not manifest_desc.media_type:
                manifest_desc = Descriptor(found_type, manifest_desc.digest, manifest_desc.size)
            labels = {_gc_content_label("m", 0): manifest_desc.digest, **self.source}
            parents.append(("index", target, data, labels))
        manifest = Manifest.parse(manifest_data, manifest_desc.media_type)
        config_data = await self._fetch_config(manifest.config)
        config = ImageConfig.parse(config_data)
        made_for = Platform(config.os, config.architecture)
        if config.os and config.architecture and not self.platform.matches(made_for):
            raise PlatformNotFound(f"{self.ref} is an image for {made_for}, not {self.platform}")
        if len(config.diff_ids) != len(manifest.layers):
            raise ImageError(
                f"{self.ref}: {len(manifest.layers)} layers but {len(config.diff_ids)} diff ids"
            )
        manifest_labels = {
            _gc_content_label("config"): manifest.config.digest,
            **{_gc_content_label("l", i): layer.digest for i, layer in enumerate(manifest.layers)},
            **self.source,
        }
        parents.insert(0, ("manifest", manifest_desc, manifest_data, manifest_labels))
        config_labels = dict(self.source)
        if do_unpack and config.diff_ids:
            # The top snapshot's name is known now: the config, manifest and
            # index go in while the layers download (under the lease, a label
            # naming what is not there yet holds nothing and harms nothing).
            top = chain_ids(config.diff_ids)[-1]
            config_labels[snapshot_gc_label(self.stores.snapshots.snapshotter)] = top

        async def write_small_blobs() -> None:
            await self._write_small("config", manifest.config, config_data, config_labels)
            for kind, desc, blob, labels in parents:
                await self._write_small(kind, desc, blob, labels)

        await self._layers(manifest, config, do_unpack, write_small_blobs)
        name = str(self.ref)
        try:
            record = await self.stores.images.create(name, target)
        except AlreadyExists:
            record = await self.stores.images.update(name, target)
        return Image(
            name=name,
            target=target,
            manifest=manifest_desc,
            config_descriptor=manifest.config,
            config=config,
            layers=manifest.layers,
            created_at=record.created_at,
        )

    async def _fetch_config(self, desc: Descriptor) -> bytes:
        parts = []
        size = 0
        async with self.registry.blob(self.ref, desc.digest) as chunks:
            async for part in chunks:
                size += len(part)
                if size > desc.size:
                    raise DigestMismatch(f"{self.ref}: config {desc.digest} is over its size")
                parts.append(part)
        data = b"".join(parts)
        if sha256_digest(data) != desc.digest or len(data) != desc.size:
            raise DigestMismatch(
                f"{self.ref}: config {desc.digest} arrived with digest {sha256_digest(data)}"
            )
        return data

    async def _layers(
        self,
        manifest: Manifest,
        config: ImageConfig,
        do_unpack: bool,
        alongside: Callable[[], Coroutine[None, None, None]],
    ) -> None:
        ready = [anyio.Event() for _ in manifest.layers]

        async def wait_layer(i: int) -> None:
            await ready[i].wait()

        def unpacked(i: int, applied: bool) -> None:
            layer = manifest.layers[i]
            self._report(layer, PullStatus.UNPACKED, layer.size)

        async def unpack_all() -> None:
            await unpack(
                self.stores, manifest.layers, config.diff_ids,
                layer_ready=wait_layer, on_layer=unpacked,
            )  # fmt: skip

        try:
            async with anyio.create_task_group() as tg:
                turns = [_Turn(anyio.Event(), anyio.Event()) for _ in manifest.layers]
                for i, layer in enumerate(manifest.layers):
                    self._report(layer, PullStatus.WAITING, 0)
                    tg.start_soon(self._fetch_layer, i, layer, config.diff_ids[i], ready[i], turns)
                if do_unpack:
                    tg.start_soon(unpack_all)
                tg.start_soon(alongside)
        except ExceptionGroup as group:
            raise _first(group) from None

    async def _fetch_layer(
        self, i: int, layer: Descriptor, diff_id: str, ready: anyio.Event, turns: list[_Turn]
    ) -> None:
        labels = {UNCOMPRESSED_LABEL: diff_id, **self.source}
        turn = turns[i]
        try:
            if i:
                await turns[i - 1].slot.wait()  # the limiter's slots go in layer order
            async with self.limiter:
                turn.slot.set()
                if await self.stores.content.hold(layer.digest, layer.size):
                    await self.stores.content.update(layer.digest, labels)
                    self._report(layer, PullStatus.EXISTS, layer.size)
                    ready.set()
                    return
                self._report(layer, PullStatus.DOWNLOADING, 0)
                async with (
                    self.registry.blob(self.ref, layer.digest) as chunks,
                    contextlib.aclosing(self._in_turn(i, layer, chunks, turns)) as source,
                ):
                    written = await self.stores.content.write(
                        f"layer-{layer.digest}", source, digest=layer.digest, size=layer.size,
                        labels=labels,
                    )  # fmt: skip
                if not written:
                    await self.stores.content.update(layer.digest, labels)
                self._report(layer, PullStatus.DOWNLOADED, layer.size)
            ready.set()
        finally:
            turn.slot.set()
            turn.read.set()

    async def _in_turn(
        self, i: int, layer: Descriptor, chunks: AsyncIterator[bytes], turns: list[_Turn]
    ) -> AsyncGenerator[bytes]:
        """The layer's chunks, once the layer below has been read (or a while
        has passed): its request and its write are open by then, but the
        bytes go in layer order, so that the unpack, which takes layers in
        order, gets each one as early as it can."""
        if i and TURN_WAIT > 0:
            with anyio.move_on_after(TURN_WAIT):
                await turns[i - 1].read.wait()
        done = 0
        async for chunk in chunks:
            if self.progress is not None:
                done += len(chunk)
                self._report(layer, PullStatus.DOWNLOADING, done)
            yield chunk
        turns[i].read.set()


@dataclass(slots=True)
class _Turn:
    """Where one layer's download is: it has its slot of the limiter; all
    its bytes have been read (or none will be)."""

    slot: anyio.Event
    read: anyio.Event


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a caller should see from a task group: ours before others."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, SupervisorError):
            return exc
    return leaves[0]
