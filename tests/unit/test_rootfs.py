"""A user's name looked up in a rootfs the container may have written (issue 9, item 5).

Every case runs twice: through openat2, and through the walk used where the
kernel has no openat2.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.client._spec import parse_user
from supervisor.daemon._config import DaemonConfig
from supervisor.daemon._daemon import Daemon
from supervisor.daemon._definitions import ContainerDefinition
from supervisor.errors import InvalidArgument
from supervisor.testing import busybox_rootfs

#: A lookup that takes longer is a hang.
PROMPTLY = 5.0
MARKER = "marker:x:4242:4242::/:/bin/sh\n"
INSIDE = "inside:x:4243:4244::/:/bin/sh\n"


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "walk":

        def no_openat2(*args: object) -> int:
            raise OSError(errno.ENOSYS, "no openat2 here")

        monkeypatch.setattr("supervisor.client._rootfs._openat2", no_openat2)
    return str(request.param)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host file with a user the container must not get at."""
    (tmp_path / "host").mkdir()
    secret = tmp_path / "host" / "passwd"
    secret.write_text(MARKER)
    return secret


@pytest.fixture
def root(tmp_path: Path, resolver: str) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    return root


@pytest.fixture
def memory_cap() -> Iterator[None]:
    """Address space capped at 512 MiB more than now: a regression that reads
    /dev/zero must fail the test, not exhaust the machine."""
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    before = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size * 1024 + (512 << 20), before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, before)


def refused(call: Callable[[], object], fifo: Path | None = None) -> str:
    """The message of the InvalidArgument ``call`` raises, within PROMPTLY
    seconds: it runs in a thread, so that a hang fails the test rather than
    hanging it (a reader stuck on ``fifo`` is let go afterwards)."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(PROMPTLY)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"the lookup still runs after {PROMPTLY} s")
    [result] = outcome
    assert isinstance(result, InvalidArgument), f"expected InvalidArgument, got {result!r}"
    return str(result)


def test_busybox_rootfs_users(tmp_path: Path, resolver: str) -> None:
    root = busybox_rootfs(tmp_path / "busybox")
    assert parse_user("nobody", root) == {"uid": 65534, "gid": 65534}
    assert parse_user("root:nogroup", root) == {"uid": 0, "gid": 65534}


def test_fifo_is_refused_at_once(root: Path) -> None:
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    os.mkfifo(passwd)
    message = refused(lambda: parse_user("someone", root), fifo=passwd)
    assert message == f"user 'someone': {passwd} is a FIFO, not a regular file"


def test_fifo_group_is_refused_at_once(root: Path) -> None:
    group = root / "etc" / "group"
    group.unlink()
    os.mkfifo(group)
    message = refused(lambda: parse_user("0:staff", root), fifo=group)
    assert message == f"group 'staff': {group} is a FIFO, not a regular file"


def test_link_to_dev_zero_is_not_read(root: Path, memory_cap: None) -> None:
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to("/dev/zero")  # inside the root: <root>/dev/zero, which is not there
    message = refused(lambda: parse_user("someone", root))
    assert message == f"user 'someone' is not in {passwd}"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_is_refused_unopened(root: Path, memory_cap: None) -> None:
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    os.mknod(passwd, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is
    message = refused(lambda: parse_user("someone", root))
    assert message == f"user 'someone': {passwd} is a character device, not a regular file"


def test_absolute_link_to_a_host_file_stays_inside(root: Path, host: Path) -> None:
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to(host)
    message = refused(lambda: parse_user("marker", root))
    assert message == f"user 'marker' is not in {root}/etc/passwd"


def test_relative_escape_is_clamped_at_the_root(root: Path, host: Path) -> None:
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to("../" * 40 + str(host).lstrip("/"))
    message = refused(lambda: parse_user("marker", root))
    assert message == f"user 'marker' is not in {root}/etc/passwd"
    # Clamped at the root, the link lands on the same path inside it.
    inside = root / str(host).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text(INSIDE)
    assert parse_user("inside", root) == {"uid": 4243, "gid": 4244}


def test_etc_linked_outside_stays_inside(root: Path, host: Path) -> None:
    shutil.rmtree(root / "etc")
    (root / "etc").symlink_to(host.parent)
    message = refused(lambda: parse_user("marker", root))
    assert message == f"user 'marker' is not in {root}/etc/passwd"


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("etc/passwd", "/conf/passwd"),
        ("etc/passwd", "../conf/passwd"),
        ("etc/passwd", "../../../../conf/passwd"),
        ("etc/passwd", "/../conf/./passwd"),
        ("etc", "/conf"),
        ("etc", "../../conf"),
        ("etc/passwd", "/etc/conf-link/passwd"),  # a second link on the way
    ],
)
def test_links_resolve_inside_the_root(root: Path, link: str, target: str) -> None:
    (root / "conf").mkdir()
    (root / "conf" / "passwd").write_text(INSIDE)
    (root / "etc" / "conf-link").symlink_to("../conf")
    path = root / link
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)
    assert parse_user("inside", root) == {"uid": 4243, "gid": 4244}


def test_link_loop_is_an_error(root: Path) -> None:
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    passwd.symlink_to("passwd2")
    (root / "etc" / "passwd2").symlink_to("/etc/passwd")
    message = refused(lambda: parse_user("someone", root))
    assert message == f"user 'someone': {passwd} cannot be read: {os.strerror(errno.ELOOP)}"


def test_directory_is_refused(root: Path) -> None:
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    passwd.mkdir()
    message = refused(lambda: parse_user("someone", root))
    assert message == f"user 'someone': {passwd} is a directory, not a regular file"


def test_oversized_file_is_refused_not_truncated(root: Path) -> None:
    passwd = root / "etc" / "passwd"
    passwd.write_text("big:x:1:1::/:/bin/sh\n" + "#" * (1 << 20))
    message = refused(lambda: parse_user("big", root))
    assert message == f"user 'big': {passwd} is larger than 1048576 bytes"


def test_file_larger_than_its_size_says_is_refused(resolver: str) -> None:
    # A procfs file says it is empty: the cap holds on what is read.
    from supervisor.client._rootfs import read_in_root  # here: the rest also runs without it

    with pytest.raises(InvalidArgument, match="status is larger than 10 bytes"):
        read_in_root(Path("/proc/self"), "status", limit=10)
    assert read_in_root(Path("/proc/self"), "status").startswith(b"Name:")


def test_missing_file_is_not_in(root: Path) -> None:
    (root / "etc" / "passwd").unlink()
    message = refused(lambda: parse_user("ghost", root))
    assert message == f"user 'ghost' is not in {root}/etc/passwd"
    shutil.rmtree(root / "etc")
    (root / "etc").write_text("not a directory")
    message = refused(lambda: parse_user("ghost", root))
    assert message == f"user 'ghost' is not in {root}/etc/passwd"


class _Refused(Exception):
    pass


class _Client:
    """Enough of a client for the daemon to get as far as creating."""

    async def create_container(self, cid: str, spec: object, labels: object) -> None:
        if cid == "api":
            raise _Refused


@pytest.mark.anyio
async def test_the_daemon_builds_specs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spec with a user's name reads the rootfs: never on the event loop,
    # whatever that file turns out to be.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    loop = threading.get_ident()
    threads: list[int] = []
    real = ContainerDefinition.spec

    def spec(self: ContainerDefinition) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return real(self)

    monkeypatch.setattr(ContainerDefinition, "spec", spec)
    root = busybox_rootfs(tmp_path / "busybox")
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "app.toml").write_text(f'rootfs = "{root}"\ncommand = ["true"]\nuser = "nobody"\n')
    daemon = Daemon(DaemonConfig(definitions_dir=defs, log_dir=tmp_path / "logs",
                                 state_dir=tmp_path / "state"))  # fmt: skip
    daemon.net.open()
    daemon._sup = SimpleNamespace(client=_Client())  # type: ignore[assignment]

    wanted = await daemon._load()  # at start, reload and apply
    assert await daemon._create(wanted["app"]) is True  # a definition's container
    with pytest.raises(_Refused):  # the control API's run
        await daemon.run_container(replace(wanted["app"], id="api"), remove=True, stdin=False)
    assert len(threads) == 3
    assert loop not in threads
