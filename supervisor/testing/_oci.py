"""Test images written as an OCI layout with tarfile, gzip and hashlib."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
_BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")

#: A layer: path in the image -> file bytes, or ("symlink", target), or None for a directory.
LayerFiles = Mapping[str, "bytes | tuple[str, str] | None"]


@dataclass
class Blob:
    media_type: str
    data: bytes
    platform: dict[str, str] | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": len(self.data)}  # fmt: skip
        if self.platform:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = self.annotations
        return out


def layer_tar(files: LayerFiles) -> bytes:
    """An uncompressed layer tar, entries sorted, times and owners zero."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files):
            value = files[path]
            info = tarfile.TarInfo(path.strip("/"))
            info.mtime = 0
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(value, tuple):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, value[1], 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o755
                tar.addfile(info, io.BytesIO(value))
    return out.getvalue()


@dataclass
class BuiltImage:
    """One image for one platform: its gzip layers, config and manifest."""

    layers: list[Blob]
    diff_ids: list[str]
    config: Blob
    manifest: Blob


def build_image(
    layers: Sequence[LayerFiles],
    *,
    config: Mapping[str, Any] | None = None,
    architecture: str = "amd64",
    compresslevel: int = 1,
) -> BuiltImage:
    """An OCI image of ``layers`` (gzip), its container ``config`` (Env, Cmd...)."""
    blobs, diff_ids = [], []
    for files in layers:
        tar = layer_tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        data = gzip.compress(tar, compresslevel=compresslevel, mtime=0)
        blobs.append(Blob(OCI_LAYER_GZIP, data))
    config_json = {
        "architecture": architecture,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_blob = Blob(OCI_CONFIG, json.dumps(config_json).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [b.descriptor() for b in blobs],
    }
    manifest_blob = Blob(OCI_MANIFEST, json.dumps(manifest).encode(),
                         platform={"architecture": architecture, "os": "linux"})  # fmt: skip
    return BuiltImage(blobs, diff_ids, config_blob, manifest_blob)


def busybox_layers(extra: LayerFiles | None = None) -> list[LayerFiles]:
    """Three layers: busybox itself; its applet links and the usual
    directories; /etc files (and ``extra``)."""
    busybox = next((p for p in _BUSYBOX if os.path.exists(p)), None)
    if busybox is None:
        raise FileNotFoundError("busybox is not installed (Debian: busybox-static)")
    applets = subprocess.run(
        [busybox, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    links: dict[str, bytes | tuple[str, str] | None] = {
        f"bin/{a}": ("symlink", "busybox") for a in applets if a != "busybox"
    }
    for directory in ("proc", "dev", "sys", "tmp", "etc", "root"):
        links[directory] = None
    etc: dict[str, bytes | tuple[str, str] | None] = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
        **(extra or {}),
    }
    return [{"bin": None, "bin/busybox": Path(busybox).read_bytes()}, links, etc]


def write_layout(
    directory: str | os.PathLike[str], tags: Mapping[str, Sequence[BuiltImage]]
) -> Path:
    """An OCI layout: each tag names one image's manifest or, for several
    (one per platform), an index of them."""
    root = Path(directory)
    blobs_dir = root / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []

    def put(blob: Blob) -> None:
        (blobs_dir / blob.digest.removeprefix("sha256:")).write_bytes(blob.data)

    for tag, images in tags.items():
        for image in images:
            for blob in (*image.layers, image.config, image.manifest):
                put(blob)
        if len(images) == 1:
            top = Blob(OCI_MANIFEST, images[0].manifest.data)
        else:
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                     "manifests": [i.manifest.descriptor() for i in images]}  # fmt: skip
            top = Blob(OCI_INDEX, json.dumps(index).encode())
            put(top)
        top.annotations = {REF_NAME: tag}
        entries.append(top.descriptor())
    index_json = {"schemaVersion": 2, "manifests": entries}
    (root / "index.json").write_text(json.dumps(index_json))
    return root
