"""Network namespaces pinned by a bind mount at a path of ours.

Work inside a namespace (making it, bringing its loopback up, reading its
counters) runs in a short-lived thread of its own: ``unshare`` and ``setns``
change only the calling thread's namespace, and the thread ends with it, so
no other thread of the daemon ever runs inside a container's network.
Never pyroute2's ``netns=``: it forks the daemon, and the child, signalled to
stop, writes the signal into the parent's asyncio wake-up pipe: the daemon
then believes it got SIGTERM (seen here).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
#: statfs(2) f_type of a namespace file (nsfs).
NSFS_MAGIC = 0x6E736673

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def _check(result: int, what: str, path: Path | str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))


def is_pinned(path: Path) -> bool:
    """Whether ``path`` holds a live network namespace (not a stale file a
    reboot left on a disk-backed /run)."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return False
    return bool(buf.f_type == NSFS_MAGIC)


def _unescape(field: bytes) -> bytes:
    """mountinfo's octal escapes (a space is ``\\040``)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` (through any links above it) is a mount point."""
    target = os.fsencode(os.path.realpath(path))
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as f:
        return any(_unescape(line.split(b" ")[4]) == target for line in f)
    return False


def share_dir(directory: Path) -> None:
    """Make ``directory`` a shared mount of itself (as iproute2 does for
    /run/netns), so that an unpin reaches every mount namespace that got a
    copy of a pin, and no copy keeps a namespace alive."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not is_mount_point(directory):
        _check(_libc.mount(os.fsencode(directory), os.fsencode(directory), None,
                           MS_BIND | MS_REC, None), "bind", directory)  # fmt: skip
    _check(_libc.mount(b"none", os.fsencode(directory), None, MS_SHARED | MS_REC, None),
           "make shared", directory)  # fmt: skip


SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _in_thread(name: str, body: Callable[[], _T]) -> _T:
    """Run ``body`` in a new thread (whose namespaces it may change) and
    return its result or raise its exception."""
    out: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            out.append(body())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return out[0]


def _loopback_up() -> None:
    """Bring ``lo`` up in the calling thread's namespace (runc does that only
    in namespaces it makes itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def pin(path: Path) -> None:
    """Create a new network namespace with its loopback up and bind it at
    ``path`` (which must not exist). Blocking: call it in a worker thread."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)

    def inside() -> None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare", path)
        _loopback_up()
        _check(_libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), None,
                           MS_BIND, None), "bind", path)  # fmt: skip

    try:
        _in_thread("netns-pin", inside)
    except BaseException:
        with contextlib.suppress(OSError):
            _libc.umount2(os.fsencode(path), MNT_DETACH)
            path.unlink()
        raise


def run_in(path: Path, body: Callable[[], _T]) -> _T:
    """Run ``body`` inside the namespace pinned at ``path`` (in a thread of
    its own; blocking: call it in a worker thread)."""

    def inside() -> _T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), "setns", path)
        finally:
            os.close(fd)
        return body()

    return _in_thread("netns-run", inside)


def unpin(path: Path) -> None:
    """Unbind and remove a pinned namespace; no error if it is not there.
    The namespace itself ends when its last process and pin are gone."""
    result = _libc.umount2(os.fsencode(path), MNT_DETACH)
    if result != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(result, "unmount", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def unshare_dir(directory: Path) -> None:
    """Undo :func:`share_dir` (when no namespace is pinned in it any more)."""
    result = _libc.umount2(os.fsencode(directory), MNT_DETACH)
    if result != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(result, "unmount", directory)


def unpin_all(directory: Path) -> None:
    """Unpin every namespace in ``directory`` and undo :func:`share_dir` (for
    tests and benchmarks cleaning up after a daemon whose containers are gone)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        unpin(entry)
    while is_mount_point(directory):
        unshare_dir(directory)
