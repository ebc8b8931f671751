"""Typed async client for containerd: containers, tasks, exec processes, stdio;
content, images, snapshots and leases."""

from __future__ import annotations

from .._lazy import load
from ._client import DEFAULT_ADDRESS as DEFAULT_ADDRESS
from ._client import DEFAULT_FIFO_DIR as DEFAULT_FIFO_DIR
from ._client import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE
from ._client import DEFAULT_RUNTIME as DEFAULT_RUNTIME
from ._client import Client as Client
from ._client import Container as Container
from ._ids import validate_id as validate_id
from ._io import FifoIO as FifoIO
from ._io import FifoReader as FifoReader
from ._io import FifoWriter as FifoWriter
from ._io import FileIO as FileIO
from ._io import NullIO as NullIO
from ._io import ProcessIO as ProcessIO
from ._spec import DEFAULT_CAPABILITIES as DEFAULT_CAPABILITIES
from ._spec import IMAGE_ROOTFS as IMAGE_ROOTFS
from ._spec import Mount as Mount
from ._spec import oci_spec as oci_spec
from ._spec import process_spec as process_spec
from ._tasks import Process as Process
from ._tasks import Task as Task
from ._types import DEFAULT_SNAPSHOTTER as DEFAULT_SNAPSHOTTER
from ._types import ContainerInfo as ContainerInfo
from ._types import ExitStatus as ExitStatus
from ._types import ProcessInfo as ProcessInfo
from ._types import ProcessState as ProcessState
from ._types import Resources as Resources
from ._types import RuncOptions as RuncOptions
from ._types import Stats as Stats
from ._types import TaskStatus as TaskStatus
from ._types import Version as Version

TYPE_CHECKING = False

# Loaded on first use: their generated stubs cost a daemon that never touches
# images a tenth of a second at every start.
_LAZY = {
    "ContentStore": "._content",
    "ImageStore": "._images",
    "LeaseInfo": "._leases",
    "Leases": "._leases",
    "Stores": "._leases",
    "Differ": "._snapshots",
    "Snapshots": "._snapshots",
    "ContentInfo": "._store_types",
    "Descriptor": "._store_types",
    "ImageRecord": "._store_types",
    "RootfsMount": "._store_types",
    "SnapshotInfo": "._store_types",
    "SnapshotKind": "._store_types",
}

if TYPE_CHECKING:
    from typing import Any

    from ._content import ContentStore as ContentStore
    from ._images import ImageStore as ImageStore
    from ._leases import LeaseInfo as LeaseInfo
    from ._leases import Leases as Leases
    from ._leases import Stores as Stores
    from ._snapshots import Differ as Differ
    from ._snapshots import Snapshots as Snapshots
    from ._store_types import ContentInfo as ContentInfo
    from ._store_types import Descriptor as Descriptor
    from ._store_types import ImageRecord as ImageRecord
    from ._store_types import RootfsMount as RootfsMount
    from ._store_types import SnapshotInfo as SnapshotInfo
    from ._store_types import SnapshotKind as SnapshotKind


def __getattr__(name: str) -> Any:
    return load(globals(), _LAZY, name)


__all__ = (
    "DEFAULT_ADDRESS",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_FIFO_DIR",
    "DEFAULT_NAMESPACE",
    "DEFAULT_RUNTIME",
    "DEFAULT_SNAPSHOTTER",
    "IMAGE_ROOTFS",
    "Client",
    "Container",
    "ContainerInfo",
    "ContentInfo",
    "ContentStore",
    "Descriptor",
    "Differ",
    "ExitStatus",
    "FifoIO",
    "FifoReader",
    "FifoWriter",
    "FileIO",
    "ImageRecord",
    "ImageStore",
    "LeaseInfo",
    "Leases",
    "Mount",
    "NullIO",
    "Process",
    "ProcessIO",
    "ProcessInfo",
    "ProcessState",
    "Resources",
    "RootfsMount",
    "RuncOptions",
    "SnapshotInfo",
    "SnapshotKind",
    "Snapshots",
    "Stats",
    "Stores",
    "Task",
    "TaskStatus",
    "Version",
    "oci_spec",
    "process_spec",
    "validate_id",
)
