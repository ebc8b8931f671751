"""Helpers for testing against a real containerd: a private daemon and a busybox rootfs.

Used by this project's tests and benchmarks, and usable by embedders' tests.
"""

from ._containerd import ContainerdProcess as ContainerdProcess
from ._containerd import namespace_leftovers as namespace_leftovers
from ._containerd import namespace_processes as namespace_processes
from ._containerd import remove_namespace_dirs as remove_namespace_dirs
from ._containerd import start_containerd as start_containerd
from ._rootfs import busybox_rootfs as busybox_rootfs

__all__ = (
    "ContainerdProcess",
    "busybox_rootfs",
    "namespace_leftovers",
    "namespace_processes",
    "remove_namespace_dirs",
    "start_containerd",
)
