"""The CLI end to end: a subprocess against the daemon and a real containerd."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from .daemon_harness import DaemonDirs, dirs, until

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio

LINE_TIMEOUT = 20.0


async def ready(dirs: DaemonDirs) -> None:
    dirs.start()
    await dirs.message("READY=1")


def read_line(stream: object, deadline: float) -> bytes:
    """One line from a subprocess pipe, or fail at ``deadline`` (a bounded wait)."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no full line in time (got {buf!r})"
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 1)
            assert chunk, f"stream ended (got {buf!r})"
            buf += chunk
    return buf


def ps(dirs: DaemonDirs, *flags: str) -> list[dict[str, object]]:
    done = dirs.cli("ps", "--json", *flags)
    assert done.code == 0, done.err
    return json.loads(done.out)  # type: ignore[no-any-return]


async def test_run_rm_prints_and_passes_the_exit_code(dirs: DaemonDirs) -> None:
    await ready(dirs)
    done = dirs.cli("run", "--rm", "--rootfs", str(dirs.rootfs), "--name", "hello", "echo", "hi")
    assert (done.code, done.out, done.err) == (0, "hi\n", "")
    done = dirs.cli("run", "--rm", "--rootfs", str(dirs.rootfs), "--name", "three", "sh", "-c",
                    "echo oops >&2; exit 3")  # fmt: skip
    assert (done.code, done.err) == (3, "oops\n")
    assert ps(dirs, "-a") == []


async def test_run_detached_ps_and_logs_follow(dirs: DaemonDirs) -> None:
    await ready(dirs)
    script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"
    done = dirs.cli(
        "run", "-d", "--rootfs", str(dirs.rootfs), "--name", "ticker", "sh", "-c", script
    )
    assert (done.code, done.out) == (0, "ticker\n")
    [info] = ps(dirs)
    assert (info["id"], info["status"]) == ("ticker", "running")
    follow = dirs.cli_process("logs", "-f", "ticker")
    try:
        deadline = time.monotonic() + LINE_TIMEOUT
        lines = [read_line(follow.stdout, deadline) for _ in range(6)]
    finally:
        follow.kill()
        follow.wait()
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], numbers[0] + 6))  # live, in order, none lost
    assert dirs.cli("logs", "--tail", "1", "ticker").out.startswith("line ")
    assert dirs.cli("rm", "-f", "ticker").code == 0
    assert ps(dirs, "-a") == []


async def test_run_interactive_forwards_stdin(dirs: DaemonDirs, tmp_path: Path) -> None:
    await ready(dirs)
    data = b"".join(b"line %d\n" % n for n in range(2000))
    done = dirs.cli(
        "run", "--rm", "-i", "--rootfs", str(dirs.rootfs), "--name", "cat1", "cat", input=data
    )
    assert (done.code, done.out.encode()) == (0, data)
    source = tmp_path / "input.txt"  # a regular file cannot be polled: read in a thread
    source.write_bytes(b"from a file\n")
    with source.open("rb") as stdin:
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", str(dirs.control), "run", "--rm",
             "-i", "--rootfs", str(dirs.rootfs), "--name", "cat2", "cat"],
            stdin=stdin, capture_output=True, timeout=60,
        )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, b"from a file\n")


async def test_logs_of_a_stopped_container_do_not_hang(dirs: DaemonDirs) -> None:
    await ready(dirs)
    done = dirs.cli("run", "--rootfs", str(dirs.rootfs), "--name", "once", "echo", "bye")
    assert (done.code, done.out) == (0, "bye\n")
    done = dirs.cli("logs", "-f", "once", timeout=20)
    assert (done.code, done.out) == (0, "bye\n")
    assert dirs.cli("rm", "once").code == 0


def _peak_rss_since(pid: int) -> Callable[[], int]:
    """Reset the peak resident size of process *pid* (Linux's clear_refs); the function
    returned says by how many bytes the peak went over the size at the reset."""

    def kib(field: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for {pid}")

    Path(f"/proc/{pid}/clear_refs").write_text("5")
    base = kib("VmRSS")
    return lambda: kib("VmHWM") - base


async def test_logs_of_a_large_rotated_log(dirs: DaemonDirs) -> None:
    """A container's 8 MB of output in a log of several rotated files: `logs` prints every
    line once, in order, and `--tail N` the last N across the files, while the daemon streams
    them (its peak memory grows by a MiB or two; loading the files grew it by 35 and more)."""
    with dirs.config.open("a") as config:
        config.write('[logs]\nmax_size = "2m"\nmax_files = 10\n')
    count = 40_000
    script = (
        'awk \'BEGIN { pad = sprintf("%0190d", 0); '
        f'for (i = 0; i < {count}; i++) printf "line %06d %s\\n", i, pad }}\''
    )
    dirs.define("big", ["sh", "-c", script])
    lines = [f"line {i:06d} {0:0190d}\n" for i in range(count)]
    await ready(dirs)
    current = dirs.logs / "big.log"

    async def complete() -> bool:
        with contextlib.suppress(FileNotFoundError, IndexError, ValueError):
            return json.loads(current.read_bytes().splitlines()[-1])["log"] == lines[-1]
        return False

    await until(complete, within=60)
    assert len(list(dirs.logs.glob("big.log.*"))) >= 3

    peak = _peak_rss_since(dirs.procs[0].pid)
    done = dirs.cli("logs", "big", timeout=120)
    assert (done.code, done.err) == (0, "")
    assert done.out == "".join(lines)
    assert peak() < 16 << 20, f"the daemon's peak memory grew by {peak() >> 20} MiB"

    done = dirs.cli("logs", "--tail", "15000", "big", timeout=120)
    assert (done.code, done.out) == (0, "".join(lines[-15_000:]))
    done = dirs.cli("logs", "--tail", "0", "big")
    assert (done.code, done.out) == (0, "")


async def test_stop_within_timeout_is_not_undone(dirs: DaemonDirs) -> None:
    await ready(dirs)
    # sleep as pid 1 ignores SIGTERM: the stop must end with SIGKILL after 1 s.
    done = dirs.cli("run", "-d", "--restart", "always", "--rootfs", str(dirs.rootfs),
                    "--name", "sleeper", "sleep", "1000")  # fmt: skip
    assert done.code == 0, done.err
    started = time.monotonic()
    done = dirs.cli("stop", "-t", "1", "sleeper")
    took = time.monotonic() - started
    assert (done.code, done.out) == (0, "sleeper\n")
    assert 1.0 <= took < 6.0
    [info] = ps(dirs, "-a")
    assert (info["status"], info["manually_stopped"], info["exit_code"]) == ("stopped", True, 137)
    # An observation window for an absence: the policy (always, 0.1 s backoff)
    # would have restarted it within it.
    for _ in range(15):
        [info] = ps(dirs, "-a")
        assert info["status"] == "stopped" and info["restart_count"] == 0
        await anyio.sleep(0.1)
    assert dirs.cli("start", "sleeper").code == 0
    assert ps(dirs)[0]["status"] == "running"
    assert dirs.cli("rm", "-f", "sleeper").code == 0


async def test_events_show_start_and_exit(dirs: DaemonDirs) -> None:
    await ready(dirs)
    events = dirs.cli_process("events", "--json")
    try:
        deadline = time.monotonic() + LINE_TIMEOUT
        # The stream is live once it shows an event: run probes until one shows.
        for n in range(1, 100):
            assert (
                dirs.cli(
                    "run", "--rm", "--rootfs", str(dirs.rootfs), "--name", f"probe{n}", "true"
                ).code
                == 0
            )
            if select.select([events.stdout], [], [], 0.5)[0]:
                break
            assert time.monotonic() < deadline, "the events stream never showed an event"
        done = dirs.cli("run", "--rm", "--rootfs", str(dirs.rootfs), "--name", "second", "sh", "-c",
                        "exit 2")  # fmt: skip
        assert done.code == 2
        seen: list[dict[str, object]] = []
        while not any(e["id"] == "second" and e["type"] == "delete" for e in seen):
            seen.append(json.loads(read_line(events.stdout, deadline)))
    finally:
        events.kill()
        events.wait()
    second = [e for e in seen if e["id"] == "second"]
    assert [e["type"] for e in second] == ["create", "start", "exit", "delete"]
    assert second[2]["exit_code"] == 2


async def test_exec_it_under_a_pty_and_resize(dirs: DaemonDirs) -> None:
    await ready(dirs)
    assert (
        dirs.cli("run", "-d", "--rootfs", str(dirs.rootfs), "--name", "box", "sleep", "1000").code
        == 0
    )
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    setsid = shutil.which("setsid")
    assert setsid is not None
    proc = subprocess.Popen(
        [setsid, "-c", sys.executable, "-m", "supervisor", "--socket", str(dirs.control),
         "exec", "-it", "box", "sh", "-c", "stty size; read line; stty size; exit 5"],
        stdin=slave, stdout=slave, stderr=slave, close_fds=True,
    )  # fmt: skip
    os.close(slave)
    output = b""

    def expect(text: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + LINE_TIMEOUT
        while text not in output:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not in {output!r}"
            if select.select([master], [], [], left)[0]:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    break

    try:
        expect(b"30 90")  # the size at start reaches the process
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.write(master, b"go\n")
        expect(b"40 120")  # and so does a resize
        code = proc.wait(LINE_TIMEOUT)
        assert code == 5, output.decode(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert dirs.cli("rm", "-f", "box").code == 0


async def test_unprivileged_user_is_refused(dirs: DaemonDirs) -> None:
    await ready(dirs)
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    done = subprocess.run(
        [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable,
         "-m", "supervisor", "--socket", str(dirs.control), "ps"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 125
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "permission denied" in lines[0], done.stderr
    assert oct(dirs.control.stat().st_mode & 0o777) == "0o660"


async def test_mistakes_give_one_line_and_non_zero(dirs: DaemonDirs) -> None:
    await ready(dirs)
    for args, code, text in (
        (("inspect", "ghost"), 125, "no container 'ghost'"),
        (("logs", "ghost"), 125, "no container 'ghost'"),
        (("stop", "ghost"), 125, "no container 'ghost'"),
        (("run", "--rootfs", str(dirs.rootfs), "--name", "bad id", "true"), 125, "invalid"),
        (("run", "--rootfs", "/no/such/dir", "--name", "x", "true"), 125, "not a directory"),
        (
            ("run", "--memory", "lots", "--rootfs", str(dirs.rootfs), "--name", "x", "true"),
            125,
            "lots",
        ),
        (("exec", "ghost", "ls"), 125, "no container 'ghost'"),
        (
            (
                "run",
                "-l",
                "io.containerd-supervisor/x=1",
                "--rootfs",
                str(dirs.rootfs),
                "--name",
                "x",
                "true",
            ),
            125,
            "the daemon's own",
        ),
        (("logs", "--tail", "-1", "ghost"), 125, "negative"),
        (("ps", "--bogus"), 125, "unrecognized arguments"),
        (("frobnicate",), 125, "invalid choice"),
        (("run", "--name", "x"), 125, "an image is needed"),
        (("run", "--pull", "never", "not-here:1"), 125, "its pull policy is never"),
        (("run", "--rootfs", str(dirs.rootfs)), 125, "a command is needed"),
    ):
        done = dirs.cli(*args)
        lines = done.err.strip().splitlines()
        assert done.code == code, (args, done)
        assert len(lines) == 1 and text in lines[0], (args, done.err)
    for proc in dirs.procs:
        proc.terminate()
        proc.wait(30)
    done = dirs.cli("ps")
    assert done.code == 125
    assert done.err.count("\n") == 1 and "cannot reach the daemon" in done.err


async def test_ps_follows_records_changed_behind_the_daemons_back(dirs: DaemonDirs) -> None:
    """`ps` answers from the daemon's view; a record removed or relabelled
    with ctr sends no task event, and the view still catches up."""
    await ready(dirs)
    rootfs = str(dirs.rootfs)
    assert dirs.cli("run", "-d", "--name", "gone", "--rootfs", rootfs, "true").code == 0
    assert dirs.cli("run", "-d", "--name", "kept", "--rootfs", rootfs, "sleep", "100").code == 0

    async def gone_exited() -> bool:  # its exit recorded, its task deleted
        return [(c["id"], c["status"], c["exit_code"]) for c in ps(dirs, "-a")] == [
            ("gone", "stopped", 0), ("kept", "running", None),
        ]  # fmt: skip

    await until(gone_exited)
    ctr = ["ctr", "-a", str(dirs.address), "-n", dirs.namespace]
    subprocess.run([*ctr, "container", "rm", "gone"], check=True, capture_output=True, timeout=30)
    subprocess.run(
        [*ctr, "container", "label", "kept", "team=blue"], check=True, capture_output=True,
        timeout=30,
    )  # fmt: skip

    async def caught_up() -> bool:
        listed = ps(dirs, "-a")
        return [c["id"] for c in listed] == ["kept"] and listed[0]["labels"] == {"team": "blue"}

    await until(caught_up)
    assert dirs.cli("rm", "-f", "kept").code == 0
