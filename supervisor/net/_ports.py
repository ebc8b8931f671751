"""Published ports: ``[IP:]HOST:CONTAINER[/tcp|udp]`` as docker takes them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import InvalidArgument

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True, slots=True, order=True)
class PortMapping:
    """One published port: ``host_ip:host_port`` on the host to
    ``container_port`` in the container. An empty ``host_ip`` is every address."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def __str__(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.protocol}"

    def to_cni(self) -> dict[str, object]:
        out: dict[str, object] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out

    def clashes(self, other: PortMapping) -> bool:
        """Whether both cannot be published at once (one port of one protocol
        on one address, where "every address" meets every address)."""
        return (
            self.host_port == other.host_port
            and self.protocol == other.protocol
            and (not self.host_ip or not other.host_ip or self.host_ip == other.host_ip)
        )


def _port(text: str, what: str, spec: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidArgument(
            f"port {spec!r}: {what} port {text!r} is not a number from 1 to 65535"
        )
    return int(text)


def parse_port(spec: str) -> PortMapping:
    """Parse ``[IP:]HOST:CONTAINER[/tcp|udp]``; :class:`InvalidArgument` if unsound."""
    if not isinstance(spec, str) or not spec or len(spec) > 100:
        raise InvalidArgument(f"port {spec!r} is not [IP:]HOST:CONTAINER[/tcp|udp]")
    body, slash, protocol = spec.partition("/")
    protocol = protocol.lower() if slash else "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"port {spec!r}: protocol must be tcp or udp, not {protocol!r}")
    parts = body.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, (host, container) = "", parts
    elif len(parts) == 3:
        host_ip, host, container = parts
        if not host_ip:
            raise InvalidArgument(f"port {spec!r}: the address before the host port is empty")
        try:
            address = ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidArgument(f"port {spec!r}: {host_ip!r} is not an IP address") from None
        if address.version != 4:
            raise InvalidArgument(f"port {spec!r}: only IPv4 addresses can be published")
        if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
            raise InvalidArgument(f"port {spec!r}: {host_ip} is not an address of a host")
        host_ip = "" if address.is_unspecified else str(address)
    else:
        raise InvalidArgument(
            f"port {spec!r} is not [IP:]HOST:CONTAINER[/tcp|udp] (the host port is required)"
        )
    return PortMapping(_port(host, "host", spec), _port(container, "container", spec),
                       protocol, host_ip)  # fmt: skip


def check_ports(ports: Iterable[PortMapping]) -> tuple[PortMapping, ...]:
    """Sorted, with no two that clash."""
    out = tuple(sorted(set(ports)))
    for index, port in enumerate(out):
        for other in out[index + 1 :]:
            if port.clashes(other):
                raise InvalidArgument(f"ports {port} and {other} publish the same host port")
    return out


def port_taken(port: PortMapping, published: Mapping[str, Iterable[PortMapping]]) -> str | None:
    """Why ``port`` cannot be published beside ``published`` (container id:
    its ports), or None."""
    for owner, ports in published.items():
        for taken in ports:
            if port.clashes(taken):
                return f"port {port} is already published by {owner} ({taken})"
    return None
