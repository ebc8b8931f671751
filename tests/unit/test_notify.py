import errno
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.daemon._notify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def _received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    sock.settimeout(0)
    with pytest.raises(BlockingIOError):
        sock.recv(65536)  # exactly one datagram per call
    sock.settimeout(5)
    return data


def test_ready(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready()
    assert _received(sock) == b"READY=1"
    notifier.ready("serving 3 containers")
    assert _received(sock) == b"READY=1\nSTATUS=serving 3 containers"


def test_simple_messages(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("starting containerd")
    assert _received(sock) == b"STATUS=starting containerd"
    notifier.stopping()
    assert _received(sock) == b"STOPPING=1"
    notifier.watchdog()
    assert _received(sock) == b"WATCHDOG=1"
    notifier.notify("MAINPID=42", "STATUS=h\xe9")
    assert _received(sock) == "MAINPID=42\nSTATUS=h\xe9".encode()


def test_status_newline_cannot_inject_assignments(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("ok\nREADY=1")
    assert _received(sock) == b"STATUS=ok READY=1"


def test_reloading_carries_monotonic_time(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = _received(sock).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace() -> None:
    name = f"supervisor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert _received(sock) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object) -> None:
        raise AssertionError("no socket should be created")

    monkeypatch.setattr(socket, "socket", forbidden)
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}):
        notifier = Notifier.from_env(environ)
        assert not notifier.enabled
        notifier.ready("x")
        notifier.status("x")
        notifier.stopping()
        notifier.watchdog()
        notifier.reloading()
        notifier.notify("X=1")


def test_undeliverable_is_swallowed_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    with caplog.at_level(logging.DEBUG, logger="supervisor.daemon._notify"):
        notifier.ready()
        notifier.watchdog()
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.DEBUG

    # A socket file nobody reads from any more: ECONNREFUSED.
    path = str(tmp_path / "gone")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
    Notifier.from_env({"NOTIFY_SOCKET": path}).stopping()


def test_full_receiver_does_not_block(
    listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="supervisor.daemon._notify"):
        for _ in range(2000):  # far more than the receive queue holds: EAGAIN, not a hang
            notifier.status("x" * 1000)
    assert time.monotonic() - started < 5
    assert [record.getMessage() for record in caplog.records] == [
        f"sd_notify to {path!r} failed: [Errno {errno.EAGAIN}] {os.strerror(errno.EAGAIN)}"
    ]


def test_unset_removes_the_variables(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("UNRELATED", "kept")
    notifier = Notifier.from_env(unset=True)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    assert os.environ["UNRELATED"] == "kept"
    notifier.ready()
    assert _received(sock) == b"READY=1"


def test_from_env_keeps_the_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert Notifier.from_env().enabled
    assert os.environ["NOTIFY_SOCKET"] == "/run/systemd/notify"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "4000000"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "garbage"}, None),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": ""}, None),
        ({"WATCHDOG_USEC": "garbage"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-4000000"}, None),
        ({"WATCHDOG_USEC": "4e6"}, None),
        ({"WATCHDOG_USEC": "\u00b2"}, None),
        ({"WATCHDOG_USEC": "500"}, 0.00025),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


def test_extend_timeout(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.extend_timeout(30)
    assert _received(sock) == b"EXTEND_TIMEOUT_USEC=30000000"
    notifier.extend_timeout(1.5, "restoring: 10 of 1000 containers")
    expected = b"EXTEND_TIMEOUT_USEC=1500000\nSTATUS=restoring: 10 of 1000 containers"
    assert _received(sock) == expected
