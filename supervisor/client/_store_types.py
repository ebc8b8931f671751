"""Dataclasses of containerd's content, image, snapshot and lease records."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._proto.containerd.services.content import v1 as content_pb
from .._proto.containerd.services.images import v1 as images_pb
from .._proto.containerd.services.snapshots import v1 as snapshots_pb
from .._proto.containerd.types import ContentDescriptor
from .._proto.containerd.types import Mount as MountPb
from ._wire import timestamp


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: Only in an index: the manifest's platform, as in the OCI JSON.
    platform: Mapping[str, Any] | None = None

    def to_wire(self) -> ContentDescriptor:
        return ContentDescriptor(
            media_type=self.media_type,
            digest=self.digest,
            size=self.size,
            annotations=dict(self.annotations),
        )

    @classmethod
    def from_wire(cls, d: ContentDescriptor | None) -> Descriptor:
        if d is None:
            return cls("", "", 0)
        return cls(d.media_type, d.digest, d.size, dict(d.annotations))

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}  # fmt: skip
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        return out


@dataclass(frozen=True, slots=True)
class ContentInfo:
    """A blob in the content store."""

    digest: str
    size: int
    labels: Mapping[str, str]
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_wire(cls, info: content_pb.Info) -> ContentInfo:
        return cls(
            digest=info.digest,
            size=info.size,
            labels=dict(info.labels),
            created_at=timestamp(info.created_at),
            updated_at=timestamp(info.updated_at),
        )


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """containerd's image record: a name and its root descriptor."""

    name: str
    target: Descriptor
    labels: Mapping[str, str]
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_wire(cls, image: images_pb.Image) -> ImageRecord:
        return cls(
            name=image.name,
            target=Descriptor.from_wire(image.target),
            labels=dict(image.labels),
            created_at=timestamp(image.created_at),
            updated_at=timestamp(image.updated_at),
        )


class SnapshotKind(enum.Enum):
    """Whether a snapshot is a read-only view, writable, or a committed layer."""

    UNKNOWN = "unknown"
    VIEW = "view"
    ACTIVE = "active"
    COMMITTED = "committed"


_KINDS = {
    snapshots_pb.Kind.VIEW: SnapshotKind.VIEW,
    snapshots_pb.Kind.ACTIVE: SnapshotKind.ACTIVE,
    snapshots_pb.Kind.COMMITTED: SnapshotKind.COMMITTED,
}


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot: its key (or chain id, once committed), parent and kind."""

    name: str
    parent: str
    kind: SnapshotKind
    labels: Mapping[str, str]
    created_at: datetime | None

    @classmethod
    def from_wire(cls, info: snapshots_pb.Info) -> SnapshotInfo:
        return cls(
            name=info.name,
            parent=info.parent,
            kind=_KINDS.get(info.kind, SnapshotKind.UNKNOWN),
            labels=dict(info.labels),
            created_at=timestamp(info.created_at),
        )


@dataclass(frozen=True, slots=True)
class RootfsMount:
    """A mount a snapshotter gives for a snapshot (e.g. overlay with its
    lowerdir, upperdir and workdir): what a task's rootfs is made of."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def to_wire(self) -> MountPb:
        return MountPb(type=self.type, source=self.source, options=list(self.options))

    @classmethod
    def from_wire(cls, m: MountPb) -> RootfsMount:
        return cls(type=m.type, source=m.source, options=tuple(m.options))
