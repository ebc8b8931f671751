"""Networking faults found by trying to break it (a review): other CNI users'
rules, definitions changed to clashing or swapped ports, a sidecar defined
before its target, a state dir behind a link, a lost record. Each daemon runs
in a network namespace of its own (see test_network.py)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from supervisor.net import _netns

from .daemon_harness import DaemonDirs, dirs, until
from .test_network import fetch, inspect, net, ready, run, sh, web

__all__ = ("dirs", "net")

pytestmark = pytest.mark.anyio

FOREIGN = """
import anyio, sys
from pathlib import Path
from supervisor.net import _netns
from supervisor.net._cni import Invocation, add_chain
base = Path(sys.argv[1])
plugins = [{"type": "bridge", "bridge": "nerdctl0", "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.4.0.0/24"}]],
                     "dataDir": str(base / "ipam")}},
           {"type": "portmap", "capabilities": {"portMappings": True}}]
_netns.pin(base / "ns")
call = Invocation("f" * 64, str(base / "ns"), "eth0",
                  {"portMappings": [{"hostPort": 18500, "containerPort": 80, "protocol": "tcp"}]})
anyio.run(add_chain, "nerdctl-bridge", plugins, call)
"""


async def test_the_start_sweep_leaves_other_cni_users_rules_alone(net: DaemonDirs) -> None:
    """Another CNI user on the host (nerdctl, podman, a CRI) tags its rules
    `id: "<its id>"` too: our sweep must not take its NAT and ports away."""
    await ready(net)
    web(net, "mine", "-p", "18083:8080")  # any attachment makes the sweep run
    foreign = net.base / "foreign"
    foreign.mkdir()
    sh(net, sys.executable, "-c", FOREIGN, str(foreign))
    try:
        before = [line for line in sh(net, "iptables-save").splitlines() if "f" * 64 in line]
        assert len(before) >= 4
        net.procs[-1].terminate()
        net.procs[-1].wait()
        await ready(net)
        after = [line for line in sh(net, "iptables-save").splitlines() if "f" * 64 in line]
        assert after == before
    finally:
        _netns.unpin(foreign / "ns")


async def test_a_changed_port_that_clashes_keeps_the_running_container(net: DaemonDirs) -> None:
    """A definition changed to a port another container publishes: the
    change is refused with one line, and the old container keeps running."""
    net.define("a", ["httpd", "-f", "-p", "8080", "-h", "/etc"], "always", ports='["18101:8080"]')
    net.define("b", ["httpd", "-f", "-p", "8080", "-h", "/etc"], "always", ports='["18102:8080"]')
    await ready(net)
    assert await fetch(net, "http://127.0.0.1:18102/hostname") == "b\n"
    net.define("b", ["httpd", "-f", "-p", "8080", "-h", "/etc"], "always", ports='["18101:8080"]')
    done = net.cli("reload")
    assert done.code == 125 and "already published by a" in done.err
    assert [c for c in net.cli("ps", "-a").out.split() if c == "b"] == ["b"]


async def test_swapping_two_definitions_ports_in_one_reload(net: DaemonDirs) -> None:
    net.define("a", ["sleep", "1000"], "always", ports='["18101:80"]')
    net.define("b", ["sleep", "1000"], "always", ports='["18102:80"]')
    await ready(net)
    net.define("a", ["sleep", "1000"], "always", ports='["18102:80"]')
    net.define("b", ["sleep", "1000"], "always", ports='["18101:80"]')
    done = net.cli("reload")
    assert done.code == 0, done.err
    assert inspect(net, "a")["ports"] == ["18102:80/tcp"]


async def test_a_sidecar_definition_named_before_its_target(net: DaemonDirs) -> None:
    """agent.toml joins web's namespace; 'agent' sorts before 'web'."""
    net.define("web", ["httpd", "-f", "-p", "8080", "-h", "/etc"], "always")
    net.define("agent", ["sleep", "1000"], "always", network='"container:web"')
    await ready(net)

    async def both() -> bool:
        ids = {line.split()[0] for line in net.cli("ps").out.splitlines()[1:]}
        return {"web", "agent"} <= ids

    await until(both, within=15)


async def test_a_symlinked_state_dir_does_not_stack_mounts(net: DaemonDirs) -> None:
    real = net.base / "real-state"
    real.mkdir()
    link = Path(tempfile.mkdtemp(dir="/tmp", prefix="nr")) / "s"  # (a unix socket path is short)
    link.symlink_to(real)
    net.config.write_text(net.config.read_text().replace(str(net.state), str(link)))
    netns = real / "net" / "netns"
    try:
        for i in range(3):
            await ready(net)
            assert run(net, "-d", "--name", f"c{i}", "sleep", "1000").code == 0
            net.procs[-1].terminate()
            net.procs[-1].wait()
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        assert mounts.count(str(netns)) == 1, mounts.count(str(netns))
    finally:
        await ready(net)
        for i in range(3):
            net.cli("rm", "-f", f"c{i}")
        net.procs[-1].terminate()
        net.procs[-1].wait()
        while subprocess.run(["umount", str(netns)], capture_output=True).returncode == 0:
            pass


async def test_an_unreadable_record_does_not_strand_its_container(net: DaemonDirs) -> None:
    """A record lost (written without fsync, a crash): the container is still
    there and its labels say its network; it must start again."""
    await ready(net)
    web(net, "kept", "--restart", "always", "-p", "18103:8080")
    assert await fetch(net, "http://127.0.0.1:18103/hostname") == "kept\n"
    net.procs[-1].kill()
    net.procs[-1].wait()
    (net.state / "net" / "containers" / "kept.json").write_text("")
    await ready(net)
    assert await fetch(net, "http://127.0.0.1:18103/hostname") == "kept\n"
