"""Helpers for testing against a real containerd: a private daemon, a busybox
rootfs, a loopback image registry and test images.

Used by this project's tests and benchmarks, and usable by embedders' tests.
"""

from ._containerd import ContainerdProcess as ContainerdProcess
from ._containerd import namespace_leftovers as namespace_leftovers
from ._containerd import namespace_processes as namespace_processes
from ._containerd import remove_namespace_dirs as remove_namespace_dirs
from ._containerd import start_containerd as start_containerd
from ._oci import BuiltImage as BuiltImage
from ._oci import build_image as build_image
from ._oci import busybox_layers as busybox_layers
from ._oci import layer_tar as layer_tar
from ._oci import write_layout as write_layout
from ._registry import RegistryProcess as RegistryProcess
from ._registry import skopeo_copy as skopeo_copy
from ._registry import start_registry as start_registry
from ._rootfs import busybox_rootfs as busybox_rootfs

__all__ = (
    "BuiltImage",
    "ContainerdProcess",
    "RegistryProcess",
    "build_image",
    "busybox_layers",
    "busybox_rootfs",
    "layer_tar",
    "namespace_leftovers",
    "namespace_processes",
    "remove_namespace_dirs",
    "skopeo_copy",
    "start_containerd",
    "start_registry",
    "write_layout",
)
