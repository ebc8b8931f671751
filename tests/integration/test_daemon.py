"""The daemon as operators run it: a subprocess with a config, a definitions
directory, its own managed containerd, and systemd's notify socket."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor import Client

from .daemon_harness import PREFIX, DaemonDirs, dirs, labels, pid_of, until

__all__ = ("dirs",)  # the fixture, used by name

pytestmark = pytest.mark.anyio


async def test_definitions_run_restart_and_notify(dirs: DaemonDirs) -> None:
    dirs.define("web", ["sleep", "1000"], restart="always")
    dirs.define("crash", ["sh", "-c", "echo boom >&2; exit 1"], restart="on-failure:3")
    dirs.define("zero", ["sh", "-c", "echo hello; exit 0"], restart="always")
    dirs.define("done", ["sh", "-c", "exit 0"], restart="on-failure")
    dirs.define(
        "hog",
        ["sh", "-c", "x=$(head -c 64000000 /dev/zero | tr '\\0' a)"],
        restart="no",
        memory='"8m"',
    )
    proc = dirs.start(watchdog_usec=400_000)
    ready = await dirs.message("READY=1")
    assert any(line.startswith("STATUS=") for line in ready)
    await dirs.message("WATCHDOG=1", within=5)

    async with Client(dirs.address, dirs.namespace) as client:
        web_pid = await pid_of(client, "web")
        assert web_pid is not None

        async def crash_gave_up() -> bool:
            lab = await labels(client, "crash")
            return (
                lab.get(PREFIX + "restart-count") == "3" and await pid_of(client, "crash") is None
            )

        await until(crash_gave_up)
        lab = await labels(client, "crash")
        assert lab[PREFIX + "exit-code"] == "1"
        assert float(lab[PREFIX + "backoff"]) == pytest.approx(0.4)  # 0.1, 0.2, 0.4

        async def zero_restarted() -> bool:
            return int((await labels(client, "zero")).get(PREFIX + "restart-count", "0")) >= 2

        await until(zero_restarted)

        async def done_exited() -> bool:
            return (await labels(client, "done")).get(PREFIX + "exit-code") == "0"

        await until(done_exited)
        assert (await labels(client, "done"))[PREFIX + "restart-count"] == "0"

        async def oom_recorded() -> bool:
            # One TaskOOM per OOM kill in the container: at least one here.
            return int((await labels(client, "hog")).get(PREFIX + "oom-kills", "0")) >= 1

        await until(oom_recorded)

    records = [json.loads(line) for line in (dirs.logs / "zero.log").read_text().splitlines()]
    assert {"stream": "stdout", "log": "hello\n"}.items() <= records[0].items()
    errors = [json.loads(line) for line in (dirs.logs / "crash.log").read_text().splitlines()]
    assert [(r["stream"], r["log"]) for r in errors[:2]] == [("stderr", "boom\n")] * 2

    proc.send_signal(signal.SIGTERM)
    await dirs.message("STOPPING=1", within=10)
    assert proc.wait(30) == 0
    assert os.path.exists(f"/proc/{web_pid}"), "SIGTERM must leave containers running"


async def test_sigkilled_daemon_adopts_everything(dirs: DaemonDirs) -> None:
    for n in range(10):
        dirs.define(f"c{n}", ["sleep", "1000"], restart="always")
    first = dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:
        before = {f"c{n}": await pid_of(client, f"c{n}") for n in range(10)}
    assert all(before.values())

    first.kill()
    first.wait(10)
    os.kill(before["c9"], signal.SIGKILL)  # exits while no daemon watches

    started = time.monotonic()
    dirs.start()
    await dirs.message("READY=1")
    adopt_seconds = time.monotonic() - started
    async with Client(dirs.address, dirs.namespace) as client:
        after = {f"c{n}": await pid_of(client, f"c{n}") for n in range(9)}
        assert after == {k: v for k, v in before.items() if k != "c9"}

        async def c9_restarted() -> bool:
            pid = await pid_of(client, "c9")
            return pid is not None and pid != before["c9"]

        await until(c9_restarted)
        assert (await labels(client, "c9"))[PREFIX + "restart-count"] == "1"
        assert (await labels(client, "c9"))[PREFIX + "exit-code"] == str(128 + signal.SIGKILL)
    print(f"\nrestart to READY with 10 containers adopted: {adopt_seconds:.2f}s")


async def test_managed_containerd_killed_is_restarted(dirs: DaemonDirs) -> None:
    dirs.define("keep", ["sleep", "1000"], restart="always")
    dirs.define("victim", ["sleep", "1000"], restart="always")
    dirs.start()
    await dirs.message("READY=1")
    pidfile = dirs.state / "containerd" / "containerd.pid"
    old = int(pidfile.read_text())
    async with Client(dirs.address, dirs.namespace) as client:
        keep = await pid_of(client, "keep")
        victim = await pid_of(client, "victim")
    assert keep and victim
    os.kill(old, signal.SIGKILL)

    async def new_containerd() -> bool:
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return False
        async with Client(dirs.address, dirs.namespace) as c:
            return pid != old and await c.is_serving()

    await until(new_containerd)
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "keep") == keep
        os.kill(victim, signal.SIGKILL)  # events and restarts work again

        async def victim_restarted() -> bool:
            pid = await pid_of(client, "victim")
            return pid is not None and pid != victim

        await until(victim_restarted)


async def test_hung_containerd_is_killed_and_restarted(dirs: DaemonDirs) -> None:
    """A containerd that stops answering (SIGSTOP) fails three health checks,
    then is killed and replaced; the containers live on."""
    dirs.define("keep", ["sleep", "1000"], restart="always")
    dirs.start()
    await dirs.message("READY=1")
    pidfile = dirs.state / "containerd" / "containerd.pid"
    old = int(pidfile.read_text())
    async with Client(dirs.address, dirs.namespace) as client:
        keep = await pid_of(client, "keep")
    os.kill(old, signal.SIGSTOP)

    async def replaced() -> bool:
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return False
        async with Client(dirs.address, dirs.namespace) as c:
            return pid != old and await c.is_serving()

    await until(replaced, within=60)
    assert not os.path.exists(f"/proc/{old}/stat") or "Z" in _state(old)
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "keep") == keep
    assert "not answering" in dirs.output()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return "gone"


async def test_bad_definition_is_skipped_and_others_run(dirs: DaemonDirs) -> None:
    dirs.define("good", ["sleep", "1000"])
    (dirs.defs / "broken.toml").write_text('command = "not a list"\nrootfs = "/nope"\n')
    dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "good") is not None
        assert [c.id for c in await client.list_containers()] == ["good"]
    assert "broken.toml" in dirs.output()


def test_bad_config_is_refused_with_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    state = tmp_path / "state"
    config.write_text(f'state_dir = "{state}"\n[logs]\nmax_files = "many"\n')
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(config) in lines[0] and "logs.max_files" in lines[0]
    assert not state.exists()


async def test_task_gone_while_down_is_an_unknown_exit(dirs: DaemonDirs) -> None:
    """A container whose task vanished while no daemon watched (deleted by hand,
    or a daemon killed between deleting it and recording the exit) counts as an
    exit with status 255, and its policy decides."""
    dirs.define("flaky", ["sleep", "1000"], restart="on-failure")
    dirs.define("calm", ["sleep", "1000"], restart="no")
    first = dirs.start()
    await dirs.message("READY=1")
    managed = int((dirs.state / "containerd" / "containerd.pid").read_text())
    first.kill()
    first.wait(10)
    # Its managed containerd outlives it and serves on: delete the tasks through it.
    async with Client(dirs.address, dirs.namespace) as client:
        for cid in ("flaky", "calm"):
            container = await client.load_container(cid)
            await (await container.task()).force_delete()
    dirs.start()
    await dirs.message("READY=1")
    assert int((dirs.state / "containerd" / "containerd.pid").read_text()) == managed  # adopted
    assert "adopted running containerd" in dirs.output()
    async with Client(dirs.address, dirs.namespace) as client:
        flaky = await labels(client, "flaky")
        assert (flaky[PREFIX + "exit-code"], flaky[PREFIX + "restart-count"]) == ("255", "1")

        async def flaky_runs() -> bool:  # after its backoff (0.1 s)
            return await pid_of(client, "flaky") is not None

        await until(flaky_runs)
        calm = await labels(client, "calm")
        assert (calm[PREFIX + "exit-code"], calm[PREFIX + "restart-count"]) == ("255", "0")
        assert await pid_of(client, "calm") is None


def _daemon_with_socket(tmp_path: Path, socket_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[control]\nsocket = "{socket_path}"\n')
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [(0o777, 0, "writable by anyone"), (0o755, 65534, "belongs to uid 65534")],
)
def test_control_socket_directory_others_could_change_is_refused(
    tmp_path: Path, mode: int, owner: int, expected: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chown(run_dir, owner, owner)
    run_dir.chmod(mode)
    done = _daemon_with_socket(tmp_path, run_dir / "control.sock")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(run_dir) in lines[0], done.stderr
    # Refused before anything started: no containerd, no socket.
    assert not (tmp_path / "state" / "containerd").exists()
    assert list(run_dir.iterdir()) == []


async def test_control_socket_planted_link_is_not_followed(dirs: DaemonDirs) -> None:
    victim = dirs.base / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o600)
    dirs.control.symlink_to(victim)
    dirs.start()
    await dirs.message("READY=1")
    assert victim.read_text() == "root's file\n" and victim.stat().st_mode & 0o777 == 0o600
    st = dirs.control.lstat()
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o660 and st.st_uid == 0
    assert dirs.cli("ps").code == 0


async def test_apply_after_a_restart_keeps_unchanged_containers(
    dirs: DaemonDirs, tmp_path: Path
) -> None:
    """Every field of a definition, stored in the container, is what apply
    compares after the daemon restarts: nothing unchanged is replaced."""
    extra = tmp_path / "extra"
    extra.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (extra / "full.toml").write_text(
        f'rootfs = "{dirs.rootfs}"\ncommand = ["sleep", "1000"]\n'
        'env = { A = "1" }\nuser = "65534:65534"\ncwd = "/tmp"\nmemory = "64m"\n'
        'cpus = 0.5\npids = 50\nlabels = { team = "a" }\nstop_timeout = 3\n'
        f'mounts = [{{ source = "{data}", destination = "/data", readonly = true }}]\n'
    )
    daemon = dirs.start()
    await dirs.message("READY=1")
    done = dirs.cli("apply", str(extra))
    assert (done.code, done.out) == (0, "created full\n"), done.err
    async with Client(dirs.address, dirs.namespace) as client:
        pid = await pid_of(client, "full")
    assert pid is not None
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(30)
    dirs.start()
    await dirs.message("READY=1")
    done = dirs.cli("apply", str(extra))
    assert (done.code, done.out, done.err) == (0, "", "")
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "full") == pid
    (extra / "full.toml").write_text(
        (extra / "full.toml").read_text().replace('A = "1"', 'A = "2"')
    )
    done = dirs.cli("apply", str(extra))
    assert (done.code, done.out) == (0, "replaced full\n"), done.err
    assert dirs.cli("rm", "-f", "full").code == 0


async def test_a_reload_whose_client_goes_away_still_finishes(dirs: DaemonDirs) -> None:
    # Slow to stop: it ignores SIGTERM for its 3 s grace, so the reload is
    # still removing it when its client is killed.
    stubborn = "trap '' TERM; while true; do sleep 0.1; done"
    dirs.define("slow", ["sh", "-c", stubborn], "always", stop_timeout="3")
    dirs.start()
    await dirs.message("READY=1")
    (dirs.defs / "slow.toml").unlink()
    client = dirs.cli_process("reload")
    async with Client(dirs.address, dirs.namespace) as containerd:

        async def stopping() -> bool:
            stopped = (await labels(containerd, "slow")).get(PREFIX + "manually-stopped")
            return stopped == "true" or client.poll() is not None

        await until(stopping)
        client.kill()
        client.wait()

        async def gone() -> bool:
            return "slow" not in [c.id for c in await containerd.list_containers()]

        await until(gone, within=20)
