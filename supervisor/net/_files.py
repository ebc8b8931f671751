"""A container's /etc/resolv.conf, /etc/hosts and /etc/hostname: made by us
in the daemon's state directory and bind-mounted read-only, so that the
container can neither grow nor redirect them. Rewritten in place (the same
inode: a bind mount holds on to the file, not to its name)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

#: Bound on what is read of the host's resolv.conf.
MAX_RESOLV_CONF = 64 * 1024
HOSTS_HEADER = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


#: systemd-resolved's list of the upstream servers (its stub, 127.0.0.53, is
#: what /etc/resolv.conf names then).
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")


def resolv_conf(
    host_file: Path = Path("/etc/resolv.conf"), upstream: Path = RESOLVED_UPSTREAM
) -> str:
    """The host's resolv.conf without loopback nameservers (a resolver on the
    host's 127.0.0.53 cannot be reached from a container's namespace); when
    that leaves none, systemd-resolved's upstream list, as docker does."""
    text = _filtered(host_file)
    if "nameserver" not in text and upstream.exists():
        return _filtered(upstream) or text
    return text


def _filtered(host_file: Path) -> str:
    try:
        with open(host_file, "rb") as f:
            text = f.read(MAX_RESOLV_CONF).decode(errors="replace")
    except OSError:
        return ""
    lines = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                if ipaddress.ip_address(fields[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def hosts(own: tuple[str, str] | None, others: Iterable[tuple[str, str]] = ()) -> str:
    """/etc/hosts: localhost, the container's own ``(address, name)``, then
    the other containers of its network."""
    out = [HOSTS_HEADER]
    if own is not None:
        out.append(f"{own[0]}\t{own[1]}\n")
    for address, name in sorted(others, key=lambda item: item[1]):
        out.append(f"{address}\t{name}\n")
    return "".join(out)


def write_in_place(path: Path, text: str) -> None:
    """Replace ``path``'s content, keeping its inode; the file is ours (in the
    state directory), never followed if it were a link."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, len(data) - len(view)) :]
    finally:
        os.close(fd)


def remove_files(directory: Path) -> None:
    for name in ("hosts", "resolv.conf", "hostname"):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    with contextlib.suppress(FileNotFoundError, OSError):
        directory.rmdir()
