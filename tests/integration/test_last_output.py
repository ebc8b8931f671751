"""A container's last output reaches its log when it is stopped, replaced or removed,
and output still flowing while a container is removed cannot take the daemon down."""

from __future__ import annotations

import time

import pytest

from .daemon_harness import DaemonDirs, dirs
from .test_cli import LINE_TIMEOUT, ps, read_line, ready

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio

# Prints a line on SIGTERM, then ends after more output: what a server says as it stops.
POLITE = (
    "trap 'echo bye on TERM; i=0; while [ $i -lt 200 ]; do echo tail $i; i=$((i+1)); done;"
    " exit 0' TERM; echo ready; while true; do sleep 0.1; done"
)


def wait_ready(dirs: DaemonDirs, cid: str) -> None:
    follow = dirs.cli_process("logs", "-f", cid)
    try:
        assert read_line(follow.stdout, time.monotonic() + LINE_TIMEOUT) == b"ready\n"
    finally:
        follow.kill()
        follow.wait()


async def test_stop_and_replace_keep_the_last_lines(dirs: DaemonDirs) -> None:
    dirs.define("polite", ["sh", "-c", POLITE], restart="always")
    await ready(dirs)
    wait_ready(dirs, "polite")
    done = dirs.cli("stop", "polite")
    assert done.code == 0, done.err
    out = dirs.cli("logs", "polite").out
    assert out.endswith("bye on TERM\n" + "".join(f"tail {i}\n" for i in range(200))), out[-300:]

    # Replaced by a changed definition: the old one's goodbye is in the log too.
    assert dirs.cli("start", "polite").code == 0
    wait_ready(dirs, "polite")
    dirs.define("polite", ["sh", "-c", POLITE], restart="always", stop_timeout="9")
    done = dirs.cli("reload")
    assert (done.code, done.out) == (0, "replaced polite\n"), done.err
    log = (dirs.logs / "polite.log").read_text()
    assert log.count("bye on TERM") == 2 and log.count('"tail 199\\n"') == 2


async def test_removing_chatty_containers_never_takes_the_daemon_down(dirs: DaemonDirs) -> None:
    await ready(dirs)
    chatty = "while true; do echo spam spam spam spam spam spam spam spam; done"
    for n in range(5):
        done = dirs.cli("run", "-d", "--name", f"chatty{n}", "--rootfs", str(dirs.rootfs),
                        "sh", "-c", chatty)  # fmt: skip
        assert done.code == 0, done.err
        follow = dirs.cli_process("logs", "-f", f"chatty{n}")
        try:  # it is writing
            assert read_line(follow.stdout, time.monotonic() + LINE_TIMEOUT).startswith(b"spam")
            assert dirs.cli("rm", "-f", f"chatty{n}").code == 0
        finally:
            follow.kill()
            follow.wait()
    assert all(p.poll() is None for p in dirs.procs)
    assert ps(dirs, "-a") == []
    assert "Traceback" not in dirs.output()
