"""Shim groups through the daemon, against a real containerd: members share
one runc shim, first creates started together make one shim, the cap refuses
the one too many and leaves nothing, one member's stop or removal leaves the
others, the shim goes with the last member, and a shim's crash ends every
member, whose policies then restart them; nothing is left afterwards."""

from __future__ import annotations

import json
import os
import signal
from functools import partial
from pathlib import Path

import anyio
import pytest

from supervisor import Client
from supervisor.daemon._groups import GROUP_ANNOTATION
from supervisor.testing import namespace_leftovers, namespace_processes

from .daemon_harness import PREFIX, DaemonDirs, dirs, labels, pid_of, until

__all__ = ("dirs",)  # the fixture, used by name

pytestmark = pytest.mark.anyio

COUNT = PREFIX + "restart-count"


async def ready(d: DaemonDirs, max_shim_group: int | None = None) -> None:
    if max_shim_group is not None:
        d.config.write_text(
            d.config.read_text() + f"[runtime]\nmax_shim_group = {max_shim_group}\n"
        )
    d.start()
    await d.message("READY=1")


def run(d: DaemonDirs, cid: str, *flags: str) -> None:
    done = d.cli("run", "-d", "--name", cid, *flags, "--rootfs", str(d.rootfs), "sleep", "1000")
    assert (done.code, done.out, done.err) == (0, f"{cid}\n", ""), done


async def run_together(d: DaemonDirs, *ids: str, group: str = "g") -> None:
    """``run -d`` of each of ``ids`` at once, from as many CLI processes."""

    async def one(cid: str) -> None:
        await anyio.to_thread.run_sync(run, d, cid, "--shim-group", group)

    async with anyio.create_task_group() as tg:
        for cid in ids:
            tg.start_soon(one, cid)


def shims(namespace: str) -> list[int]:
    """Every runc shim serving the namespace, whether it serves a task or not."""
    return [p for p in namespace_processes(namespace) if _cmdline(p)[:1] and
            _cmdline(p)[0].endswith(b"containerd-shim-runc-v2")]  # fmt: skip


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def parent(pid: int) -> int:
    """A task's shim: its init's parent (the shim is the subreaper of its tasks)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def pids(client: Client, *ids: str) -> dict[str, int]:
    found = {cid: await pid_of(client, cid) for cid in ids}
    assert all(found.values()), found
    return {cid: pid for cid, pid in found.items() if pid is not None}


def assert_nothing_left(d: DaemonDirs) -> None:
    assert namespace_processes(d.namespace) == []
    assert namespace_leftovers(d.namespace) == []
    bundles = d.state / "containerd" / "state" / "io.containerd.runtime.v2.task" / d.namespace
    assert not bundles.is_dir() or list(bundles.iterdir()) == []
    fifo = d.state / "fifo"
    assert not fifo.is_dir() or list(fifo.iterdir()) == []


async def no_shims_within(namespace: str, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while shims(namespace):  # noqa: ASYNC110 (a shim exits after its last Delete)
            await anyio.sleep(0.05)


async def test_members_share_one_shim_even_when_started_together(dirs: DaemonDirs) -> None:
    """Three new groups, four first creates each at once (and two members from
    the definitions directory): one shim per group, no idle one."""
    dirs.define("d1", ["sleep", "1000"], shim_group='"fromdir"', stop_timeout="0.5")
    dirs.define("d2", ["sleep", "1000"], shim_group='"fromdir"', stop_timeout="0.5")
    await ready(dirs)
    groups = {g: [f"{g}-{n}" for n in range(4)] for g in ("ga", "gb", "gc")}
    async with anyio.create_task_group() as tg:
        for g, ids in groups.items():
            tg.start_soon(partial(run_together, dirs, *ids, group=g))
    groups["fromdir"] = ["d1", "d2"]
    async with Client(dirs.address, dirs.namespace) as client:
        await until(lambda: _running(client, "d1", "d2"))
        everyone = [cid for ids in groups.values() for cid in ids]
        by_cid = await pids(client, *everyone)
        served = {g: {parent(by_cid[cid]) for cid in ids} for g, ids in groups.items()}
        assert all(len(s) == 1 for s in served.values()), served
        assert len({s for g in served.values() for s in g}) == 4
        assert sorted(shims(dirs.namespace)) == sorted(s for g in served.values() for s in g)
        spec = (await client.load_container("ga-0")).info.spec
        assert spec["annotations"][GROUP_ANNOTATION] == f"containerd-supervisor/{dirs.namespace}/ga"
    [info] = json.loads(dirs.cli("inspect", "gb-1").out)
    assert info["shim_group"] == "gb"
    [info] = json.loads(dirs.cli("inspect", "d2").out)
    assert info["shim_group"] == "fromdir"
    done = dirs.cli("rm", "-f", *groups["ga"], *groups["gb"], *groups["gc"])
    assert done.code == 0, done.err
    (dirs.defs / "d1.toml").unlink()
    (dirs.defs / "d2.toml").unlink()
    assert dirs.cli("reload").code == 0
    await no_shims_within(dirs.namespace)
    assert_nothing_left(dirs)
    assert "Traceback" not in dirs.output()


async def _running(client: Client, *ids: str) -> bool:
    return all([await pid_of(client, cid) for cid in ids])


async def test_a_full_group_refuses_one_more_and_leaves_nothing(dirs: DaemonDirs) -> None:
    await ready(dirs, max_shim_group=2)
    await run_together(dirs, "a", "b")
    done = dirs.cli("run", "-d", "--name", "c", "--shim-group", "g", "--rootfs", str(dirs.rootfs),
                    "sleep", "1000")  # fmt: skip
    assert done.code == 125 and done.out == ""
    assert done.err.count("\n") == 1 and "shim group g is full" in done.err, done.err
    assert dirs.cli("inspect", "c").code == 125
    ps = json.loads(dirs.cli("ps", "-a", "--json").out)
    assert sorted(c["id"] for c in ps) == ["a", "b"]
    assert not (dirs.state / "fifo" / "c").exists()
    async with Client(dirs.address, dirs.namespace) as client:
        assert sorted(c.id for c in await client.list_containers()) == ["a", "b"]
    # A definition file in a full group is refused by name; the others load.
    dirs.define("fromdir", ["sleep", "1000"], shim_group='"g"')
    applied = dirs.cli("reload")
    assert applied.code == 125 and "fromdir.toml: shim group g is full" in applied.err, applied
    # Another group, and no group, are not limited by this one.
    run(dirs, "other", "--shim-group", "h")
    # Room again once a member goes.
    assert dirs.cli("rm", "-f", "a").code == 0
    run(dirs, "c", "--shim-group", "g")
    (dirs.defs / "fromdir.toml").unlink()
    assert dirs.cli("rm", "-f", "b", "c", "other").code == 0
    assert dirs.cli("reload").code == 0
    await no_shims_within(dirs.namespace)
    assert_nothing_left(dirs)


async def test_members_do_not_interfere_and_the_shim_goes_with_the_last(dirs: DaemonDirs) -> None:
    await ready(dirs)
    await run_together(dirs, "a", "b", "c")
    async with Client(dirs.address, dirs.namespace) as client:
        before = await pids(client, "a", "b", "c")
        [shim] = {parent(pid) for pid in before.values()}
        assert dirs.cli("stop", "-t", "1", "a").code == 0
        assert dirs.cli("rm", "-f", "b").code == 0
        assert await pids(client, "c") == {"c": before["c"]}
        assert shims(dirs.namespace) == [shim]  # a stopped member keeps nothing in it
        assert dirs.cli("start", "a").code == 0
        again = await pids(client, "a", "c")
        assert parent(again["a"]) == shim and again["c"] == before["c"]
        # pause, exec and stats of one member, through the shared shim
        assert dirs.cli("pause", "c").code == 0
        assert dirs.cli("exec", "a", "echo", "hi").out == "hi\n"
        assert dirs.cli("unpause", "c").code == 0
        assert dirs.cli("rm", "-f", "a").code == 0
        assert await pids(client, "c") == {"c": before["c"]}
        assert shims(dirs.namespace) == [shim]
    assert dirs.cli("rm", "-f", "c").code == 0
    await no_shims_within(dirs.namespace)
    assert_nothing_left(dirs)


async def test_a_shim_crash_ends_every_member_and_policies_restart_them(dirs: DaemonDirs) -> None:
    dirs.define("always", ["sleep", "1000"], restart="always", shim_group='"g"', stop_timeout="0.5")
    dirs.define(
        "failure", ["sleep", "1000"], restart="on-failure", shim_group='"g"', stop_timeout="0.5"
    )
    dirs.define("never", ["sleep", "1000"], restart="no", shim_group='"g"', stop_timeout="0.5")
    dirs.define("alone", ["sleep", "1000"], restart="always", stop_timeout="0.5")
    await ready(dirs)
    members = ("always", "failure", "never")
    async with Client(dirs.address, dirs.namespace) as client:
        await until(lambda: _running(client, *members, "alone"))
        before = await pids(client, *members, "alone")
        [shim] = {parent(before[cid]) for cid in members}
        assert parent(before["alone"]) != shim
        os.kill(shim, signal.SIGKILL)

        async def restarted() -> bool:
            now = {cid: await pid_of(client, cid) for cid in ("always", "failure")}
            return all(pid is not None and pid != before[cid] for cid, pid in now.items())

        await until(restarted)

        async def never_recorded() -> bool:
            return PREFIX + "exit-code" in await labels(client, "never")

        await until(never_recorded)
        after = await pids(client, "always", "failure", "alone")
        assert after["alone"] == before["alone"]  # another shim: untouched
        [new_shim] = {parent(after["always"]), parent(after["failure"])}
        assert new_shim != shim
        assert sorted(shims(dirs.namespace)) == sorted({new_shim, parent(after["alone"])})
        for cid in ("always", "failure"):
            assert (await labels(client, cid))[COUNT] == "1"
        never = await labels(client, "never")
        assert never[PREFIX + "exit-code"] in ("137", "255"), never
        assert await pid_of(client, "never") is None
    for name in ("always", "failure", "never", "alone"):
        (dirs.defs / f"{name}.toml").unlink()
    assert dirs.cli("reload").code == 0
    await no_shims_within(dirs.namespace)
    assert_nothing_left(dirs)
    assert "Traceback" not in dirs.output()
