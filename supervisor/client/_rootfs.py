"""Reading a small file inside a container's rootfs, which the container may
have written.

A container's root can put anything where we expect its ``/etc/passwd``: a
FIFO (an open that never returns), a link to ``/dev/zero`` (a read that never
ends), a link to ``/etc/shadow`` (the host's file, read by the daemon as
root). :func:`read_in_root` resolves the path as if the rootfs were ``/``,
opens nothing but a regular file, and reads a bounded amount.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

from ..errors import InvalidArgument

__all__ = ("MAX_SIZE", "read_in_root")

#: The most :func:`read_in_root` reads: a bigger /etc/passwd is not a sane one.
MAX_SIZE = 1 << 20
#: Symbolic links followed in one lookup by the fallback walk (the kernel's own limit).
MAX_LINKS = 40

# openat2(2), Linux 5.6; Python 3.11 has no os.openat2. 437 on x86_64, arm64
# and every architecture of the unified syscall table.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
}


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def read_in_root(root: Path, path: str, limit: int = MAX_SIZE) -> bytes:
    """The content of ``path`` looked up inside ``root`` as if it were ``/``.

    Links, absolute or relative, and ``..`` never leave ``root``. Only a
    regular file of at most ``limit`` bytes is read: anything else is an
    :class:`InvalidArgument` naming the file, before it is opened for reading
    (opening a device can have effects of its own). ``FileNotFoundError`` or
    ``NotADirectoryError`` when there is no such file.

    ``root`` itself is the caller's (an administrator's path, which the
    container cannot replace) and may be a link. Mount points under it are
    crossed (no ``RESOLVE_NO_XDEV``): only the host can mount there, since a
    container's mounts stay in its own mount namespace, so refusing them
    would break a legitimate layout and protect against nothing.

    Blocking file I/O: call it from a thread in async code.
    """
    shown = f"{root}/{path}"
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            found = _open_in_root(root_fd, path)
        finally:
            os.close(root_fd)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        raise _unreadable(shown, exc) from None
    try:
        return _read_regular(found, shown, limit)
    except OSError as exc:
        raise _unreadable(shown, exc) from None
    finally:
        os.close(found)


def _unreadable(shown: str, exc: OSError) -> InvalidArgument:
    return InvalidArgument(f"{shown} cannot be read: {exc.strerror or exc}")


def _open_in_root(root_fd: int, path: str) -> int:
    """An ``O_PATH`` descriptor of ``path`` resolved inside ``root_fd``."""
    try:
        return _openat2(root_fd, path, os.O_PATH | os.O_CLOEXEC,
                        _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)  # fmt: skip
    except OSError as exc:
        # ENOSYS: a kernel before 5.6; EPERM: a seccomp filter that does not
        # know openat2; EAGAIN: a rename raced the lookup. The walk is as
        # safe, only slower.
        if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EAGAIN):
            raise
    return _walk(root_fd, path)


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd: int = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def _walk(root_fd: int, path: str) -> int:
    """``RESOLVE_IN_ROOT`` by hand, for kernels without openat2: one component
    at a time, never following a link in the kernel. A link's target goes on
    from the root (absolute) or from where the link is (relative); ``..``
    stops at the root; at most :data:`MAX_LINKS` links."""
    stack = [os.dup(root_fd)]  # the directories from the root to where the walk is
    todo = _components(path)
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            stack.append(os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 dir_fd=stack[-1]))  # fmt: skip
            mode = os.fstat(stack[-1]).st_mode
            if stat.S_ISLNK(mode):
                target = os.readlink("", dir_fd=stack[-1])
                os.close(stack.pop())
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                todo += _components(target)
            elif todo and not stat.S_ISDIR(mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _components(path: str) -> list[str]:
    """The names of ``path``, last first (the walk pops from the end)."""
    return [name for name in reversed(path.split("/")) if name not in ("", ".")]


def _read_regular(fd: int, shown: str, limit: int) -> bytes:
    """Read the file of an ``O_PATH`` descriptor if it is a regular one."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "of an unknown type")
        raise InvalidArgument(f"{shown} is {kind}, not a regular file")
    too_big = f"{shown} is larger than {limit} bytes"
    if info.st_size > limit:
        raise InvalidArgument(too_big)
    # Reopened through its descriptor: what is read is the inode just checked,
    # whatever was renamed since. O_NONBLOCK all the same.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    readable = os.open(f"/proc/self/fd/{fd}", flags)
    try:
        data = bytearray()
        while chunk := os.read(readable, limit + 1 - len(data)):
            data += chunk
            if len(data) > limit:  # it grew since the fstat
                raise InvalidArgument(too_big)
        return bytes(data)
    finally:
        os.close(readable)
