"""Images against a real registry (Debian's docker-registry on loopback) and
the session's containerd: pull, unpack, run from a snapshot, GC, import, save."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from supervisor import Client
from supervisor.client import IMAGE_ROOTFS, FifoIO, oci_spec
from supervisor.errors import (
    DigestMismatch,
    ImageError,
    InvalidArgument,
    NotFound,
    PlatformNotFound,
    RegistryError,
)
from supervisor.images import (
    Platform,
    PullProgress,
    PullStatus,
    RegistryClient,
    import_archive,
    list_images,
    prepare_rootfs,
    prune_images,
    pull,
    remove_image,
    remove_rootfs,
    resolve_image,
    save,
)
from supervisor.testing import (
    BuiltImage,
    ContainerdProcess,
    RegistryProcess,
    build_image,
    busybox_layers,
    skopeo_copy,
    start_registry,
    write_layout,
)

from .helpers import WAIT

pytestmark = pytest.mark.anyio

IMAGE_CONFIG = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi"],
    "Entrypoint": ["sh", "-c"],
    "Cmd": ["echo $GREETING"],
    "WorkingDir": "/tmp",
    "User": "root",
    "StopSignal": "SIGQUIT",
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
}


@dataclass
class Registry:
    process: RegistryProcess
    image: BuiltImage
    arm: BuiltImage
    corrupt: BuiltImage
    layout: Path

    @property
    def host(self) -> str:
        return self.process.host


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (containerd and runc)"
    for binary in ("docker-registry", "skopeo", "containerd", "ctr", "busybox"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (apt-get install docker-registry skopeo)"
    return None


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("registry")
    layers = busybox_layers({"hello.txt": b"hello from the image\n"})
    image = build_image([*layers, {"etc/motd": b"four layers\n"}], config=IMAGE_CONFIG)
    arm = build_image(layers, config={"Cmd": ["echo", "arm"]}, architecture="arm64")
    corrupt = build_image([*layers, {"data.bin": os.urandom(256 << 10)}], config=IMAGE_CONFIG)
    layout = write_layout(
        base / "layout", {"1": [image], "multi": [image, arm], "corrupt": [corrupt]}
    )
    process = start_registry(base / "server")
    try:
        host = process.host
        skopeo_copy(f"oci:{layout}:1", f"docker://{host}/t/bb:1")
        skopeo_copy(f"oci:{layout}:multi", f"docker://{host}/t/bb:multi", "--all")
        skopeo_copy(f"oci:{layout}:1", f"docker://{host}/t/bb:v2s2", "--format", "v2s2")
        skopeo_copy(f"oci:{layout}:corrupt", f"docker://{host}/t/corrupt:1")
        yield Registry(process, image, arm, corrupt, layout)
    finally:
        process.stop()


def ctr(containerd: ContainerdProcess, namespace: str, *args: str) -> list[str]:
    """``ctr ... ls -q`` lines: what the Go client sees in the namespace."""
    done = subprocess.run(
        ["ctr", "-a", containerd.address, "-n", namespace, *args],
        check=True, capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    return done.stdout.split()


async def gc_and_list(client: Client) -> tuple[list[str], list[str]]:
    await client.leases.collect_garbage()
    content = [c.digest for c in await client.content.list()]
    snapshots = [s.name for s in await client.snapshots.list()]
    return content, snapshots


async def run_from_image(
    client: Client, tmp_path: Path, cid: str, image: str, args: list[str]
) -> tuple[bytes, int]:
    """Run ``args`` in a container on its own snapshot of ``image``."""
    spec = oci_spec(tmp_path, args)
    spec["root"] = {"path": "rootfs", "readonly": False}
    async with client.lease() as leased:
        mounts = await prepare_rootfs(leased, cid, image)
        container = await client.create_container(cid, spec, snapshot_key=cid, image=image)
    try:
        io = FifoIO.create(client.fifo_dir, cid)
        task = await container.new_task(io, rootfs=mounts)
        try:
            await task.start()
            with anyio.fail_after(WAIT):
                out = await io.stdout_reader.read_all()
                status = await task.wait()
        finally:
            await task.force_delete()
    finally:
        await container.delete()
        await remove_rootfs(client, cid)
    return out, status.code


async def test_pull_unpack_run_remove_and_gc(
    client: Client, registry: Registry, containerd: ContainerdProcess, tmp_path: Path
) -> None:
    ref = f"{registry.host}/t/bb:1"
    seen: list[PullProgress] = []
    image = await pull(client, ref, progress=seen.append)
    assert image.name == ref
    assert image.manifest.digest == registry.image.manifest.digest
    assert image.config.diff_ids == tuple(registry.image.diff_ids)
    assert len(image.layers) == 4
    assert await client.snapshots.exists(image.chain_id)
    statuses = {(p.digest, p.status) for p in seen}
    for layer in registry.image.layers:
        assert (layer.digest, PullStatus.DOWNLOADED) in statuses
        assert (layer.digest, PullStatus.UNPACKED) in statuses
    assert [lease.id for lease in await client.leases.list()] == []

    out, code = await run_from_image(client, tmp_path, "from-image", ref, ["echo", "hi"])
    assert (out, code) == (b"hi\n", 0)
    out, code = await run_from_image(client, tmp_path, "motd", ref, ["cat", "/etc/motd"])
    assert (out, code) == (b"four layers\n", 0)

    summary = await list_images(client)
    assert [(s.name, s.digest) for s in summary] == [(ref, image.digest)]
    assert summary[0].size == image.size > 900_000

    await remove_image(client, ref)
    assert await gc_and_list(client) == ([], [])
    assert ctr(containerd, client.namespace, "content", "ls", "-q") == []
    assert ctr(containerd, client.namespace, "snapshots", "ls") == ["KEY", "PARENT", "KIND"]
    assert ctr(containerd, client.namespace, "images", "ls", "-q") == []


async def test_gc_labels_as_containerd_sets_them(client: Client, registry: Registry) -> None:
    image = await pull(client, f"{registry.host}/t/bb:multi")
    source = {f"containerd.io/distribution.source.{registry.host}": "t/bb"}
    index = await client.content.info(image.target.digest)
    gc = "containerd.io/gc.ref"
    assert dict(index.labels) == {f"{gc}.content.m.0": image.manifest.digest, **source}
    manifest = await client.content.info(image.manifest.digest)
    expected = {f"{gc}.content.config": image.config_descriptor.digest, **source}
    expected |= {f"{gc}.content.l.{i}": d.digest for i, d in enumerate(image.layers)}
    assert dict(manifest.labels) == expected
    config = await client.content.info(image.config_descriptor.digest)
    assert dict(config.labels) == {
        "containerd.io/gc.ref.snapshot.overlayfs": image.chain_id,
        **source,
    }
    for layer, diff_id in zip(image.layers, image.config.diff_ids, strict=True):
        info = await client.content.info(layer.digest)
        assert dict(info.labels) == {"containerd.io/uncompressed": diff_id, **source}
    await remove_image(client, image.name, sync=True)


async def test_index_picks_the_platform(client: Client, registry: Registry) -> None:
    amd = await pull(client, f"{registry.host}/t/bb:multi", platform="linux/amd64")
    assert amd.manifest.digest == registry.image.manifest.digest
    assert amd.config.architecture == "amd64"
    # Only the platform's manifest is fetched.
    assert not await client.content.exists(registry.arm.manifest.digest)
    with pytest.raises(ImageError, match="the manifest for linux/arm64 was not pulled"):
        await resolve_image(client, amd.name, platform="linux/arm64")
    await remove_image(client, amd.name, sync=True)


async def test_wrong_platform_fails_clearly_and_leaves_nothing(
    client: Client, registry: Registry
) -> None:
    with pytest.raises(PlatformNotFound) as caught:
        await pull(client, f"{registry.host}/t/bb:multi", platform=Platform.parse("linux/s390x"))
    assert str(caught.value) == (
        "no manifest for platform linux/s390x (the image has: linux/amd64, linux/arm64)"
    )
    # A single manifest is checked against its config's os and architecture.
    with pytest.raises(PlatformNotFound) as caught:
        await pull(client, f"{registry.host}/t/bb:1", platform=Platform.parse("linux/arm64"))
    assert (
        str(caught.value) == f"{registry.host}/t/bb:1 is an image for linux/amd64, not linux/arm64"
    )
    assert await gc_and_list(client) == ([], [])


async def test_docker_v2s2_manifest(client: Client, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/t/bb:v2s2"
    image = await pull(client, ref)
    assert image.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert image.config.diff_ids == tuple(registry.image.diff_ids)
    out, code = await run_from_image(client, tmp_path, "v2s2", ref, ["sh", "-c", "echo $0", "ok"])
    assert (out, code) == (b"ok\n", 0)
    await remove_image(client, ref, sync=True)


async def test_second_pull_downloads_nothing(client: Client, registry: Registry) -> None:
    ref = f"{registry.host}/t/bb:1"
    await pull(client, ref)
    seen: list[PullProgress] = []
    digest_ref = f"{registry.host}/t/bb@{registry.image.manifest.digest}"
    image = await pull(client, digest_ref, progress=seen.append)
    assert image.name == digest_ref
    assert {p.status for p in seen} == {PullStatus.WAITING, PullStatus.EXISTS, PullStatus.UNPACKED}
    await remove_image(client, ref)
    await remove_image(client, digest_ref, sync=True)


async def test_image_config_defaults(client: Client, registry: Registry) -> None:
    image = await pull(client, f"{registry.host}/t/bb:1")
    config = (await resolve_image(client, image.name)).config
    assert config.args == ("sh", "-c", "echo $GREETING")
    assert config.env_dict()["GREETING"] == "hi"
    assert (config.working_dir, config.user, config.stop_signal) == ("/tmp", "root", "SIGQUIT")
    assert config.exposed_ports == ("53/udp", "80/tcp")
    await remove_image(client, image.name, sync=True)


async def test_corrupted_blob_fails_with_digest_error_and_leaves_nothing(
    client: Client, registry: Registry
) -> None:
    layer = registry.corrupt.layers[-1]
    path = registry.process.blob_path(layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch) as caught:
        await pull(client, f"{registry.host}/t/corrupt:1")
    assert layer.digest in str(caught.value)
    assert "\n" not in str(caught.value)
    assert await gc_and_list(client) == ([], [])
    assert await client.images.list() == []


async def test_cancelled_pull_leaves_nothing_gc_keeps(client: Client, registry: Registry) -> None:
    started = anyio.Event()

    def progress(p: PullProgress) -> None:
        if p.status is PullStatus.DOWNLOADING and p.done > 0:
            started.set()

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await pull(client, f"{registry.host}/t/bb:1", progress=progress, concurrency=1)

        tg.start_soon(run)
        with anyio.fail_after(WAIT):
            await started.wait()
        tg.cancel_scope.cancel()
    assert await client.leases.list() == []
    assert await gc_and_list(client) == ([], [])


async def test_prune_keeps_images_containers_use(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    used = await pull(client, f"{registry.host}/t/bb:1")
    unused = await pull(client, f"{registry.host}/t/bb:v2s2")
    spec = oci_spec(tmp_path, ["true"])
    container = await client.create_container("user", spec, image=used.name)
    try:
        assert await prune_images(client, sync=True) == [unused.name]
        assert [i.name for i in await client.images.list()] == [used.name]
    finally:
        await container.delete()
    await remove_image(client, used.name, sync=True)


async def test_missing_tag_is_a_registry_error(client: Client, registry: Registry) -> None:
    with pytest.raises(RegistryError) as caught:
        await pull(client, f"{registry.host}/t/bb:nope")
    assert caught.value.status == 404
    assert "MANIFEST_UNKNOWN" in str(caught.value)


@pytest.fixture
async def redirector(registry: Registry) -> AsyncIterator[str]:
    """A loopback HTTP server that answers every request with a 307 to the
    registry (another host:port), as registries do for blobs on a CDN."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            request = b""
            with anyio.fail_after(WAIT):
                while b"\r\n\r\n" not in request:
                    request += await stream.receive()
            path = request.split(b" ", 2)[1].decode()
            await stream.send(
                b"HTTP/1.1 307 Temporary Redirect\r\n"
                + f"Location: http://{registry.host}{path}\r\n".encode()
                + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def test_pull_follows_307_to_another_host(
    client: Client, registry: Registry, redirector: str
) -> None:
    async with RegistryClient() as http:
        image = await pull(client, f"{redirector}/t/bb:1", registry=http)
    assert image.manifest.digest == registry.image.manifest.digest
    assert await client.snapshots.exists(image.chain_id)
    await remove_image(client, image.name, sync=True)


async def test_import_skopeo_oci_archive(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    archive = tmp_path / "oci.tar"
    skopeo_copy(f"oci:{registry.layout}:1", f"oci-archive:{archive}:localhost/imported:1")
    [image] = await import_archive(client, archive)
    assert image.name == "localhost/imported:1"
    assert image.manifest.digest == registry.image.manifest.digest
    args = ["cat", "/hello.txt"]
    out, code = await run_from_image(client, tmp_path, "oci-import", image.name, args)
    assert (out, code) == (b"hello from the image\n", 0)
    await remove_image(client, image.name, sync=True)


async def test_import_skopeo_docker_archive(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    archive = tmp_path / "docker.tar"
    skopeo_copy(f"oci:{registry.layout}:1", f"docker-archive:{archive}:t/dock:2")
    [image] = await import_archive(client, archive)
    assert image.name == "docker.io/t/dock:2"
    assert image.target.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert image.config.diff_ids == tuple(registry.image.diff_ids)
    out, code = await run_from_image(client, tmp_path, "docker-import", "t/dock:2", ["echo", "hi"])
    assert (out, code) == (b"hi\n", 0)
    await remove_image(client, image.name, sync=True)


async def test_save_is_an_oci_archive_ctr_and_we_import(
    client: Client, registry: Registry, containerd: ContainerdProcess, tmp_path: Path
) -> None:
    pulled = await pull(client, f"{registry.host}/t/bb:multi")
    archive = tmp_path / "saved.tar"
    top = await save(client, pulled.name, archive)
    # Only amd64 was pulled: the archive holds its manifest, not the index.
    assert top.digest == pulled.manifest.digest
    await remove_image(client, pulled.name, sync=True)
    assert await gc_and_list(client) == ([], [])

    [image] = await import_archive(client, archive)
    assert (image.name, image.digest) == (pulled.name, pulled.manifest.digest)
    out, code = await run_from_image(client, tmp_path, "saved", image.name, ["echo", "hi"])
    assert (out, code) == (b"hi\n", 0)
    await remove_image(client, image.name, sync=True)

    namespace = f"{client.namespace}-ctr"
    ctr(containerd, namespace, "images", "import", "--no-unpack", str(archive))
    try:
        assert ctr(containerd, namespace, "images", "ls", "-q") == [pulled.name]
    finally:
        ctr(containerd, namespace, "images", "rm", "--sync", pulled.name)
        ctr(containerd, namespace, "namespaces", "rm", namespace)


async def test_import_of_a_non_archive_is_refused(client: Client, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    with pytest.raises(InvalidArgument, match="not a readable tar archive"):
        await import_archive(client, junk)


async def test_rootfs_of_an_image_not_yet_unpacked(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    archive = tmp_path / "oci.tar"
    skopeo_copy(f"oci:{registry.layout}:1", f"oci-archive:{archive}:localhost/lazy:1")
    [image] = await import_archive(client, archive, unpack_layers=False)
    assert not await client.snapshots.exists(image.chain_id)
    out, code = await run_from_image(client, tmp_path, "lazy", image.name, ["echo", "hi"])
    assert (out, code) == (b"hi\n", 0)
    # The image holds its unpacked layers: a GC keeps them.
    await client.leases.collect_garbage()
    assert await client.snapshots.exists(image.chain_id)
    config = await client.content.info(image.config_descriptor.digest)
    assert config.labels["containerd.io/gc.ref.snapshot.overlayfs"] == image.chain_id
    await remove_image(client, image.name)
    assert await gc_and_list(client) == ([], [])


async def test_rootfs_needs_a_lease(client: Client, registry: Registry) -> None:
    image = await pull(client, f"{registry.host}/t/bb:1")
    with pytest.raises(InvalidArgument, match="leased"):
        await prepare_rootfs(client.stores, "nolease", image)
    await remove_image(client, image.name, sync=True)


async def test_the_client_alone_pulls_and_runs_an_image(client: Client, registry: Registry) -> None:
    ref = f"{registry.host}/t/bb:1"
    image = await client.pull(ref)
    spec = oci_spec(IMAGE_ROOTFS, ["cat", "/hello.txt"])
    container = await client.create_container("fromimage", spec, image=ref)
    assert (container.info.image, container.info.snapshot_key) == (image.name, "fromimage")
    assert [s.name for s in await client.snapshots.list() if s.name == "fromimage"] == ["fromimage"]
    io = FifoIO.create(client.fifo_dir, "fromimage")
    task = await container.new_task(io)  # its snapshot's mounts, found by itself
    await task.start()
    with anyio.fail_after(WAIT):
        out = await io.stdout_reader.read_all()
        assert (await task.wait()).code == 0
    await task.delete()
    assert out == b"hello from the image\n"
    await container.delete()  # and its snapshot with it
    assert "fromimage" not in [s.name for s in await client.snapshots.list()]
    with pytest.raises(NotFound):
        await client.create_container("nope", spec, image=f"{registry.host}/t/absent:1")
    assert "nope" not in [s.name for s in await client.snapshots.list()]
    await remove_image(client, ref, sync=True)


async def test_content_write_odd_pieces_wrong_size(client: Client) -> None:
    import hashlib

    blob = os.urandom((3 << 20) + 12345)  # four WRITE messages, the last short
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    async with client.lease() as leased:
        for data, message in ((blob[:-1], "bytes, not"), (blob + b"x", "longer than")):
            with pytest.raises(DigestMismatch, match=message):
                await leased.content.write(
                    "odd", pieces(data, 99991), digest=digest, size=len(blob)
                )
        assert not await leased.content.exists(digest)
        assert await leased.content.write("odd", pieces(blob, 99991), digest=digest, size=len(blob))
        got = b"".join([part async for part in leased.content.read(digest)])
        assert got == blob
        assert not await leased.content.write("odd", pieces(blob, 7), digest=digest, size=len(blob))


async def test_a_present_blob_is_held_by_the_lease(
    client: Client, containerd: ContainerdProcess
) -> None:
    """A pull or import finds a blob present and skips it: it must hold it in
    its lease, or a garbage collection (after an `rmi`) takes it before the
    image that refers to it is written (seen once: an import after an rmi
    failed with "content digest ...: not found")."""
    data = os.urandom(4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with client.lease() as first:
        assert await first.content.write_bytes("held-blob", data, digest=digest)
    # Referred to by nothing now: the next collection takes it, unless held.
    async with client.lease() as leased:
        assert await leased.content.hold(digest, len(data))
        await client.leases.collect_garbage()
        assert await client.content.exists(digest)
        absent = "sha256:" + hashlib.sha256(b"never written").hexdigest()
        assert not await leased.content.hold(absent, 13)
    content, _ = await gc_and_list(client)
    assert digest not in content and absent not in content
    # The absent one's write was aborted: no ingest is left.
    active = ctr(containerd, client.namespace, "content", "active")
    assert not [word for word in active if word.startswith("hold-")], active
