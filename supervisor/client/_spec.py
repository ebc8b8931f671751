"""A sound default OCI runtime spec, close to what Docker gives a container."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from ._rootfs import read_in_root

OCI_VERSION = "1.0.2"
#: The ``rootfs`` of a container whose root is a snapshot: the task's rootfs
#: mounts, made by the shim in the bundle (``root.path`` relative to it).
IMAGE_ROOTFS = "rootfs"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Docker's default capability set.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


@dataclass(frozen=True, slots=True)
class Mount:
    """An extra mount; by default a read-write recursive bind of ``source``."""

    source: str
    destination: str
    type: str = "bind"
    options: tuple[str, ...] = ("rbind", "rw")

    def to_oci(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
            "options": list(self.options),
        }


def _default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]  # fmt: skip


def _lookup(read: Reader, where: str, table: str, name: str) -> tuple[int, int]:
    """Find ``name`` in the rootfs's /etc/passwd or /etc/group: (id, gid).

    The container may have written those files: ``read`` reads inside the
    rootfs, and only small regular files (see :func:`read_in_root`).
    """
    kind = "user" if table == "passwd" else "group"
    try:
        lines = read(f"etc/{table}").decode(errors="replace").splitlines()
    except (FileNotFoundError, NotADirectoryError):
        lines = []
    except InvalidArgument as exc:
        raise InvalidArgument(f"{kind} {name!r}: {exc}") from None
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name:
            try:
                gid = int(fields[3]) if table == "passwd" else 0
                return int(fields[2]), gid
            except (ValueError, IndexError):
                break

    raise InvalidArgument(f"{kind} {name!r} is not in {where}/etc/{table}")


#: Reads a file by its path relative to a container's root.
Reader = Callable[[str], bytes]

#: Linux ids are 32 bits; (uid_t)-1 means "none" to the kernel.
_MAX_ID = 2**32 - 2
#: The most CPUs Linux supports (NR_CPUS at its largest).
MAX_CPUS = 8192


def _id_number(text: str, what: str) -> int:
    """A numeric uid or gid: ASCII digits (``"²".isdigit()`` holds too), 32 bits."""
    if not text.isascii() or int(text) > _MAX_ID:
        raise InvalidArgument(f"{what} {text!r} is not a number from 0 to {_MAX_ID}")
    return int(text)


def parse_user(
    user: str, rootfs: Path | None = None, *, read: Reader | None = None, where: str = ""
) -> dict[str, int]:
    """Turn ``uid[:gid]`` or ``name[:group]`` into an OCI user object. Names
    are read from ``rootfs`` (or with ``read``, which reads a path relative to
    the container's root, shown as ``where``)."""
    if read is None and rootfs is not None:
        root = rootfs
        read, where = (lambda relative: read_in_root(root, relative)), str(rootfs)
    name, _, group = user.partition(":")
    if not name:
        raise InvalidArgument(f"user {user!r} is empty")
    if name.isdigit():
        uid, gid = _id_number(name, "user"), 0
    elif read is not None:
        uid, gid = _lookup(read, where, "passwd", name)
    else:
        raise InvalidArgument(f"user {name!r} must be numeric here")
    if group:
        if group.isdigit():
            gid = _id_number(group, "group")
        elif read is not None:
            gid = _lookup(read, where, "group", group)[0]
        else:
            raise InvalidArgument(f"group {group!r} must be numeric here")
    return {"uid": uid, "gid": gid}


def _check_args(args: Sequence[str]) -> list[str]:
    if isinstance(args, str | bytes):
        raise InvalidArgument("args must be a list of strings, not one string")
    out = list(args)
    if not out or not all(isinstance(a, str) for a in out) or not out[0]:
        raise InvalidArgument("args must be a non-empty list of strings")
    return out


def _check_env(env: Mapping[str, str] | Iterable[str]) -> list[str]:
    items = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise InvalidArgument(f"environment entry {item!r} is not NAME=VALUE")
    if not any(item.startswith("PATH=") for item in items):
        items.insert(0, f"PATH={DEFAULT_PATH}")
    return items


def process_spec(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | Iterable[str] = (),
    cwd: str = "/",
    user: str = "0:0",
    terminal: bool = False,
    capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
    nofile: int = 1024,
    rootfs: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """An OCI process object (for a container or an exec).

    ``user`` names a user and group by id, or by name when ``rootfs`` is given.
    """
    if not cwd.startswith("/"):
        raise InvalidArgument(f"cwd {cwd!r} must be an absolute path")
    if nofile <= 0:
        raise InvalidArgument(f"nofile must be positive, not {nofile}")
    caps = list(capabilities)
    return {
        "terminal": terminal,
        "user": parse_user(user, Path(rootfs) if rootfs is not None else None),
        "args": _check_args(args),
        "env": _check_env(env),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": True,
    }


def oci_spec(
    rootfs: str | os.PathLike[str],
    args: Sequence[str],
    *,
    env: Mapping[str, str] | Iterable[str] = (),
    cwd: str = "/",
    user: str = "0:0",
    hostname: str = "",
    terminal: bool = False,
    readonly_rootfs: bool = False,
    memory_limit: int | None = None,
    cpus: float | None = None,
    pids_limit: int | None = None,
    mounts: Iterable[Mount] = (),
    cgroups_path: str | None = None,
    netns_path: str | None = None,
    host_network: bool = False,
    nofile: int = 1024,
    capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
) -> dict[str, Any]:
    """Build an OCI runtime spec for ``args`` running in the ``rootfs`` directory
    (or, given :data:`IMAGE_ROOTFS`, on the mounts of the container's snapshot).

    New pid, ipc, uts, mount and network namespaces (``host_network`` keeps the
    host's, ``netns_path`` joins an existing one); Docker's capabilities, masked
    and read-only /proc paths; no_new_privileges. ``cgroups_path`` defaults to
    ``/<namespace>/<container id>``, filled in by ``Client.create_container``.
    Raises :class:`InvalidArgument` for anything unsound, before any call.
    A ``user`` given by name reads the rootfs's /etc/passwd (blocking, bounded):
    in async code, build the spec in a thread.
    """
    root = Path(rootfs)
    snapshot = str(rootfs) == IMAGE_ROOTFS
    if not snapshot and not root.is_absolute():
        raise InvalidArgument(f"rootfs {str(root)!r} must be an absolute path")
    try:
        is_dir = snapshot or root.is_dir()
    except OSError as exc:  # a name too long, a loop of links
        raise InvalidArgument(f"rootfs {str(root)!r}: {exc.strerror or exc}") from None
    if not is_dir:
        raise InvalidArgument(f"rootfs {str(root)!r} is not a directory")
    process = process_spec(
        args, env=env, cwd=cwd, user=user, terminal=terminal,
        capabilities=capabilities, nofile=nofile, rootfs=None if snapshot else root,
    )  # fmt: skip

    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if memory_limit is not None:
        if memory_limit < 4 * 1024 * 1024:
            raise InvalidArgument(f"memory limit {memory_limit} is below the 4 MiB minimum")
        resources["memory"] = {"limit": memory_limit}
    if cpus is not None:
        if not 0 < cpus <= MAX_CPUS:
            raise InvalidArgument(f"cpus must be more than 0 and at most {MAX_CPUS}, not {cpus}")
        resources["cpu"] = {"period": 100_000, "quota": round(cpus * 100_000)}
    if pids_limit is not None:
        if pids_limit <= 0:
            raise InvalidArgument(f"pids limit must be positive, not {pids_limit}")
        resources["pids"] = {"limit": pids_limit}

    oci_mounts = _default_mounts()
    for mount in mounts:
        if not mount.destination.startswith("/"):
            raise InvalidArgument(f"mount destination {mount.destination!r} must be absolute")
        if mount.type == "bind" and not os.path.exists(mount.source):
            raise InvalidArgument(f"bind mount source {mount.source!r} does not exist")
        oci_mounts.append(mount.to_oci())

    namespaces: list[dict[str, str]] = [
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
    ]  # fmt: skip
    if netns_path is not None:
        namespaces.append({"type": "network", "path": netns_path})
    elif not host_network:
        namespaces.append({"type": "network"})

    linux: dict[str, Any] = {
        "resources": resources,
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(root), "readonly": readonly_rootfs},
        "mounts": oci_mounts,
        "linux": linux,
    }
    if hostname:
        spec["hostname"] = hostname
    return spec
