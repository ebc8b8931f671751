"""Real faults injected into real processes, by pid: containerd SIGKILLed in the
middle of creating tasks and while containers exit and restart, the daemon
SIGKILLed, a shim SIGKILLed. Short versions of bench/faults.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from supervisor import (
    Client,
    Container,
    FifoIO,
    NotFound,
    TaskStatus,
    Unavailable,
    oci_spec,
)
from supervisor.daemon._containerd import _alive
from supervisor.testing import (
    ContainerdProcess,
    namespace_leftovers,
    namespace_processes,
)

from .daemon_harness import PREFIX, DaemonDirs, dirs, labels, pid_of, until
from .helpers import WAIT, make_container

__all__ = ("dirs",)  # the fixture, used by name

pytestmark = pytest.mark.anyio

COUNT = PREFIX + "restart-count"


async def test_containerd_killed_mid_create_the_container_runs_again(
    own_containerd: ContainerdProcess, own_client: Client, rootfs: Path
) -> None:
    """containerd SIGKILLed once a task's shim is up but before Create returns
    comes back with the shim and bundle but without the task (Get: NotFound,
    Create: AlreadyExists for ever). new_task clears it; nothing is left."""
    lost = 0
    for n in range(3):
        container = await make_container(own_client, rootfs, f"mid{n}", ["echo", f"run {n}"])
        bundle = own_containerd.task_state_dir(own_client.namespace) / container.id

        async def create(container: Container = container) -> None:
            with pytest.raises(Unavailable):
                await container.new_task()

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(create)
                while not (bundle / "address").exists():  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                own_containerd.kill()
        own_containerd.restart()
        try:
            state = await own_client.process_state(container.id)
        except NotFound:
            lost += 1  # the state that used to be stuck for ever
        else:
            assert state.status is TaskStatus.CREATED
            await (await container.task()).force_delete()
        io = FifoIO.create(own_client.fifo_dir, container.id)
        task = await container.new_task(io)
        await task.start()
        with anyio.fail_after(WAIT):
            assert await io.stdout_reader.read_all() == f"run {n}\n".encode()
            assert (await task.wait()).code == 0
        await task.delete()
        await container.delete()
    assert lost >= 1, "the kill never hit the window it is meant to hit"


async def test_runc_state_of_a_lost_container_is_cleared_and_the_id_runs(
    own_containerd: ContainerdProcess, own_client: Client, rootfs: Path, tmp_path: Path
) -> None:
    """runc's state of a container of the id that containerd does not know (a
    shim killed mid-create, or containerd's clean-up after it given up) made
    every Create fail with runc's "container with given ID already exists".
    new_task clears it with runc's own `delete --force`; its `runc init` goes."""
    container = await make_container(own_client, rootfs, "runcleft", ["echo", "ran"])
    bundle = tmp_path / "lost-bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(oci_spec(rootfs, ["sleep", "1000"])))
    runc_root = Path("/run/containerd/runc") / own_client.namespace
    subprocess.run(
        ["runc", "--root", str(runc_root), "create", "--bundle", str(bundle), "runcleft"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=WAIT,
    )
    try:
        init = json.loads((runc_root / "runcleft" / "state.json").read_text())["init_process_pid"]
        assert _proc_state(init) not in (b"", b"Z")  # runc init, waiting to be started
        io = FifoIO.create(own_client.fifo_dir, container.id)
        task = await container.new_task(io)
        await task.start()
        with anyio.fail_after(WAIT):
            assert await io.stdout_reader.read_all() == b"ran\n"
            assert (await task.wait()).code == 0
        assert _proc_state(init) in (b"", b"Z")
        await task.delete()
        await container.delete()
    finally:
        if (runc_root / "runcleft" / "state.json").exists() and not await _task_exists(
            own_client, "runcleft"
        ):
            subprocess.run(
                ["runc", "--root", str(runc_root), "delete", "--force", "runcleft"],
                capture_output=True,
                check=False,
                timeout=WAIT,
            )


def _managed_pid(dirs: DaemonDirs) -> int | None:
    try:
        return int((dirs.state / "containerd" / "containerd.pid").read_text())
    except (OSError, ValueError):
        return None


async def _serving_again(dirs: DaemonDirs, old: int) -> None:
    async def replaced() -> bool:
        pid = _managed_pid(dirs)
        if pid is None or pid == old:
            return False
        async with Client(dirs.address, dirs.namespace) as c:
            return await c.is_serving()

    await until(replaced)


def _log_lines(dirs: DaemonDirs, cid: str) -> list[str]:
    path = dirs.logs / f"{cid}.log"
    if not path.exists():
        return []
    return [json.loads(line)["log"] for line in path.read_text().splitlines()]


async def test_containerd_sigkills_leave_no_container_stopped(dirs: DaemonDirs) -> None:
    """containerd SIGKILLed three times while containers exit and restart:
    every `always` container runs again, every on-failure:6 container runs
    exactly 7 times (its count exact: no restart lost or done twice), the log
    has no traceback, and removing everything leaves nothing behind."""
    loops = [f"loop{n}" for n in range(4)]
    budgets = [f"budget{n}" for n in range(3)]
    for cid in loops:
        dirs.define(cid, ["sh", "-c", "echo run; sleep 0.5; exit 3"], restart="always")
    for cid in budgets:
        dirs.define(cid, ["sh", "-c", "echo run; sleep 0.4; exit 2"], restart="on-failure:6")
    dirs.define("steady", ["sleep", "1000"], restart="always")
    daemon = dirs.start()
    await dirs.message("READY=1")
    rng = random.Random(8)
    for _ in range(3):
        await anyio.sleep(rng.uniform(0.3, 1.0))  # the fault comes at a random moment
        old = _managed_pid(dirs)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await _serving_again(dirs, old)

    async with Client(dirs.address, dirs.namespace) as client:
        counts = {cid: int((await labels(client, cid))[COUNT]) for cid in loops}

        async def loops_go_on() -> bool:
            for cid in loops:
                if int((await labels(client, cid))[COUNT]) < counts[cid] + 2:
                    return False
            return True

        await until(loops_go_on, within=40)

        async def budgets_spent() -> bool:  # the last exit recorded, no start pending
            for cid in budgets:
                lab = await labels(client, cid)
                if (
                    lab[COUNT] != "6"
                    or PREFIX + "next-start" in lab
                    or lab.get(PREFIX + "exit-pid") != lab.get(PREFIX + "started-pid")
                ):
                    return False
            return True

        await until(budgets_spent, within=60)
        for cid in budgets:
            assert (await labels(client, cid))[PREFIX + "exit-code"] == "2"
            assert _log_lines(dirs, cid) == ["run\n"] * 7, cid
        assert await pid_of(client, "steady") is not None

    for cid in [*loops, *budgets, "steady"]:
        done = dirs.cli("rm", "-f", cid)
        assert done.code == 0, done.err
    managed = _managed_pid(dirs)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    output = dirs.output()
    assert "Traceback" not in output, output
    assert managed is not None and not _alive(managed)  # the replacement was stopped too
    assert namespace_processes(dirs.namespace) == []
    assert namespace_leftovers(dirs.namespace) == []
    bundles = dirs.state / "containerd" / "state" / "io.containerd.runtime.v2.task"
    assert list((bundles / dirs.namespace).iterdir()) == []


async def test_daemon_sigkilled_at_random_points(dirs: DaemonDirs) -> None:
    """The daemon (and with it its managed containerd) SIGKILLed three times
    while containers restart: running ones are adopted with their pids, none
    is restarted spuriously, none is left stopped."""
    for n in range(3):
        dirs.define(f"keep{n}", ["sleep", "1000"], restart="unless-stopped")
    dirs.define("loop", ["sh", "-c", "echo run; sleep 0.3; exit 1"], restart="on-failure:5")
    dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:
        keep = {f"keep{n}": await pid_of(client, f"keep{n}") for n in range(3)}
    assert all(keep.values())
    rng = random.Random(20)
    for _ in range(3):
        await anyio.sleep(rng.uniform(0.05, 0.9))
        proc = dirs.procs[-1]
        proc.kill()
        proc.wait(10)
        dirs.start()
        await dirs.message("READY=1")
        async with Client(dirs.address, dirs.namespace) as client:
            for cid, pid in keep.items():
                assert await pid_of(client, cid) == pid, cid
                assert (await labels(client, cid))[COUNT] == "0"

    async with Client(dirs.address, dirs.namespace) as client:

        async def loop_spent() -> bool:
            lab = await labels(client, "loop")
            return (
                lab[COUNT] == "5"
                and PREFIX + "next-start" not in lab
                and (lab.get(PREFIX + "exit-pid") == lab.get(PREFIX + "started-pid"))
            )

        await until(loop_spent, within=40)
    # Each daemon SIGKILL also killed containerd, so an exit may have been
    # seen by nobody (recorded as 255) and a run's last line may be lost, but
    # the count never exceeds the budget and the container is never stuck.
    assert "Traceback" not in dirs.output()


async def test_shim_sigkilled_the_policy_restarts_the_container(dirs: DaemonDirs) -> None:
    dirs.define("victim", ["sleep", "1000"], restart="always")
    dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:
        pid = await pid_of(client, "victim")
        assert pid is not None
        shims = [p for p in namespace_processes(dirs.namespace) if _is_shim(p)]
        assert len(shims) == 1
        os.kill(shims[0], signal.SIGKILL)

        async def restarted() -> bool:
            now = await pid_of(client, "victim")
            return now is not None and now != pid

        await until(restarted)
        assert (await labels(client, "victim"))[COUNT] == "1"
    assert "Traceback" not in dirs.output()


async def test_a_shim_too_slow_for_containerds_reload_is_stopped(dirs: DaemonDirs) -> None:
    """containerd gives each shim 5 s to answer its reload; then it kills the
    shim's container and deletes its bundle, but leaves the shim running where
    nothing reaches it (containerd 1.6). Here the shim is SIGSTOPped across a
    containerd SIGKILL and SIGCONTed once containerd serves, as a slow shim
    recovers: the daemon kills that stray; the container (restart "no") is
    recorded as ended, starts again under a new shim, and after `rm -f` no
    process of the namespace is left."""
    dirs.define("victim", ["sleep", "1000"])
    dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:
        pid = await pid_of(client, "victim")
        shims = [p for p in namespace_processes(dirs.namespace) if _is_shim(p)]
        assert pid is not None and len(shims) == 1
        stray = os.pidfd_open(shims[0])
        try:
            signal.pidfd_send_signal(stray, signal.SIGSTOP)
            old = _managed_pid(dirs)
            assert old is not None
            os.kill(old, signal.SIGKILL)
            await _serving_again(dirs, old)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(stray, signal.SIGCONT)

            async def stray_gone() -> bool:
                return _proc_state(shims[0]) in (b"", b"Z")

            async def ended() -> bool:
                return await pid_of(client, "victim") is None

            await until(stray_gone)
            await until(ended)
        finally:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(stray, signal.SIGCONT)
            os.close(stray)
        assert dirs.cli("start", "victim").code == 0
        again = await pid_of(client, "victim")
        assert again is not None and again != pid
    assert dirs.cli("rm", "-f", "victim").code == 0
    await until(_nothing_left(dirs.namespace))
    assert "Traceback" not in dirs.output()


async def _task_exists(client: Client, cid: str) -> bool:
    try:
        await client.process_state(cid)
    except NotFound:
        return False
    return True


def _proc_state(pid: int) -> bytes:
    """A process's state letter; empty once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return b""
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]


def _nothing_left(namespace: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not namespace_processes(namespace)

    return check


def _is_shim(pid: int) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return args[0].endswith(b"containerd-shim-runc-v2")


async def test_second_daemon_on_one_state_dir_refuses(dirs: DaemonDirs) -> None:
    first = dirs.start()
    await dirs.message("READY=1")
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "supervisor", "daemon", "--config", str(dirs.config)],
            check=False,
        )
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "another supervisor daemon" in lines[0], lines
    assert str(first.pid) in lines[0]
    assert first.poll() is None


async def test_full_log_disk_costs_logs_not_supervision(dirs: DaemonDirs) -> None:
    """Logs on a 64 KiB tmpfs: a container that writes more still runs to its
    end (its output is read and dropped, never left to block it), restarts go
    on, and the daemon logs the failure in one line, no traceback."""
    dirs.logs.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,nr_inodes=4", "tmpfs", str(dirs.logs)],
        check=True,
    )
    try:
        chatty = "i=0; while [ $i -lt 4000 ]; do echo line-$i-$(seq -s - 1 12); i=$((i+1)); done"
        dirs.define("chatty", ["sh", "-c", f"{chatty}; exit 4"], restart="no")
        dirs.define("ticker", ["sh", "-c", "echo tick; exit 1"], restart="on-failure:3")
        daemon = dirs.start()
        await dirs.message("READY=1")
        async with Client(dirs.address, dirs.namespace) as client:

            async def both_done() -> bool:
                chatty_labels = await labels(client, "chatty")
                ticker_labels = await labels(client, "ticker")
                return (
                    chatty_labels.get(PREFIX + "exit-code") == "4"
                    and ticker_labels[COUNT] == "3"
                    and PREFIX + "next-start" not in ticker_labels
                    and ticker_labels.get(PREFIX + "exit-pid")
                    == ticker_labels.get(PREFIX + "started-pid")
                )

            await until(both_done)
        assert daemon.poll() is None
        # No room for a third log file: the container runs, its output reaches
        # the attached client, and only the log misses it.
        done = dirs.cli(
            "run", "--rm", "--rootfs", str(dirs.rootfs), "--name", "third", "echo", "hi"
        )
        assert (done.code, done.out) == (0, "hi\n"), done.err
        output = dirs.output()
        assert "Traceback" not in output
        # One line per run whose output could not be written (chatty's one
        # run, ticker's four at most, third's log that could not be made).
        failures = [line for line in output.splitlines() if "No space left on device" in line]
        assert 2 <= len(failures) <= 6, output
        assert all(line.startswith("ERROR supervisor.daemon: cannot write") for line in failures)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        subprocess.run(["umount", "-l", str(dirs.logs)], check=False)


async def test_daemon_failing_at_start_stops_its_containerd(dirs: DaemonDirs) -> None:
    """A control socket that cannot be made (a directory has its name) stops the
    daemon after its managed containerd started: one line, exit code 1, and
    the managed containerd stopped with it."""
    dirs.control.mkdir()
    (dirs.control / "keep").write_text("")
    daemon = dirs.start()
    assert daemon.wait(60) == 1
    output = dirs.output()
    assert "Traceback" not in output, output
    assert output.strip().splitlines()[-1].startswith("supervisor daemon: "), output
    pid = _managed_pid(dirs)  # the pidfile goes with a clean stop
    assert pid is None or not _alive(pid)
    assert "started containerd" in output


async def test_reload_during_a_hung_containerd_is_finished_later(dirs: DaemonDirs) -> None:
    """SIGHUP while the managed containerd is SIGSTOPped (the daemon kills and
    restarts it): the removal and the replacement that failed are retried
    until done, never dropped; the removed container is gone, the changed
    one runs its new command, and nothing is left unsupervised."""
    dirs.define("gone", ["sleep", "1000"], restart="always")
    dirs.define("changed", ["sleep", "1000"], restart="always")
    dirs.define("same", ["sleep", "1000"], restart="always")
    daemon = dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:
        same = await pid_of(client, "same")
        old_hash = (await labels(client, "changed"))[PREFIX + "definition-hash"]
    (dirs.defs / "gone.toml").unlink()
    dirs.define("changed", ["sleep", "2000"], restart="always")
    stopped = _managed_pid(dirs)
    assert stopped is not None
    os.kill(stopped, signal.SIGSTOP)
    try:
        daemon.send_signal(signal.SIGHUP)

        async def converged() -> bool:
            if _managed_pid(dirs) == stopped:
                return False  # the hung one is still there
            async with Client(dirs.address, dirs.namespace) as client:
                if not await client.is_serving():
                    return False
                ids = {c.id for c in await client.list_containers()}
                if "gone" in ids or "changed" not in ids:
                    return False
                try:
                    changed = await labels(client, "changed")
                except NotFound:
                    return False  # replaced (deleted, made again) since the listing
                return (
                    changed[PREFIX + "definition-hash"] != old_hash
                    and await pid_of(client, "changed") is not None
                )

        await until(converged, within=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGCONT)
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "same") == same  # untouched through it all
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert "Traceback" not in dirs.output()


async def test_a_definition_that_no_longer_loads_keeps_its_container(dirs: DaemonDirs) -> None:
    dirs.define("typo", ["sleep", "1000"], restart="always")
    daemon = dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:
        pid = await pid_of(client, "typo")
    # The file keeps its container even when its name is not the id.
    (dirs.defs / "other-name.toml").write_text(
        f'id = "renamed"\nrootfs = "{dirs.rootfs}"\ncommand = ["sleep", "1000"]\n'
    )
    assert dirs.cli("reload").code == 0
    async with Client(dirs.address, dirs.namespace) as client:
        renamed = await pid_of(client, "renamed")
    (dirs.defs / "typo.toml").write_text('rootfs = "unterminated\n')
    (dirs.defs / "other-name.toml").write_text('command = "not a list"\n')
    done = dirs.cli("reload")
    assert done.code == 125 and "typo.toml" in done.out + done.err
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "typo") == pid
        assert await pid_of(client, "renamed") == renamed
    # ps says why, inspect says it in full.
    done = dirs.cli("ps")
    assert done.code == 0
    rows = {line.split()[0]: line for line in done.out.splitlines()[1:]}
    assert "(!)" in rows["typo"] and "(!)" in rows["renamed"], done.out
    assert "typo: left as it is" in done.err and "typo.toml" in done.err, done.err
    [info] = json.loads(dirs.cli("inspect", "renamed").out)
    assert "other-name.toml" in info["problem"]
    # Fixed: the container is the file's again, and the problem is gone.
    dirs.define("typo", ["sleep", "1000"], restart="always")
    (dirs.defs / "other-name.toml").unlink()
    assert dirs.cli("reload").code == 0
    [info] = json.loads(dirs.cli("inspect", "typo").out)
    assert info["problem"] is None and info["status"] == "running"
    async with Client(dirs.address, dirs.namespace) as client:
        assert await pid_of(client, "typo") == pid  # unchanged file: untouched
        assert await pid_of(client, "renamed") is None  # removed with its file
    assert daemon.poll() is None


async def test_daemon_sigkilled_in_rm_f_the_next_one_finishes_the_removal(
    dirs: DaemonDirs,
) -> None:
    """`rm -f` of an `always` container, the daemon SIGKILLed after the kill
    and before the container's delete (held there: something outside keeps
    its stdout FIFO open, so the removal waits for the log to drain): the next
    daemon removes it, and does not start it again (as `always` would a
    container merely stopped by hand)."""
    dirs.start()
    await dirs.message("READY=1")
    done = dirs.cli("run", "-d", "--rootfs", str(dirs.rootfs), "--name", "doomed",
                    "--restart", "always", "sleep", "1000")  # fmt: skip
    assert done.code == 0, done.err
    async with Client(dirs.address, dirs.namespace) as client:
        state = await client.process_state("doomed")
    holder = os.open(state.stdout, os.O_WRONLY | os.O_NONBLOCK)
    try:
        rm = dirs.cli_process("rm", "-f", "doomed")
        async with Client(dirs.address, dirs.namespace) as client:

            async def killed() -> bool:
                return (await client.process_state("doomed")).status is TaskStatus.STOPPED

            await until(killed, within=10)
        await anyio.sleep(0.3)  # the removal waits in the log's drain (2 s)
        proc = dirs.procs[-1]
        proc.kill()
        proc.wait(10)
        rm.wait(10)
    finally:
        os.close(holder)
    dirs.start()
    await dirs.message("READY=1")
    async with Client(dirs.address, dirs.namespace) as client:

        async def gone() -> bool:
            try:
                await client.load_container("doomed")
            except NotFound:
                return True
            assert await pid_of(client, "doomed") is None, "started again"
            return False

        await until(gone, within=10)
        await anyio.sleep(1.5)  # and it stays gone
        assert "doomed" not in {c.id for c in await client.list_containers()}
    assert "doomed" not in dirs.cli("ps", "-a").out
