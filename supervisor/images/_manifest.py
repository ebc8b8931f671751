"""OCI and Docker manifests, indexes and platforms: parsing and selection."""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..client import Descriptor
from ..errors import ImageError, InvalidArgument, PlatformNotFound

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
#: What a registry is asked for: without the OCI types, registry 2.8 answers
#: 404 for OCI manifests.
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
LAYER_TYPES = (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_FOREIGN_LAYER,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
)
#: Manifests, indexes and configs are read whole; a bigger one is refused.
MAX_MANIFEST_SIZE = 4 << 20

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS, CPU architecture and optional variant: ``linux/amd64``, ``linux/arm/v7``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``; a lone ``arch`` means Linux."""
        parts = text.strip().lower().split("/")
        if len(parts) == 1:
            parts = ["linux", *parts]
        if len(parts) > 3 or not all(parts):
            raise InvalidArgument(f"platform {text!r}: expected os/arch[/variant]")
        arch = _ARCH.get(parts[1], parts[1])
        return cls(parts[0], arch, parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform."""
        machine = _platform.machine().lower()
        return cls("linux", _ARCH.get(machine, machine))

    @classmethod
    def from_oci(cls, value: Mapping[str, Any] | None) -> Platform | None:
        if not isinstance(value, Mapping):
            return None
        return cls(
            str(value.get("os", "")), str(value.get("architecture", "")),
            str(value.get("variant", "") or ""),
        )  # fmt: skip

    def matches(self, other: Platform) -> bool:
        """Whether an image for ``other`` runs as asked for by this platform
        (no variant asked for: any, as docker does for arm64's v8)."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return not self.variant or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, Mapping):
        raise ImageError(f"{what}: descriptor is not an object")
    digest, size = value.get("digest"), value.get("size")
    media_type = value.get("mediaType", "")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise ImageError(f"{what}: descriptor without a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: descriptor {digest} has no valid size")
    annotations = value.get("annotations") or {}
    if not isinstance(media_type, str) or not isinstance(annotations, Mapping):
        raise ImageError(f"{what}: descriptor {digest} is malformed")
    platform = value.get("platform")
    return Descriptor(
        media_type, digest, size, {str(k): str(v) for k, v in annotations.items()},
        dict(platform) if isinstance(platform, Mapping) else None,
    )  # fmt: skip


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def media_type_of(data: bytes, declared: str = "") -> str:
    """A manifest's or index's media type: its ``mediaType`` field, else what
    the registry declared, else guessed from its shape (OCI may omit it)."""
    value = _load(data, "manifest")
    media_type = value.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if declared in (*MANIFEST_TYPES, *INDEX_TYPES):
        return declared
    return OCI_INDEX if "manifests" in value else OCI_MANIFEST


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest: its config and layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes, media_type: str = "") -> Manifest:
        value = _load(data, "manifest")
        media_type = media_type or media_type_of(data)
        if value.get("schemaVersion") != 2 or media_type not in MANIFEST_TYPES:
            raise ImageError(f"unsupported manifest (media type {media_type or 'unknown'})")
        config = _descriptor(value.get("config"), "manifest config")
        layers = value.get("layers")
        if not isinstance(layers, list):
            raise ImageError("manifest has no layer list")
        parsed = tuple(_descriptor(layer, f"manifest layer {i}") for i, layer in enumerate(layers))
        for layer in parsed:
            if layer.media_type not in LAYER_TYPES:
                raise ImageError(f"layer {layer.digest}: unsupported media type {layer.media_type}")
        return cls(media_type, config, parsed)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (manifest list): one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes, media_type: str = "") -> Index:
        value = _load(data, "index")
        media_type = media_type or media_type_of(data)
        manifests = value.get("manifests")
        if value.get("schemaVersion") != 2 or not isinstance(manifests, list):
            raise ImageError(f"unsupported index (media type {media_type or 'unknown'})")
        return cls(
            media_type, tuple(_descriptor(m, f"index entry {i}") for i, m in enumerate(manifests))
        )

    def select(self, platform: Platform) -> Descriptor:
        """The manifest for ``platform``; :class:`PlatformNotFound` says which exist."""
        for entry in self.manifests:
            found = Platform.from_oci(entry.platform)
            if entry.media_type in (*MANIFEST_TYPES, "") and found and platform.matches(found):
                return entry
        offered = sorted({str(p) for e in self.manifests if (p := Platform.from_oci(e.platform))})
        raise PlatformNotFound(
            f"no manifest for platform {platform} (the image has: {', '.join(offered) or 'none'})"
        )


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What an image's config says a container runs by default, as docker
    reads it: ``docker run IMAGE`` runs ``entrypoint + cmd``."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: Mapping[str, str] | None = None
    os: str = ""
    architecture: str = ""
    created: str = ""
    diff_ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> ImageConfig:
        value = _load(data, "image config")
        config = value.get("config") or {}
        rootfs = value.get("rootfs") or {}
        if not isinstance(config, Mapping) or not isinstance(rootfs, Mapping):
            raise ImageError("image config: 'config' or 'rootfs' is not an object")
        diff_ids = _strings(rootfs.get("diff_ids"), "rootfs.diff_ids")
        ports = config.get("ExposedPorts") or {}
        labels = config.get("Labels") or {}
        if not isinstance(ports, Mapping) or not isinstance(labels, Mapping):
            raise ImageError("image config: ExposedPorts or Labels is not an object")
        return cls(
            entrypoint=_strings(config.get("Entrypoint"), "Entrypoint"),
            cmd=_strings(config.get("Cmd"), "Cmd"),
            env=_strings(config.get("Env"), "Env"),
            working_dir=_string(config.get("WorkingDir"), "WorkingDir"),
            user=_string(config.get("User"), "User"),
            stop_signal=_string(config.get("StopSignal"), "StopSignal"),
            exposed_ports=tuple(sorted(str(p) for p in ports)),
            labels={str(k): str(v) for k, v in labels.items()},
            os=_string(value.get("os"), "os"),
            architecture=_string(value.get("architecture"), "architecture"),
            created=_string(value.get("created"), "created"),
            diff_ids=diff_ids,
        )

    @property
    def args(self) -> tuple[str, ...]:
        """What the container runs when nothing overrides it."""
        return self.entrypoint + self.cmd

    def env_dict(self) -> dict[str, str]:
        """``env`` as a mapping (later entries win)."""
        return dict(item.partition("=")[::2] for item in self.env)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"image config: {what} is not a list of strings")
    return tuple(value)


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageError(f"image config: {what} is not a string")
    return value


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain id of each layer stack: the first layer's diff id, then
    ``sha256(previous chain id + " " + diff id)``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(sha256_digest(f"{out[-1]} {diff_id}".encode()) if out else diff_id)
    return out
