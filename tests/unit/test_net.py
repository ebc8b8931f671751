"""supervisor.net without the kernel: ports, modes, subnets, the files that
name things, the CNI runner (with plugins that are small scripts)."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest

from supervisor.errors import InvalidArgument
from supervisor.net import Mode, PortMapping, parse_port
from supervisor.net._cni import CniError, Invocation, add_chain, del_chain, find_plugin
from supervisor.net._files import hosts, resolv_conf, write_in_place
from supervisor.net._iptables import _ids
from supervisor.net._networks import (
    Network,
    bridge_name,
    check_network_name,
    free_subnet,
    overlapping,
    parse_subnet,
)
from supervisor.net._ports import check_ports

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:80", PortMapping(8080, 80)),
        ("8080:80/tcp", PortMapping(8080, 80)),
        ("53:53/UDP", PortMapping(53, 53, "udp")),
        ("127.0.0.1:8080:80", PortMapping(8080, 80, "tcp", "127.0.0.1")),
        ("0.0.0.0:8080:80", PortMapping(8080, 80)),
        ("1:65535", PortMapping(1, 65535)),
    ],
)
def test_ports_parse_as_docker_takes_them(spec: str, expected: PortMapping) -> None:
    assert parse_port(spec) == expected
    assert parse_port(str(expected)) == expected


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("80", "the host port is required"),
        ("", "is not [IP:]HOST:CONTAINER"),
        ("0:80", "host port '0'"),
        ("65536:80", "host port '65536'"),
        ("80:-1", "container port '-1'"),
        ("\uff18\uff10:80", "host port '\uff18\uff10'"),
        ("a:80", "host port 'a'"),
        ("80:80/sctp", "protocol must be tcp or udp"),
        ("localhost:80:80", "is not an IP address"),
        ("::1:80:80", "only IPv4 addresses"),
        (":80:80", "the address before the host port is empty"),
        ("1:2:3:4", "is not an IP address"),
        ("224.0.0.1:80:80", "is not an address of a host"),
        ("255.255.255.255:80:80", "is not an address of a host"),
        ("x" * 101, "is not [IP:]HOST:CONTAINER"),
    ],
)
def test_bad_ports_say_what_is_wrong(spec: str, text: str) -> None:
    with pytest.raises(InvalidArgument, match=None) as caught:
        parse_port(spec)
    assert text in str(caught.value)


def test_ports_that_clash() -> None:
    every = PortMapping(8080, 80)
    local = PortMapping(8080, 81, "tcp", "127.0.0.1")
    other = PortMapping(8080, 80, "tcp", "10.0.0.1")
    assert every.clashes(local) and local.clashes(every)
    assert not local.clashes(other)
    assert not every.clashes(PortMapping(8080, 80, "udp"))
    assert check_ports([local, other]) == (other, local)
    assert check_ports([every, every]) == (every,)
    with pytest.raises(InvalidArgument, match="publish the same host port"):
        check_ports([every, local])


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("none", Mode("none")),
        ("host", Mode("host")),
        ("bridge", Mode("network", "bridge")),
        ("my-net.1", Mode("network", "my-net.1")),
        ("container:web", Mode("container", "web")),
    ],
)
def test_modes(text: str, mode: Mode) -> None:
    assert Mode.parse(text) == mode and str(mode) == text


@pytest.mark.parametrize("text", ["", "container:", "-x", "a b", "x" * 64, "a/b", "container"])
def test_bad_modes(text: str) -> None:
    with pytest.raises(InvalidArgument):
        Mode.parse(text)


def test_network_names_and_bridges() -> None:
    assert check_network_name("a") == "a"
    with pytest.raises(InvalidArgument, match="reserved"):
        check_network_name("none")
    assert bridge_name("bridge") == "supervisor0"
    names = {bridge_name(f"net{i}") for i in range(1000)}
    assert len(names) == 1000 and all(len(n) <= 15 for n in names)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.1/24", "host bits set"),
        ("10.0.0.0/31", "from /8 to /30"),
        ("10.0.0.0/7", "from /8 to /30"),
        ("fd00::/64", "only IPv4"),
        ("127.0.0.0/8", "loopback"),
        ("nonsense", "does not appear to be"),
    ],
)
def test_bad_subnets(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_subnet(text)
    assert why in str(caught.value)


def test_free_subnets_skip_those_taken() -> None:
    pool = parse_subnet("10.214.0.0/16")
    taken = [Network("a", parse_subnet("10.214.0.0/24"), "b1"),
             Network("b", parse_subnet("10.214.1.0/25"), "b2")]  # fmt: skip
    assert free_subnet(pool, taken) == ipaddress.ip_network("10.214.2.0/24")
    assert overlapping(parse_subnet("10.214.1.128/25"), taken) is None
    assert overlapping(parse_subnet("10.0.0.0/8"), taken) is taken[0]
    full = [Network("all", pool, "b")]
    with pytest.raises(InvalidArgument, match="no free /24"):
        free_subnet(pool, full)


def test_network_round_trips_and_its_chain() -> None:
    network = Network("front", parse_subnet("10.5.0.0/24"), "svbr-x", 12.5)
    assert Network.from_json(json.loads(json.dumps(network.to_json()))) == network
    assert str(network.gateway) == "10.5.0.1"
    kinds = [p["type"] for p in network.plugins(Path("/ipam"))]
    assert kinds == ["bridge", "portmap", "firewall"]


def test_resolv_conf_drops_loopback_nameservers(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    host.write_text(
        "# comment\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.1\n"
        "nameserver fe80::1%eth0\nnameserver bogus\nsearch example.org\noptions ndots:2\n"
    )
    assert resolv_conf(host) == (
        "# comment\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n"
        "search example.org\noptions ndots:2\n"
    )
    assert resolv_conf(tmp_path / "missing") == ""


def test_resolv_conf_behind_systemd_resolved_takes_its_upstream_servers(tmp_path: Path) -> None:
    stub, upstream = tmp_path / "stub", tmp_path / "upstream"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\nsearch lan\n")
    upstream.write_text("nameserver 192.0.2.53\nsearch lan\n")
    assert resolv_conf(stub, upstream) == "nameserver 192.0.2.53\nsearch lan\n"
    assert resolv_conf(stub, tmp_path / "none") == "options edns0\nsearch lan\n"


def test_hosts_lists_itself_then_its_network_by_name() -> None:
    text = hosts(("10.0.0.2", "web"), [("10.0.0.4", "db"), ("10.0.0.3", "api")])
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert text.endswith("10.0.0.2\tweb\n10.0.0.3\tapi\n10.0.0.4\tdb\n")
    assert "web" not in hosts(None)


def test_files_are_rewritten_in_place_and_never_through_a_link(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    write_in_place(path, "a long first version\n")
    inode = path.stat().st_ino
    write_in_place(path, "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode
    target = tmp_path / "target"
    target.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError):
        write_in_place(link, "x")
    assert target.read_text() == "mine"


def test_ids_in_iptables_comments_of_our_networks_only() -> None:
    rule = '-A POSTROUTING -m comment --comment "name: \\"{}\\" id: \\"web\\"" -j X'
    assert _ids(rule.format("supervisor-bridge")) == {"web"}
    assert _ids(rule.format("bridge")) == set()  # nerdctl's default network: not ours
    dnat = '-A CNI-HOSTPORT-DNAT -m comment --comment "dnat name: \\"supervisor-a\\" id: \\"c\\""'
    assert _ids(dnat) == {"c"}
    assert _ids("-A CNI-FORWARD -s 10.0.0.2/32 -j ACCEPT") == set()


# -- the CNI runner, with plugins that are shell scripts ------------------------------------------


def plugin(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    directory = tmp_path / "cni"
    directory.mkdir()
    log = tmp_path / "calls"
    # Each plugin logs its command and the conf it got, then answers.
    record = f'conf=$(cat); echo "$CNI_COMMAND $0 $CNI_CONTAINERID $CNI_IFNAME $conf" >> {log}\n'
    plugin(
        directory,
        "first",
        record + 'echo \'{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}\'\n',
    )
    plugin(
        directory, "second", record + 'echo "$conf" | grep -q prevResult || exit 9\necho "$conf"\n'
    )
    plugin(
        directory,
        "broken",
        record + 'echo \'{"code":7,"msg":"no way","details":"really"}\'; exit 1\n',
    )
    plugin(directory, "mute", record + "echo garbage >&2; exit 3\n")
    plugin(directory, "liar", record + "echo not json\n")
    return directory


def calls(directory: Path) -> list[str]:
    log = directory.parent / "calls"
    return [" ".join(line.split()[:2]).replace(str(directory) + "/", "") for line in
            log.read_text().splitlines()] if log.exists() else []  # fmt: skip


async def test_a_chain_adds_in_order_passing_results_on(plugins: Path) -> None:
    call = Invocation("c1", "/proc/self/ns/net", "eth0", {"portMappings": [{"hostPort": 1}]})
    chain = [{"type": "first"}, {"type": "second", "capabilities": {"portMappings": True}}]
    result = await add_chain("net", chain, call, dirs=[plugins])
    conf = result  # "second" echoes the conf it was given
    assert conf["prevResult"]["ips"] == [{"address": "10.0.0.2/24"}]
    assert conf["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert conf["name"] == "net" and conf["cniVersion"] == "1.0.0"
    assert calls(plugins) == ["ADD first", "ADD second"]
    assert await del_chain("net", chain, call, dirs=[plugins], prev_result=result) == []
    assert calls(plugins)[2:] == ["DEL second", "DEL first"]


async def test_a_failed_add_is_undone_and_says_why(plugins: Path) -> None:
    call = Invocation("c1", "", "eth0")
    chain = [{"type": "first"}, {"type": "broken"}, {"type": "second"}]
    with pytest.raises(CniError) as caught:
        await add_chain("net", chain, call, dirs=[plugins])
    assert str(caught.value) == "broken ADD: no way: really" and caught.value.code == 7
    assert calls(plugins) == ["ADD first", "ADD broken", "DEL broken", "DEL first"]


@pytest.mark.parametrize(
    ("kind", "text"),
    [("mute", "mute ADD: garbage"), ("liar", "liar ADD: printed no JSON result")],
)
async def test_plugins_that_misbehave(plugins: Path, kind: str, text: str) -> None:
    with pytest.raises(CniError) as caught:
        await add_chain("net", [{"type": kind}], Invocation("c", "", "eth0"), dirs=[plugins])
    assert str(caught.value).startswith(text)


async def test_every_plugin_gets_its_del_even_when_one_fails(plugins: Path) -> None:
    chain = [{"type": "first"}, {"type": "broken"}, {"type": "mute"}]
    errors = await del_chain("net", chain, Invocation("c", "", "eth0"), dirs=[plugins])
    assert [e.plugin for e in errors] == ["mute", "broken"]
    assert calls(plugins) == ["DEL mute", "DEL broken", "DEL first"]


def test_plugins_are_found_by_name_only(plugins: Path) -> None:
    assert find_plugin("first", [Path("/nonexistent"), plugins]) == plugins / "first"
    for name in ("../first", "", ".", "missing"):
        with pytest.raises(CniError):
            find_plugin(name, [plugins])
    (plugins / "noexec").write_text("")
    os.chmod(plugins / "noexec", 0o644)
    with pytest.raises(CniError, match="apt-get install containernetworking-plugins"):
        find_plugin("noexec", [plugins])
