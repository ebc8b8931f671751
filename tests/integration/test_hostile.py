"""A hostile rootfs end to end (issue 9, item 5): a container's root can write
its own rootfs, and a user's name is looked up in the rootfs's /etc/passwd.
A FIFO there must not hang the daemon, nor a link take it out of the rootfs."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.testing import busybox_rootfs

from .daemon_harness import DaemonDirs, dirs, until

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio

#: A CLI call that takes longer has hung.
QUICK = 20.0
#: The daemon must say READY sooner (a hung definition load never does).
READY_WITHIN = 30.0


@contextlib.contextmanager
def fifo_at(path: Path) -> Iterator[Path]:
    """``path`` replaced by a FIFO; a reader stuck on it is let go afterwards
    (the bug), so that a failed test does not leave a daemon hung."""
    path.unlink()
    os.mkfifo(path)
    try:
        yield path
    finally:
        release(path)


def release(fifo: Path) -> None:
    with contextlib.suppress(OSError):  # ENXIO: no reader, nothing to let go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def ps(dirs: DaemonDirs) -> list[str]:
    done = dirs.cli("ps", "-a", "--json", timeout=QUICK)
    assert done.code == 0, done.err
    return sorted(str(c["id"]) for c in json.loads(done.out))


def still_serving(dirs: DaemonDirs) -> None:
    """The daemon answers and runs another container."""
    done = dirs.cli("run", "--rm", "--rootfs", str(dirs.rootfs), "--name", "fine", "echo",
                    "still here", timeout=QUICK)  # fmt: skip
    assert (done.code, done.out, done.err) == (0, "still here\n", "")


async def test_run_as_a_user_of_a_fifo_passwd(dirs: DaemonDirs, tmp_path: Path) -> None:
    root = busybox_rootfs(tmp_path / "hostile")
    dirs.start()
    await dirs.message("READY=1")
    with fifo_at(root / "etc" / "passwd") as passwd:
        done = dirs.cli("run", "--rm", "-u", "someone", "--rootfs", str(root), "--name", "evil",
                        "true", timeout=QUICK)  # fmt: skip
    assert done.code == 125
    assert done.out == ""
    assert done.err == f"supervisor run: user 'someone': {passwd} is a FIFO, not a regular file\n"
    assert ps(dirs) == []
    still_serving(dirs)


async def test_definition_with_a_user_of_a_fifo_passwd(dirs: DaemonDirs, tmp_path: Path) -> None:
    root = busybox_rootfs(tmp_path / "hostile")
    evil = f'rootfs = "{root}"\ncommand = ["true"]\nuser = "someone"\n'
    (dirs.defs / "evil.toml").write_text(evil)
    dirs.define("good", ["sleep", "1000"])
    with fifo_at(root / "etc" / "passwd") as passwd:
        dirs.start()
        await dirs.message("READY=1", within=READY_WITHIN)
        problem = f"user 'someone': {passwd} is a FIFO, not a regular file"
        assert ps(dirs) == ["good"]
        assert f"{dirs.defs / 'evil.toml'}: {problem}" in dirs.output()
        # A reload and an apply load it again, as promptly.
        for args in (("reload",), ("apply", str(dirs.defs))):
            done = dirs.cli(*args, timeout=QUICK)
            assert done.code == 125
            assert done.err == f"error: {dirs.defs / 'evil.toml'}: {problem}\n"
        other = tmp_path / "other"
        other.mkdir()
        (other / "evil2.toml").write_text(evil)
        done = dirs.cli("apply", str(other), timeout=QUICK)
        assert (done.code, done.err) == (125, f"error: {other / 'evil2.toml'}: {problem}\n")
    assert ps(dirs) == ["good"]
    still_serving(dirs)
    assert dirs.cli("rm", "-f", "good", timeout=QUICK).code == 0


async def test_exec_as_a_user_after_the_container_made_a_fifo(
    dirs: DaemonDirs, tmp_path: Path
) -> None:
    root = busybox_rootfs(tmp_path / "hostile")
    passwd = root / "etc" / "passwd"
    dirs.start()
    await dirs.message("READY=1")
    # The container's root does it itself, as an attacker in it would.
    done = dirs.cli("run", "-d", "--rootfs", str(root), "--name", "box", "sh", "-c",
                    "rm /etc/passwd && mkfifo /etc/passwd && exec sleep 1000",
                    timeout=QUICK)  # fmt: skip
    assert done.code == 0, done.err

    async def made() -> bool:
        return passwd.is_fifo()

    try:
        await until(made)
        done = dirs.cli("exec", "-u", "someone", "box", "true", timeout=QUICK)
    finally:
        release(passwd)
    assert done.code == 125
    assert done.err == f"supervisor exec: user 'someone': {passwd} is a FIFO, not a regular file\n"
    # No other exec into "box": runc reads the container's /etc/passwd at
    # every exec (for HOME and groups) and blocks on the FIFO in runc init;
    # that container hurts only itself.
    assert ps(dirs) == ["box"]
    still_serving(dirs)
    assert dirs.cli("rm", "-f", "box", timeout=QUICK).code == 0


async def test_passwd_linked_to_a_host_file(dirs: DaemonDirs, tmp_path: Path) -> None:
    root = busybox_rootfs(tmp_path / "hostile")
    secret = tmp_path / "host-passwd"
    secret.write_text("marker:x:4242:4242::/:/bin/sh\n")
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to(secret)
    dirs.start()
    await dirs.message("READY=1")
    done = dirs.cli("run", "--rm", "-u", "marker", "--rootfs", str(root), "--name", "leak",
                    "id", "-u", timeout=QUICK)  # fmt: skip
    assert done.code == 125
    assert done.out == ""
    assert done.err == f"supervisor run: user 'marker' is not in {passwd}\n"
    # An absolute link is followed inside the rootfs.
    (root / "etc" / "passwd.real").write_text("inside:x:4243:4244::/:/bin/sh\n")
    passwd.unlink()
    passwd.symlink_to("/etc/passwd.real")
    done = dirs.cli("run", "--rm", "-u", "inside", "--rootfs", str(root), "--name", "inside",
                    "sh", "-c", "echo $(id -u):$(id -g)", timeout=QUICK)  # fmt: skip
    assert (done.code, done.out) == (0, "4243:4244\n"), done.err
    assert ps(dirs) == []
