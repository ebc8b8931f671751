"""Container networking end to end, through the daemon and the CLI.

Each test runs its daemon (and so its containerd, bridges, veths and
iptables rules) in a network namespace of its own, which plays the host:
what a user would check is asked from inside it (``nsenter --net``), and
nothing here touches the real host's network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from supervisor.net import _netns

from .daemon_harness import DaemonDirs, Done, dirs, until
from .test_cli import ps
from .test_metrics import http_get, samples

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio

#: How long a container's server may take to listen.
SERVE_TIMEOUT = 20.0


@pytest.fixture
async def net(dirs: DaemonDirs, tmp_path: Path) -> AsyncIterator[DaemonDirs]:
    """The daemon's dirs, its daemon to be run in a fresh network namespace
    with its default network (bridge) instead of the harness's none."""
    if not Path("/usr/lib/cni/bridge").exists():
        pytest.fail("the CNI plugins are missing (apt-get install containernetworking-plugins)")
    host = tmp_path / "hostns"
    _netns.pin(host)
    dirs.netns = host
    sh(dirs, "ip", "link", "set", "lo", "up")
    text = dirs.config.read_text().replace('default = "none"', 'default = "bridge"')
    dirs.config.write_text(text)
    try:
        yield dirs
    finally:
        _netns.unpin(host)


def sh(d: DaemonDirs, *args: str, check: bool = True) -> str:
    """Run a command on the test's "host" (its network namespace)."""
    assert d.netns is not None
    done = subprocess.run(["nsenter", f"--net={d.netns}", *args], capture_output=True,
                          timeout=60, text=True)  # fmt: skip
    if check:
        assert done.returncode == 0, (args, done.stderr)
    return done.stdout


def run(d: DaemonDirs, *args: str) -> Done:
    return d.cli("run", "--rootfs", str(d.rootfs), *args)


def web(d: DaemonDirs, name: str, *args: str) -> None:
    """A container serving its own /etc over HTTP on port 8080."""
    done = run(d, "-d", "--name", name, *args, "httpd", "-f", "-p", "8080", "-h", "/etc")
    assert done.code == 0, done.err


async def fetch(d: DaemonDirs, url: str) -> str:
    """GET ``url`` from the host, retrying until the server listens (bounded)."""
    deadline = time.monotonic() + SERVE_TIMEOUT
    while True:
        done = subprocess.run(["nsenter", f"--net={d.netns}", "busybox", "wget", "-qO-", url],
                              capture_output=True, timeout=30, text=True)  # fmt: skip
        if done.returncode == 0:
            return done.stdout
        assert time.monotonic() < deadline, f"{url}: {done.stderr}"
        await anyio.sleep(0.1)


def inspect(d: DaemonDirs, cid: str) -> dict[str, object]:
    done = d.cli("inspect", cid)
    assert done.code == 0, done.err
    return json.loads(done.out)[0]  # type: ignore[no-any-return]


async def ready(d: DaemonDirs) -> None:
    d.start()
    await d.message("READY=1")


def leftovers(d: DaemonDirs, *ids: str) -> list[str]:
    """What is left on the "host" of the containers ``ids``: pinned
    namespaces, records, veths, iptables rules, IPAM allocations."""
    found = []
    root = d.state / "net"
    for sub in ("netns", "containers", "files"):
        found += (
            [f"{sub}/{p.name}" for p in (root / sub).iterdir()] if (root / sub).is_dir() else []
        )
    links = sh(d, "ip", "-o", "link", "show")
    found += [line.split(":")[1].strip() for line in links.splitlines() if "veth" in line]
    rules = sh(d, "iptables-save")
    for cid in ids:
        found += [line for line in rules.splitlines() if f'id: "{cid}"' in line]
    found += [line for line in rules.splitlines() if line.startswith("-A CNI-FORWARD -")
              and "/32" in line]  # fmt: skip
    ipam = root / "ipam"
    for path in ipam.rglob("*") if ipam.is_dir() else ():
        if path.is_file() and path.name[0].isdigit():  # an allocation is named by its address
            found.append(f"ipam {path.name}")
    return found


async def test_a_published_port_serves_the_container_page_and_rm_leaves_nothing(
    net: DaemonDirs,
) -> None:
    metrics = net.base / "metrics.sock"
    with net.config.open("a") as config:
        config.write(f'[metrics]\naddress = "unix:{metrics}"\n')
    await ready(net)
    web(net, "web", "-p", "127.0.0.1:18080:8080")
    assert await fetch(net, "http://127.0.0.1:18080/hostname") == "web\n"
    info = inspect(net, "web")
    address = str(info["address"])
    assert info["network"] == "bridge" and address.startswith("10.213.")
    assert info["ports"] == ["127.0.0.1:18080:8080/tcp"]
    hosts = await fetch(net, "http://127.0.0.1:18080/hosts")
    assert f"{address}\tweb\n" in hosts
    row = net.cli("ps").out.splitlines()[1].split()
    assert row[5:7] == [address, "127.0.0.1:18080->8080/tcp"]
    # The host's own address on the bridge reaches the container directly too.
    assert await fetch(net, f"http://{address}:8080/hostname") == "web\n"
    stats = json.loads(net.cli("stats", "--json", "web").out)[0]
    assert stats["net_rx_bytes"] > 0 and stats["net_tx_bytes"] > 0
    _, body = await anyio.to_thread.run_sync(http_get, metrics)
    labels = (("id", "web"), ("image", ""), ("rootfs", str(net.rootfs)))
    got = samples(body)
    assert got[("supervisor_container_network_receive_bytes_total", labels)] > 0
    assert got[("supervisor_container_network_transmit_bytes_total", labels)] > 0
    assert net.cli("rm", "-f", "web").code == 0
    assert leftovers(net, "web") == []
    assert ps(net, "-a") == []
    for _ in range(2):  # the port is free again once the CLI has returned
        done = run(net, "--rm", "-p", "127.0.0.1:18080:8080", "true")
        assert (done.code, done.err) == (0, "")


async def test_containers_of_a_network_reach_each_other_by_name_and_not_other_networks(
    net: DaemonDirs,
) -> None:
    await ready(net)
    assert net.cli("network", "create", "front").out == "front\n"
    assert net.cli("network", "create", "back", "--subnet", "10.99.0.0/24").code == 0
    web(net, "api", "--network", "front")
    done = run(net, "--rm", "--network", "front", "sh", "-c",
               "until wget -qO- http://api:8080/hostname; do sleep 0.1; done")  # fmt: skip
    assert (done.code, done.out) == (0, "api\n"), done.err
    address = str(inspect(net, "api")["address"])
    # The other network cannot reach it, by address or by name.
    # (busybox's timeout signals its own pid: pid 1 here would ignore it.)
    done = run(net, "--rm", "--network", "back", "sh", "-c",
               f"timeout 2 wget -qO- http://{address}:8080/hostname; echo $?")  # fmt: skip
    assert done.code == 0 and done.out.strip() in ("1", "143"), (done.out, done.err)
    done = run(net, "--rm", "--network", "back", "cat", "/etc/hosts")
    # (by name: a generated name such as "rapid_donkey" has "api" in it)
    assert "api" not in {name for line in done.out.splitlines() for name in line.split()[1:]}
    # A container joining later appears in the hosts file of those already there.
    assert net.cli("exec", "api", "cat", "/etc/hosts").out.count("\n") == 7
    assert run(net, "-d", "--name", "worker", "--network", "front", "sleep", "1000").code == 0
    worker = str(inspect(net, "worker")["address"])
    assert f"{worker}\tworker\n" in net.cli("exec", "api", "cat", "/etc/hosts").out
    listing = net.cli("network", "ls").out.splitlines()
    assert [line.split()[0] for line in listing] == ["NAME", "back", "bridge", "front"]
    front = json.loads(net.cli("network", "inspect", "front").out)[0]
    assert front["containers"] == {"api": address, "worker": worker}
    assert front["subnet"] == "10.214.0.0/24"
    done = net.cli("network", "rm", "front")
    assert done.code == 125 and done.err == (
        "supervisor network rm: network front has containers on it: api, worker\n"
    )
    assert net.cli("rm", "-f", "worker").code == 0
    assert "worker" not in net.cli("exec", "api", "cat", "/etc/hosts").out
    assert net.cli("rm", "-f", "api").code == 0
    assert net.cli("network", "rm", "front", "back").out == "front\nback\n"
    links = sh(net, "ip", "-o", "link", "show")
    assert "svbr-" not in links
    assert "svbr-" not in sh(net, "iptables-save")
    assert leftovers(net, "api", "worker") == []


async def test_host_none_and_container_modes(net: DaemonDirs) -> None:
    await ready(net)
    sh(net, "ip", "link", "add", "hostonly0", "type", "bridge")
    done = run(net, "--rm", "--network", "host", "cat", "/proc/net/dev")
    assert done.code == 0 and "hostonly0" in done.out, done.err
    done = run(net, "--rm", "--network", "none", "cat", "/proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in done.out.splitlines()[2:]]
    assert interfaces == ["lo"], done.out
    done = run(net, "--rm", "--network", "none", "ping", "-c", "1", "-W", "2", "127.0.0.1")
    assert done.code == 0, done.out  # runc does not bring lo up in a namespace we made
    web(net, "main")
    done = run(net, "--rm", "--network", "container:main", "sh", "-c",
               "until wget -qO- http://127.0.0.1:8080/hostname; do sleep 0.1; done")  # fmt: skip
    assert (done.code, done.out) == (0, "main\n")
    assert net.cli("rm", "-f", "main").code == 0
    assert leftovers(net, "main") == []


async def test_bad_input_gets_one_line_and_leaves_nothing(net: DaemonDirs) -> None:
    await ready(net)
    web(net, "first", "-p", "18081:8080")
    records = sorted(p.name for p in (net.state / "net" / "containers").iterdir())
    assert records == ["first.json"]
    for args, text in (
        (("-p", "127.0.0.1:18081:80"), "port 127.0.0.1:18081:80/tcp is already published by first"),
        (("-p", "70000:80"), "host port '70000' is not a number from 1 to 65535"),
        (("-p", "80"), "the host port is required"),
        (("-p", "1:2:3:4"), "is not an IP address"),
        (("-p", "8000:80/sctp"), "protocol must be tcp or udp"),
        (("--network", "nowhere"), "no such network: nowhere"),
        (("--network", "container:ghost"), "container ghost has no network of ours to join"),
        (("--network", "host", "-p", "8000:80"), "ports can only be published on a network"),
    ):
        done = run(net, "-d", "--name", "bad", *args, "sleep", "1000")
        lines = done.err.splitlines()
        assert done.code == 125 and len(lines) == 1 and text in lines[0], (args, done.err)
    assert [c["id"] for c in ps(net, "-a")] == ["first"]
    assert sorted(p.name for p in (net.state / "net" / "containers").iterdir()) == records
    for args, text in (
        (("create", "clash", "--subnet", "10.213.7.0/24"), "overlaps network bridge"),
        (("create", "host"), "is reserved"),
        (("create", "x", "--subnet", "10.0.0.0/33"), "subnet '10.0.0.0/33'"),
        (("rm", "bridge"), "cannot be removed"),
        (("rm", "nowhere"), "no such network: nowhere"),
    ):
        done = net.cli("network", *args)
        assert done.code == 125 and text in done.err and done.err.count("\n") == 1, done.err
    assert net.cli("rm", "-f", "first").code == 0
    assert leftovers(net, "first", "bad") == []


async def test_a_restart_keeps_the_address_and_the_published_port(net: DaemonDirs) -> None:
    net.define("flaky", ["sh", "-c", "httpd -p 8080 -h /etc; sleep 2; exit 3"], "always",
               ports='["18082:8080"]')  # fmt: skip
    await ready(net)
    assert await fetch(net, "http://127.0.0.1:18082/hostname") == "flaky\n"
    before = inspect(net, "flaky")

    async def restarted() -> bool:
        info = inspect(net, "flaky")
        return int(str(info["restart_count"])) >= 1 and info["status"] == "running"

    await until(restarted)
    after = inspect(net, "flaky")
    assert after["address"] == before["address"] and after["pid"] != before["pid"]
    assert await fetch(net, "http://127.0.0.1:18082/hostname") == "flaky\n"


async def test_a_killed_daemon_readopts_networks_and_sweeps_what_it_left_half_done(
    net: DaemonDirs,
) -> None:
    await ready(net)
    web(net, "kept", "-p", "18083:8080")
    address = inspect(net, "kept")["address"]
    assert await fetch(net, "http://127.0.0.1:18083/hostname") == "kept\n"
    net.procs[-1].send_signal(signal.SIGKILL)
    net.procs[-1].wait()
    # What a daemon killed between adding a container's network and creating
    # the container leaves: a pinned namespace, a veth, NAT rules, an address.
    script = (
        "import anyio, sys; from pathlib import Path; from supervisor.net import *\n"
        "m = NetworkManager(Path(sys.argv[1])); m.open()\n"
        "m.reserve('ghost', Mode.parse('bridge'), [parse_port('18084:80')])\n"
        "print(anyio.run(m.ensure, 'ghost').address)\n"
    )
    ghost = sh(net, sys.executable, "-c", script, str(net.state / "net")).strip()
    assert ghost.startswith("10.213.")
    assert len(leftovers(net, "ghost")) > 4
    await ready(net)
    assert await fetch(net, "http://127.0.0.1:18083/hostname") == "kept\n"
    info = inspect(net, "kept")
    assert info["address"] == address and info["ports"] == ["18083:8080/tcp"]
    left = leftovers(net, "ghost")
    assert {"netns/kept", "containers/kept.json", "files/kept"} <= set(left)
    assert [line for line in left if "ghost" in line or f"{ghost}/" in line
            or line == f"ipam {ghost}"] == []  # fmt: skip
    assert "18084" not in sh(net, "iptables-save")
    assert net.cli("rm", "-f", "kept").code == 0
    assert leftovers(net, "kept", "ghost") == []
    assert os.listdir(net.state / "net" / "netns") == []


async def test_the_example_web_definition_serves_its_page(net: DaemonDirs) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "containers" / "web.toml"
    text = example.read_text().replace("/var/lib/containerd-supervisor/rootfs/busybox",
                                       str(net.rootfs))  # fmt: skip
    (net.defs / "web.toml").write_text(text)
    await ready(net)
    assert await fetch(net, "http://127.0.0.1:8080/hostname") == "web\n"  # as README's tour
    assert inspect(net, "web")["ports"] == ["127.0.0.1:8080:8080/tcp"]


CRASH_MID_ADD = """
import anyio, dataclasses, json, subprocess, sys
from pathlib import Path
from supervisor.net import Mode, NetworkManager
from supervisor.net._cni import Invocation, run_plugin

root = Path(sys.argv[1])

def state():
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    ipam = [p.name for p in (root / "ipam").rglob("*") if p.name[:1].isdigit()]
    pins = len(list((root / "netns").iterdir()))
    return {"veths": links.count("veth"), "ipam": ipam, "pins": pins,
            "rules": sum('id: \\\\"c1\\\\"' in line for line in rules.splitlines())}

async def main():
    first = NetworkManager(root)
    first.open()
    attachment = first.reserve("c1", Mode.parse("bridge"))
    first._pin(first.netns_path("c1"))
    plugins = first.network("bridge").plugins(first.ipam_dir)
    attachment = first._save(dataclasses.replace(attachment, network="bridge", plugins=plugins))
    # The daemon dies after the bridge plugin's ADD, before portmap's and before the result.
    await run_plugin(plugins[0], "ADD", first._call(attachment, True), name="bridge")
    crashed = state()
    second = NetworkManager(root)
    second.open()
    address = (await second.ensure("c1")).address
    ready = state()
    await second.release("c1")
    print(json.dumps({"crashed": crashed, "address": address, "ready": ready, "released": state()}))

anyio.run(main)
"""


async def test_a_chain_half_added_by_a_killed_daemon_is_undone_then_added_again(
    tmp_path: Path,
) -> None:
    host = tmp_path / "hostns"
    _netns.pin(host)
    try:
        done = subprocess.run(
            ["nsenter", f"--net={host}", sys.executable, "-c", CRASH_MID_ADD,
             str(tmp_path / "net")], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        _netns.unpin(host)
        _netns.unshare_dir(tmp_path / "net" / "netns")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    crashed, ready, released = report["crashed"], report["ready"], report["released"]
    assert crashed["veths"] == 1 and len(crashed["ipam"]) == 1 and crashed["rules"] > 0
    assert ready["veths"] == 1 and ready["ipam"] == [report["address"]] and ready["pins"] == 1
    assert released == {"veths": 0, "ipam": [], "pins": 0, "rules": 0}
