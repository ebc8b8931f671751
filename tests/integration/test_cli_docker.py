"""The CLI as docker users expect it: generated names, exit codes 125/126/127,
`rm -f` kills at once, Ctrl-C passed to an attached container, `stats` in human
units, `exec` into a container with a 76-character id."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from supervisor import Client

from .daemon_harness import DaemonDirs, dirs, pid_of, until
from .test_cli import LINE_TIMEOUT, ps, read_line, ready

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio


def run(dirs: DaemonDirs, *args: str) -> list[str]:
    return ["run", "--rootfs", str(dirs.rootfs), *args]


async def test_run_without_name_makes_up_a_readable_id(dirs: DaemonDirs) -> None:
    await ready(dirs)
    first = dirs.cli(*run(dirs, "-d", "sleep", "1000"))
    second = dirs.cli(*run(dirs, "-d", "sleep", "1000"))
    ids = [first.out.strip(), second.out.strip()]
    assert (first.code, second.code) == (0, 0), (first.err, second.err)
    for cid in ids:
        assert re.fullmatch(r"[a-z]+_[a-z]+\d*", cid), cid
    assert ids[0] != ids[1]
    assert sorted(c["id"] for c in ps(dirs)) == sorted(ids)
    done = dirs.cli(*run(dirs, "--rm", "echo", "named by the daemon"))
    assert (done.code, done.out) == (0, "named by the daemon\n")
    assert dirs.cli("rm", "-f", *ids).code == 0
    assert ps(dirs, "-a") == []


async def test_exit_codes_tell_the_cli_from_the_container(dirs: DaemonDirs) -> None:
    await ready(dirs)
    for args, code, text in (
        (run(dirs, "--rm", "--name", "missing", "no-such-command"), 127, "no-such-command"),
        (run(dirs, "--rm", "--name", "absent", "/no/such/file"), 127, "/no/such/file"),
        (run(dirs, "--rm", "--name", "notexec", "/etc/passwd"), 126, "permission denied"),
        (run(dirs, "-d", "--name", "missing2", "no-such-command"), 127, "no-such-command"),
        (run(dirs, "--rm", "--name", "ones", "sh", "-c", "exit 1"), 1, None),
        (("rm", "ghost"), 125, "no container 'ghost'"),
    ):
        done = dirs.cli(*args)
        assert done.code == code, (args, done)
        if text is not None:
            lines = done.err.strip().splitlines()
            assert len(lines) == 1 and text in lines[0], (args, done.err)
    assert ps(dirs, "-a") == []  # a run that could not start leaves nothing
    assert dirs.cli(*run(dirs, "-d", "--name", "box", "sleep", "1000")).code == 0
    done = dirs.cli("exec", "box", "no-such-command")
    assert done.code == 127, done
    done = dirs.cli("exec", "box", "sh", "-c", "exit 9")
    assert done.code == 9, done
    assert dirs.cli("rm", "-f", "box").code == 0


async def test_rm_force_kills_at_once(dirs: DaemonDirs) -> None:
    await ready(dirs)
    # It would print on SIGTERM, and a stop would wait 60 s for it to end.
    script = "trap 'echo got TERM' TERM; echo ready; while true; do sleep 0.1; done"
    done = dirs.cli(*run(dirs, "-d", "--stop-timeout", "60", "--name", "stubborn",
                         "sh", "-c", script))  # fmt: skip
    assert done.code == 0, done.err
    follow = dirs.cli_process("logs", "-f", "stubborn")
    try:
        assert read_line(follow.stdout, time.monotonic() + LINE_TIMEOUT) == b"ready\n"
        started = time.monotonic()
        done = dirs.cli("rm", "-f", "stubborn", timeout=30)
        took = time.monotonic() - started
        rest = follow.communicate(timeout=LINE_TIMEOUT)[0]
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert (done.code, done.out) == (0, "stubborn\n"), done.err
    assert took < 20, took  # not the 60 s grace of a stop
    assert b"got TERM" not in rest  # SIGKILL only, as `docker rm -f`
    assert ps(dirs, "-a") == []


async def test_ctrl_c_is_passed_to_the_container_and_twice_detaches(dirs: DaemonDirs) -> None:
    await ready(dirs)
    script = "trap 'echo got INT; exit 42' INT; echo ready; while true; do sleep 0.1; done"
    proc = dirs.cli_process(*run(dirs, "--name", "trapper", "sh", "-c", script))
    try:
        assert read_line(proc.stdout, time.monotonic() + LINE_TIMEOUT) == b"ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=LINE_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (42, b"got INT\n", b"")
    [info] = ps(dirs, "-a")
    assert (info["exit_code"], info["manually_stopped"]) == (42, False)  # not a stop
    assert dirs.cli("rm", "trapper").code == 0

    # A container that only notes the first: the second Ctrl-C detaches; it goes on.
    script = "trap 'echo got INT' INT; echo ready; while true; do sleep 0.1; done"
    proc = dirs.cli_process(*run(dirs, "--name", "stays", "sh", "-c", script))
    try:
        deadline = time.monotonic() + LINE_TIMEOUT
        assert read_line(proc.stdout, deadline) == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert read_line(proc.stdout, deadline) == b"got INT\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=LINE_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and b"detached" in err, (proc.returncode, out, err)
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "stays") is not None
    assert dirs.cli("rm", "-f", "stays").code == 0


async def test_stats_in_human_units(dirs: DaemonDirs) -> None:
    await ready(dirs)
    assert dirs.cli(*run(dirs, "-d", "--memory", "64m", "--name", "capped",
                         "sleep", "1000")).code == 0  # fmt: skip
    busy = "while true; do :; done"
    assert dirs.cli(*run(dirs, "-d", "--name", "busy", "sh", "-c", busy)).code == 0
    done = dirs.cli("stats")  # all running ones
    assert done.code == 0, done.err
    header, *lines = done.out.splitlines()
    assert header.split() == [
        "ID", "CPU", "%", "MEM", "USAGE", "/", "LIMIT", "MEM", "%", "NET", "I/O", "PIDS"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines}
    assert sorted(rows) == ["busy", "capped"]
    capped = rows["capped"]
    assert re.fullmatch(r"[\d.]+(B|KiB|MiB)", capped[2]) and capped[3:5] == ["/", "64MiB"]
    assert re.fullmatch(r"[\d.]+%", capped[5]) and capped[9] == "1"
    assert capped[6:9] == ["0B", "/", "0B"]  # --network none (the harness's default): lo only
    assert float(rows["busy"][1].rstrip("%")) > 20  # a spinning shell uses a core's share
    done = dirs.cli("stats", "--json", "capped")
    [raw] = json.loads(done.out)
    assert raw["memory_limit"] == 64 << 20 and raw["pids_current"] == 1
    assert (raw["net_rx_bytes"], raw["net_tx_bytes"]) == (0, 0)
    assert isinstance(raw["cpu_percent"], float) and isinstance(raw["memory_usage"], int)
    done = dirs.cli("stats", "ghost")
    assert done.code == 125 and done.err.count("\n") == 1 and "ghost" in done.err, done
    assert dirs.cli("stop", "-t", "0", "busy").code == 0
    done = dirs.cli("stats", "busy", "capped")
    assert done.code == 125 and "busy is not running" in done.err, done
    assert [line.split()[0] for line in done.out.splitlines()] == ["ID", "capped"]
    assert dirs.cli("rm", "-f", "capped", "busy").code == 0


async def test_exec_into_a_container_with_a_76_character_id(dirs: DaemonDirs) -> None:
    await ready(dirs)
    cid = "x" * 76
    assert dirs.cli(*run(dirs, "-d", "--name", cid, "sleep", "1000")).code == 0
    done = dirs.cli("exec", cid, "echo", "in")
    assert (done.code, done.out) == (0, "in\n"), done.err
    assert dirs.cli("rm", "-f", cid).code == 0


async def test_stop_and_kill_of_a_paused_container(dirs: DaemonDirs) -> None:
    await ready(dirs)
    script = "trap 'echo bye; exit 3' TERM; echo ready; while true; do sleep 0.1; done"
    done = dirs.cli(*run(dirs, "-d", "--stop-timeout", "60", "--name", "frozen",
                         "sh", "-c", script))  # fmt: skip
    assert done.code == 0, done.err
    follow = dirs.cli_process("logs", "-f", "frozen")
    try:
        assert read_line(follow.stdout, time.monotonic() + LINE_TIMEOUT) == b"ready\n"
    finally:
        follow.kill()
        follow.wait()
    assert dirs.cli("pause", "frozen").code == 0
    started = time.monotonic()
    done = dirs.cli("stop", "frozen", timeout=90)
    took = time.monotonic() - started
    assert done.code == 0, done.err
    assert took < 30, took  # it got its signal on thawing: not the 60 s grace
    [info] = ps(dirs, "-a")
    assert (info["status"], info["exit_code"]) == ("stopped", 3)
    assert "bye" in dirs.cli("logs", "frozen").out
    assert dirs.cli("start", "frozen").code == 0
    assert dirs.cli("pause", "frozen").code == 0
    assert dirs.cli("kill", "frozen").code == 0  # SIGKILL: thawed to die

    async def killed() -> bool:
        [info] = ps(dirs, "-a")
        return (info["status"], info["exit_code"]) == ("stopped", 137)

    await until(killed)
    assert dirs.cli("rm", "frozen").code == 0
