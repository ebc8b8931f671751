"""Networks: a name, a subnet and a Linux bridge, and the CNI plugin chain
that puts a container on them."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument

#: The network a container gets when it names none.
DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "supervisor0"
#: Neither docker's 172.17/16, podman's 10.88/16 nor nerdctl's 10.4.0/24.
DEFAULT_SUBNET = "10.213.0.0/16"
#: Where user-defined networks get a /24 when they name no subnet.
DEFAULT_POOL = "10.214.0.0/16"
RESERVED_NAMES = ("none", "host", "container")
#: The start of every CNI network name of ours.
CNI_PREFIX = "supervisor-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

IPv4Net = ipaddress.IPv4Network


def check_network_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"network name {name!r} must be 1 to 63 letters, digits, '_', '.' or '-',"
            " starting with a letter or digit"
        )
    if name in RESERVED_NAMES:
        raise InvalidArgument(f"network name {name!r} is reserved")
    return name


def parse_subnet(text: str) -> IPv4Net:
    """An IPv4 subnet of 4 to 2**16 addresses (/16 to /30)."""
    try:
        subnet = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"subnet {text!r}: {exc}") from None
    if not isinstance(subnet, IPv4Net):
        raise InvalidArgument(f"subnet {text!r}: only IPv4 subnets are supported")
    if not 8 <= subnet.prefixlen <= 30:
        raise InvalidArgument(f"subnet {text!r} must be from /8 to /30")
    if subnet.is_loopback or subnet.is_multicast or subnet.is_link_local:
        raise InvalidArgument(f"subnet {text!r} is a loopback, multicast or link-local range")
    return subnet


def bridge_name(name: str) -> str:
    """A bridge's interface name (at most 15 bytes) for a network."""
    if name == DEFAULT_NETWORK:
        return DEFAULT_BRIDGE
    return "svbr-" + hashlib.sha256(name.encode()).hexdigest()[:10]


@dataclass(frozen=True, slots=True)
class Network:
    """A bridge network: containers on it reach each other and, through NAT,
    the outside; networks are isolated from each other."""

    name: str
    subnet: IPv4Net
    bridge: str
    created: float = 0.0

    @property
    def cni_name(self) -> str:
        """The network's name in CNI confs, and so in the comments the plugins
        put on their iptables rules: ours to tell from other CNI users' rules
        (nerdctl's default network is also called "bridge")."""
        return CNI_PREFIX + self.name

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return next(self.subnet.hosts())

    def plugins(self, ipam_dir: Path) -> list[dict[str, Any]]:
        """The CNI chain: bridge (with host-local IPAM and outbound NAT),
        portmap (published ports) and firewall (isolation from other bridges)."""
        return [
            {
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(self.subnet), "gateway": str(self.gateway)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": "iptables", "ingressPolicy": "same-bridge"},
        ]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "subnet": str(self.subnet), "bridge": self.bridge,
                "created": self.created}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Network:
        return cls(
            name=check_network_name(str(data["name"])),
            subnet=parse_subnet(str(data["subnet"])),
            bridge=str(data["bridge"]),
            created=float(data.get("created") or 0.0),
        )


def overlapping(subnet: IPv4Net, networks: Iterable[Network]) -> Network | None:
    for network in networks:
        if network.subnet.overlaps(subnet):
            return network
    return None


def free_subnet(pool: IPv4Net, networks: Iterable[Network], prefix: int = 24) -> IPv4Net:
    taken = list(networks)
    for candidate in pool.subnets(new_prefix=max(prefix, pool.prefixlen)):
        if overlapping(candidate, taken) is None:
            return candidate
    raise InvalidArgument(f"no free /{prefix} subnet is left in {pool}: name one with --subnet")
