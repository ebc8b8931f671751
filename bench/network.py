"""Networking benchmark (issue 10): what a container's network costs to set up.

The whole run (the daemon, its managed containerd, bridges, veths, iptables
rules) happens in a network namespace this script makes for itself at start,
so nothing touches the host's network. It prints:

 1. Paired rounds (rotating order): wall time of `supervisor run -d` of a
    container with `--network none` and with `--network bridge -p ...`, and
    the floor: the CNI chain's ADD alone (bridge, portmap, firewall: the same
    conf the daemon uses), each plugin executed as the CNI spec says, on a
    freshly pinned namespace. The target: (bridge - none) / chain <= 1.2,
    i.e. our orchestration adds at most 20% over the plugins themselves.
 2. Scale: N containers (default 100) on the default bridge, each publishing
    a port, started 8 at a time; every port checked in iptables' DNAT rules;
    then `rm -f` of all, and what is left counted (namespaces, records, veths,
    iptables rules, IPAM allocations): the target is 0.

    sudo .venv/bin/python bench/network.py [--rounds 15] [--containers 100]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package, not another one installed

from supervisor.net import _netns  # noqa: E402
from supervisor.net._cni import DEFAULT_PLUGIN_DIRS, find_plugin  # noqa: E402
from supervisor.net._networks import DEFAULT_SUBNET, Network, bridge_name, parse_subnet  # noqa: E402
from supervisor.testing import busybox_rootfs  # noqa: E402

CLONE_NEWNET = 0x40000000
READY_TIMEOUT = 60.0


def enter_own_netns() -> None:
    """Move this (still single-threaded) process into a new network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


class Daemon:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.control = base / "control.sock"
        self.rootfs = busybox_rootfs(base / "rootfs")
        self.config = base / "config.toml"
        self.config.write_text(
            'namespace = "netbench"\n'
            f'state_dir = "{base / "state"}"\n'
            f'log_dir = "{base / "logs"}"\n'
            f'definitions_dir = "{base / "defs"}"\n'
            "[control]\n"
            f'socket = "{self.control}"\n'
        )
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(base / "notify.sock"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.getsockname())
        with open(self.base / "daemon.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "daemon", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )  # fmt: skip
        self.notify.settimeout(READY_TIMEOUT)
        while b"READY=1" not in self.notify.recv(4096).split(b"\n"):
            pass

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "--socket", str(self.control), *args],
            capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip

    def run_d(self, name: str, *args: str) -> float:
        started = time.perf_counter()
        done = self.cli("run", "-d", "--name", name, *args, "--rootfs", str(self.rootfs),
                        "sleep", "100000")  # fmt: skip
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"run {name}: {done.stderr.strip()}")
        return took

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        pidfile = self.base / "state" / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text())
            if str(self.base).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def chain_add_alone(scratch: Path, index: int) -> float:
    """The floor: the plugins' ADD executed as the CNI spec says, in order,
    on a new namespace; then DEL (not timed)."""
    network = Network("bench-floor", parse_subnet("10.215.0.0/16"), bridge_name("bench-floor"))
    plugins = network.plugins(scratch / "ipam")
    netns = scratch / f"floor-{index}"
    _netns.pin(netns)
    cid = f"floor{index}"
    ports = {"portMappings": [{"hostPort": 30000 + index, "containerPort": 80, "protocol": "tcp"}]}
    env = dict(os.environ, CNI_CONTAINERID=cid, CNI_NETNS=str(netns), CNI_IFNAME="eth0",
               CNI_PATH=os.pathsep.join(map(str, DEFAULT_PLUGIN_DIRS)))  # fmt: skip
    binaries = [str(find_plugin(p["type"])) for p in plugins]

    def conf(plugin: dict[str, object], prev: object) -> bytes:
        out: dict[str, object] = {"cniVersion": "1.0.0", "name": network.name, **plugin}
        if prev is not None:
            out["prevResult"] = prev
        if plugin.get("capabilities"):
            out["runtimeConfig"] = ports
        return json.dumps(out).encode()

    prev: object = None
    started = time.perf_counter()
    for plugin, binary in zip(plugins, binaries, strict=True):
        done = subprocess.run([binary], input=conf(plugin, prev), capture_output=True,
                              env={**env, "CNI_COMMAND": "ADD"}, check=True)  # fmt: skip
        prev = json.loads(done.stdout)
    took = time.perf_counter() - started
    for plugin, binary in reversed(list(zip(plugins, binaries, strict=True))):
        subprocess.run([binary], input=conf(plugin, prev), capture_output=True,
                       env={**env, "CNI_COMMAND": "DEL"}, check=True)  # fmt: skip
    _netns.unpin(netns)
    return took


def leftovers(state: Path, ids: list[str]) -> dict[str, int]:
    root = state / "net"
    count = {sub: len(list((root / sub).iterdir())) for sub in ("netns", "containers", "files")}
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    count["veths"] = links.count("veth")
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    wanted = set(ids)
    count["rules"] = sum(1 for line in rules.splitlines()
                         if wanted & set(re.findall(r'id: \\"([^"\\]+)\\"', line))
                         or (line.startswith("-A CNI-FORWARD -") and "/32" in line))  # fmt: skip
    count["ipam"] = sum(1 for p in (root / "ipam").rglob("*") if p.name[:1].isdigit())
    return count


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--containers", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py needs root", file=sys.stderr)
        return 1
    enter_own_netns()
    base = Path(tempfile.mkdtemp(prefix="netbench-"))
    daemon = Daemon(base)
    scratch = base / "floor"
    scratch.mkdir()
    try:
        daemon.start()
        print(f"# bench/network.py: {args.rounds} paired rounds; subnet {DEFAULT_SUBNET}")
        daemon.run_d("warm", "--network", "bridge")  # the bridge and its rules exist
        chain_add_alone(scratch, 999)
        none_t, bridge_t, chain_t, extra = [], [], [], []
        for index in range(args.rounds):
            steps = ["none", "bridge", "chain"]
            steps = steps[index % 3 :] + steps[: index % 3]
            got: dict[str, float] = {}
            for step in steps:
                if step == "none":
                    got[step] = daemon.run_d(f"n{index}", "--network", "none")
                elif step == "bridge":
                    got[step] = daemon.run_d(f"b{index}", "--network", "bridge",
                                             "-p", f"127.0.0.1:{20000 + index}:80")  # fmt: skip
                else:
                    got[step] = chain_add_alone(scratch, index)
            daemon.cli("rm", "-f", f"n{index}", f"b{index}")
            none_t.append(got["none"])
            bridge_t.append(got["bridge"])
            chain_t.append(got["chain"])
            extra.append(got["bridge"] - got["none"])
        daemon.cli("rm", "-f", "warm")
        med = statistics.median
        print(f"run -d --network none          {ms(med(none_t))}  (median)")
        print(f"run -d --network bridge -p     {ms(med(bridge_t))}")
        print(f"  bridge - none (paired)       {ms(med(extra))}")
        print(f"CNI chain ADD alone (floor)    {ms(med(chain_t))}")
        ratio = med(extra) / med(chain_t)
        print(f"(bridge - none) / chain        {ratio:7.2f}   target <= 1.2: "
              f"{'met' if ratio <= 1.2 else 'NOT met'}")  # fmt: skip

        n = args.containers
        ids = [f"s{i}" for i in range(n)]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: daemon.run_d(ids[i], "-p", f"{21000 + i}:80"), range(n)))
        took = time.perf_counter() - started
        nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        published = {int(m) for m in re.findall(r"--dport (\d+) -j DNAT", nat)}
        missing = [21000 + i for i in range(n) if 21000 + i not in published]
        print(f"{n} containers on one bridge, 8 at a time: {took:.1f} s ({n / took:.1f}/s); "
              f"ports published: {n - len(missing)} of {n}")  # fmt: skip
        started = time.perf_counter()
        done = daemon.cli("rm", "-f", *ids)
        print(f"rm -f of {n}: {time.perf_counter() - started:.1f} s (exit {done.returncode})")
        left = leftovers(base / "state", ids)
        print(f"left after removal: {left}  target: all 0: "
              f"{'met' if not any(left.values()) else 'NOT met'}")  # fmt: skip
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            listed = daemon.cli("ps", "-a", "--json")
            if listed.returncode == 0 and json.loads(listed.stdout):
                daemon.cli("rm", "-f", *[c["id"] for c in json.loads(listed.stdout)])
        daemon.stop()
        daemon.notify.close()
        _netns.unpin_all(base / "state" / "net" / "netns")
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
