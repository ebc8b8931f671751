"""Images: references, a registry client (httpx), pull, unpack, import, save,
and the snapshots containers run on.

The names below load on first use: a daemon that never touches a registry
does not import httpx (a tenth of a second at every start).
"""

from __future__ import annotations

from .._lazy import load

TYPE_CHECKING = False

_WHERE = {
    "import_archive": "._archive",
    "save": "._archive",
    "Credentials": "._auth",
    "CredentialStore": "._auth",
    "default_config_path": "._auth",
    "save_credentials": "._auth",
    "ImageConfig": "._manifest",
    "Index": "._manifest",
    "Manifest": "._manifest",
    "Platform": "._manifest",
    "chain_ids": "._manifest",
    "DEFAULT_CONCURRENCY": "._pull",
    "PullProgress": "._pull",
    "PullStatus": "._pull",
    "pull": "._pull",
    "Reference": "._reference",
    "normalize": "._reference",
    "parse_reference": "._reference",
    "RegistryClient": "._registry",
    "is_loopback": "._registry",
    "prepare_rootfs": "._rootfs",
    "remove_rootfs": "._rootfs",
    "rootfs_mounts": "._rootfs",
    "Image": "._store",
    "ImageSummary": "._store",
    "list_images": "._store",
    "prune_images": "._store",
    "remove_image": "._store",
    "resolve_image": "._store",
    "unpack": "._unpack",
    "unpack_image": "._unpack",
}

if TYPE_CHECKING:
    from typing import Any

    from ._archive import import_archive as import_archive
    from ._archive import save as save
    from ._auth import Credentials as Credentials
    from ._auth import CredentialStore as CredentialStore
    from ._auth import default_config_path as default_config_path
    from ._auth import save_credentials as save_credentials
    from ._manifest import ImageConfig as ImageConfig
    from ._manifest import Index as Index
    from ._manifest import Manifest as Manifest
    from ._manifest import Platform as Platform
    from ._manifest import chain_ids as chain_ids
    from ._pull import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
    from ._pull import PullProgress as PullProgress
    from ._pull import PullStatus as PullStatus
    from ._pull import pull as pull
    from ._reference import Reference as Reference
    from ._reference import normalize as normalize
    from ._reference import parse_reference as parse_reference
    from ._registry import RegistryClient as RegistryClient
    from ._registry import is_loopback as is_loopback
    from ._rootfs import prepare_rootfs as prepare_rootfs
    from ._rootfs import remove_rootfs as remove_rootfs
    from ._rootfs import rootfs_mounts as rootfs_mounts
    from ._store import Image as Image
    from ._store import ImageSummary as ImageSummary
    from ._store import list_images as list_images
    from ._store import prune_images as prune_images
    from ._store import remove_image as remove_image
    from ._store import resolve_image as resolve_image
    from ._unpack import unpack as unpack
    from ._unpack import unpack_image as unpack_image


def __getattr__(name: str) -> Any:
    return load(globals(), _WHERE, name)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = (
    "DEFAULT_CONCURRENCY",
    "CredentialStore",
    "Credentials",
    "Image",
    "ImageConfig",
    "ImageSummary",
    "Index",
    "Manifest",
    "Platform",
    "PullProgress",
    "PullStatus",
    "Reference",
    "RegistryClient",
    "chain_ids",
    "default_config_path",
    "import_archive",
    "is_loopback",
    "list_images",
    "normalize",
    "parse_reference",
    "prepare_rootfs",
    "prune_images",
    "pull",
    "remove_image",
    "remove_rootfs",
    "resolve_image",
    "rootfs_mounts",
    "save",
    "save_credentials",
    "unpack",
    "unpack_image",
)
