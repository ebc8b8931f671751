"""What the daemon asks of networking, kept on disk so that a daemon killed
at any point is followed by one that finishes or undoes what was half done.

Under ``root``::

    networks/<name>.json      a network (subnet, bridge)
    containers/<id>.json      a container's attachment: first its intent (mode,
                              ports), then the chain being added, then its result
    netns/<id>                the container's pinned network namespace (nsfs)
    files/<id>/               its hosts, resolv.conf and hostname
    ipam/                     host-local's allocations
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio

from ..errors import FailedPrecondition, InvalidArgument, NotFound, SupervisorError
from . import _files, _iptables, _netns
from ._cni import DEFAULT_PLUGIN_DIRS, CniError, Invocation, add_chain, del_chain
from ._networks import (
    DEFAULT_NETWORK,
    DEFAULT_POOL,
    DEFAULT_SUBNET,
    IPv4Net,
    Network,
    bridge_name,
    check_network_name,
    free_subnet,
    overlapping,
    parse_subnet,
)
from ._ports import PortMapping, check_ports, port_taken

log = logging.getLogger("supervisor.net")

IFNAME = "eth0"
#: Bound on bringing a namespace's loopback up, or reading its counters.
NETLINK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Mode:
    """How a container is networked: ``none``, ``host``, ``container:<id>``
    or the name of a network (``bridge`` being the default one)."""

    kind: str  # "none" | "host" | "container" | "network"
    name: str = ""  # the network, or the container whose namespace is joined

    def __str__(self) -> str:
        if self.kind == "container":
            return f"container:{self.name}"
        return self.name if self.kind == "network" else self.kind

    @classmethod
    def parse(cls, text: str) -> Mode:
        if text in ("none", "host"):
            return cls(text)
        if text.startswith("container:"):
            target = text.removeprefix("container:")
            if not target:
                raise InvalidArgument("network 'container:' needs a container id")
            return cls("container", target)
        return cls("network", check_network_name(text))

    @property
    def own_namespace(self) -> bool:
        return self.kind in ("none", "network")


@dataclass(slots=True)
class Attachment:
    """A container's network as recorded on disk."""

    container_id: str
    mode: Mode
    ports: tuple[PortMapping, ...] = ()
    hostname: str = ""
    #: The chain an ADD was started with (set before the ADD: a DEL is owed).
    network: str = ""
    plugins: list[dict[str, Any]] | None = None
    result: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)

    @property
    def address(self) -> str:
        """The container's IPv4 address on its network ("" when none)."""
        for ip in (self.result or {}).get("ips") or []:
            text = str(ip.get("address", ""))
            if "." in text:
                return text.split("/")[0]
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.container_id,
            "mode": str(self.mode),
            "ports": [str(p) for p in self.ports],
            "hostname": self.hostname,
            "network": self.network,
            "plugins": self.plugins,
            "result": self.result,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        from ._ports import parse_port

        return cls(
            container_id=str(data["id"]),
            mode=Mode.parse(str(data["mode"])),
            ports=tuple(parse_port(p) for p in data.get("ports") or ()),
            hostname=str(data.get("hostname") or ""),
            network=str(data.get("network") or ""),
            plugins=data.get("plugins"),
            result=data.get("result"),
            created=float(data.get("created") or 0.0),
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all, for a daemon killed at any moment. Not fsynced:
    what the records guard (namespaces, veths, rules) does not outlive the
    machine either (host-local's own allocations are not fsynced)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError) as exc:
        log.error("cannot read %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


class NetworkManager:
    """Networks and the containers on them; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        default_subnet: str = DEFAULT_SUBNET,
        pool: str = DEFAULT_POOL,
        plugin_dirs: Sequence[Path] = DEFAULT_PLUGIN_DIRS,
    ) -> None:
        self.root = root
        self.default_subnet = parse_subnet(default_subnet)
        self.pool = parse_subnet(pool)
        self.plugin_dirs = tuple(plugin_dirs)
        self.networks: dict[str, Network] = {}
        self.attachments: dict[str, Attachment] = {}
        self._busy: dict[str, anyio.Lock] = {}
        self._shared = False
        self._share_lock = threading.Lock()

    # -- paths -------------------------------------------------------------------

    def netns_path(self, cid: str) -> Path:
        return self.root / "netns" / cid

    def files_dir(self, cid: str) -> Path:
        return self.root / "files" / cid

    def _record(self, cid: str) -> Path:
        return self.root / "containers" / f"{cid}.json"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    def _lock(self, cid: str) -> anyio.Lock:
        lock = self._busy.get(cid)
        if lock is None:
            lock = self._busy[cid] = anyio.Lock()
        return lock

    # -- start -------------------------------------------------------------------

    def open(self) -> None:
        """Make the directories and read what is on disk (blocking; at start)."""
        for sub in ("networks", "containers", "files", "ipam", "netns"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in sorted((self.root / "networks").glob("*.json")):
            data = _read_json(path)
            try:
                network = Network.from_json(data or {})
            except (KeyError, ValueError, SupervisorError) as exc:
                log.error("ignoring network file %s: %s", path, exc)
                continue
            self.networks[network.name] = network
        for path in sorted((self.root / "containers").glob("*.json")):
            data = _read_json(path)
            try:
                attachment = Attachment.from_json(data or {})
            except (KeyError, ValueError, SupervisorError) as exc:
                log.error("ignoring attachment file %s: %s", path, exc)
                continue
            self.attachments[attachment.container_id] = attachment
        if DEFAULT_NETWORK not in self.networks:
            self.create_network(DEFAULT_NETWORK)  # a file only: its bridge comes with its first use
        elif self.networks[DEFAULT_NETWORK].subnet != self.default_subnet:
            log.warning(
                "the default network keeps its subnet %s: [network] subnet %s applies to a "
                "new state dir only (or once no container is on it and %s is removed)",
                self.networks[DEFAULT_NETWORK].subnet, self.default_subnet,
                self.root / "networks" / f"{DEFAULT_NETWORK}.json",
            )  # fmt: skip

    def close(self) -> None:
        """Unmount the namespace directory when no namespace is pinned in it."""
        directory = self.root / "netns"
        with contextlib.suppress(OSError):
            if _netns.is_mount_point(directory) and not any(directory.iterdir()):
                _netns.unshare_dir(directory)
                self._shared = False

    def has_leftovers(self) -> bool:
        """Whether pins or files exist that no record names (a sweep is due)."""
        with contextlib.suppress(OSError):
            for sub in ("netns", "files"):
                if any((self.root / sub).iterdir()):
                    return True
        return False

    def _pin(self, path: Path) -> None:
        with self._share_lock:  # pins are made in worker threads, several at once
            if not self._shared:
                _netns.share_dir(path.parent)
                self._shared = True
        _netns.pin(path)

    # -- networks ----------------------------------------------------------------

    def network(self, name: str) -> Network:
        network = self.networks.get(name)
        if network is None:
            raise NotFound(f"no such network: {name}")
        return network

    def create_network(self, name: str, subnet: str | None = None) -> Network:
        check_network_name(name)
        if name in self.networks:
            raise InvalidArgument(f"network {name} already exists")
        if subnet is not None:
            net: IPv4Net = parse_subnet(subnet)
            clash = overlapping(net, self.networks.values())
            if clash is not None:
                raise InvalidArgument(
                    f"subnet {net} overlaps network {clash.name} ({clash.subnet})"
                )
        elif name == DEFAULT_NETWORK:
            net = self.default_subnet
        else:
            net = free_subnet(self.pool, [*self.networks.values(), self._default_placeholder()])
        network = Network(name, net, bridge_name(name), time.time())
        _write_json(self.root / "networks" / f"{name}.json", network.to_json())
        self.networks[name] = network
        log.info("network %s created: %s on bridge %s", name, net, network.bridge)
        return network

    def _default_placeholder(self) -> Network:
        return Network(DEFAULT_NETWORK, self.default_subnet, bridge_name(DEFAULT_NETWORK))

    def members(self, name: str) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.mode == Mode("network", name)]

    async def remove_network(self, name: str) -> None:
        network = self.network(name)
        users = sorted(a.container_id for a in self.members(name))
        if users:
            raise FailedPrecondition(
                f"network {name} has containers on it: {', '.join(users[:10])}"
            )
        # Gone before anything is awaited: a container made meanwhile cannot join it.
        del self.networks[name]
        with contextlib.suppress(FileNotFoundError):
            (self.root / "networks" / f"{name}.json").unlink()
        await _iptables.remove_bridge(network.bridge)
        await _delete_link(network.bridge)  # CNI never deletes a bridge
        with contextlib.suppress(OSError):
            for entry in (self.ipam_dir / network.cni_name).iterdir():
                entry.unlink()
            (self.ipam_dir / network.cni_name).rmdir()
        log.info("network %s removed", name)

    # -- a container's network ---------------------------------------------------

    def reserve(
        self, cid: str, mode: Mode, ports: Iterable[PortMapping] = (), hostname: str = ""
    ) -> Attachment:
        """Check a new container's network and record it (its ports are then
        taken). :class:`InvalidArgument` or :class:`NotFound` for bad input;
        nothing is left then. Blocking (a small file): call it at creation."""
        published = check_ports(ports)
        if published and mode.kind != "network":
            raise InvalidArgument(f"ports can only be published on a network, not with {mode}")
        if mode.kind == "container":
            target = self.attachments.get(mode.name)
            if target is None or (not target.mode.own_namespace and target.mode.kind != "host"):
                raise NotFound(f"container {mode.name} has no network of ours to join")
        elif mode.kind == "network" and mode.name not in self.networks:
            if mode.name != DEFAULT_NETWORK:
                raise NotFound(f"no such network: {mode.name}")
            self.create_network(DEFAULT_NETWORK)
        others = {
            a.container_id: a.ports for a in self.attachments.values() if a.container_id != cid
        }
        for port in published:
            problem = port_taken(port, others)
            if problem:
                raise InvalidArgument(problem)
            _probe_port(port)
        existing = self.attachments.get(cid)
        if existing is not None and existing.mode == mode and existing.ports == published:
            return existing
        if existing is not None and (existing.plugins or existing.result):
            raise FailedPrecondition(f"container {cid} still has a network being removed")
        attachment = Attachment(cid, mode, published, hostname or cid[:63])
        try:
            _write_json(self._record(cid), attachment.to_json())
        except OSError as exc:
            raise SupervisorError(
                f"cannot record the network of {cid} in {self.root}: {exc.strerror or exc}"
            ) from None
        self.attachments[cid] = attachment
        return attachment

    def adopt(self, cid: str, mode: Mode, ports: Iterable[PortMapping] = ()) -> Attachment:
        """Make up the record of an existing container whose record was lost
        (from its labels): as if an ADD had begun, so that its next start
        first deletes whatever the chain still holds for it."""
        attachment = Attachment(cid, mode, check_ports(ports), cid[:63])
        if mode.kind == "network" and mode.name in self.networks:
            network = self.networks[mode.name]
            attachment.network = network.cni_name
            attachment.plugins = network.plugins(self.ipam_dir)
        log.warning("the network record of %s was lost: made again from its labels", cid)
        return self._save(attachment)

    def configure_spec(self, spec: dict[str, Any], attachment: Attachment) -> None:
        """Point an OCI spec at the container's network: its namespace (or the
        host's, or another container's), and its hosts, resolv.conf, hostname."""
        mode = attachment.mode
        linux = spec.setdefault("linux", {})
        namespaces = [n for n in linux.get("namespaces", []) if n.get("type") != "network"]
        owner = attachment.container_id
        if mode.kind == "container":
            target = self.attachments.get(mode.name)
            if target is not None and target.mode.kind == "host":
                mode = Mode("host")
            else:
                owner = mode.name
        if mode.kind == "host":
            files = [(Path("/etc/hosts"), "/etc/hosts"), (Path("/etc/resolv.conf"),
                     "/etc/resolv.conf")]  # fmt: skip
            spec["hostname"] = socket.gethostname()
        else:
            namespaces.append({"type": "network", "path": str(self.netns_path(owner))})
            directory = self.files_dir(owner)
            files = [(directory / name, f"/etc/{name}") for name in
                     ("hosts", "resolv.conf", "hostname")]  # fmt: skip
        linux["namespaces"] = namespaces
        mounts = [m for m in spec.setdefault("mounts", []) if m.get("destination") not in
                  {dest for _, dest in files}]  # fmt: skip
        for source, destination in files:
            mounts.append({"destination": destination, "type": "bind", "source": str(source),
                           "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})  # fmt: skip
        spec["mounts"] = mounts

    async def ensure(self, cid: str) -> Attachment | None:
        """Make the container's network ready for a task: the namespace
        pinned, its loopback up, the CNI chain added, its files written.
        Idempotent; what a killed daemon left half done is undone first.
        None for a container with no attachment (one from before networking)."""
        async with self._lock(cid):
            attachment = self.attachments.get(cid)
            if attachment is None:
                return None
            mode = attachment.mode
            if mode.kind == "host":
                return attachment
            if mode.kind == "container":
                target = self.attachments.get(mode.name)
                if target is None:
                    raise FailedPrecondition(f"container {mode.name} (whose network {cid} "
                                             "joins) is gone")  # fmt: skip
                if target.mode.own_namespace and not _netns.is_pinned(self.netns_path(mode.name)):
                    raise FailedPrecondition(f"container {mode.name} (whose network {cid} "
                                             "joins) has not started")  # fmt: skip
                return attachment
            path = self.netns_path(cid)
            pinned = await anyio.to_thread.run_sync(_netns.is_pinned, path)
            done = attachment.result is not None or mode.kind == "none"
            if pinned and done and self.files_dir(cid).joinpath("hosts").exists():
                return attachment
            if attachment.plugins is not None:  # an ADD was begun: undo it first
                await self._del(attachment, pinned)
                attachment = self._save(replace(attachment, network="", plugins=None,
                                                result=None))  # fmt: skip
            if not pinned:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # a stale file (a reboot on a disk-backed /run)
                await anyio.to_thread.run_sync(self._pin, path)
            if mode.kind == "network":
                network = self.network(mode.name)
                plugins = network.plugins(self.ipam_dir)
                attachment = self._save(replace(attachment, network=network.cni_name,
                                                plugins=plugins))  # fmt: skip
                result = await add_chain(network.cni_name, plugins, self._call(attachment, True),
                                         dirs=self.plugin_dirs)  # fmt: skip
                attachment = self._save(replace(attachment, result=result))
            peers = self._peers(attachment)
            await anyio.to_thread.run_sync(self._write_files, attachment, peers)
            log.debug("network of %s ready: %s %s", cid, mode, attachment.address)
        if mode.kind == "network" and mode.name != DEFAULT_NETWORK:
            await self._refresh_hosts(mode.name)
        return attachment

    async def release(self, cid: str) -> None:
        """Undo a container's network (once the container is gone): CNI DEL
        while the namespace still exists, then unpin, then the files and the
        record. Idempotent. A DEL that fails keeps the record (the sweep at
        the next start tries again) and raises."""
        async with self._lock(cid):
            attachment = self.attachments.get(cid)
            path = self.netns_path(cid)
            pinned = await anyio.to_thread.run_sync(_netns.is_pinned, path)
            if attachment is not None and attachment.plugins is not None:
                await self._del(attachment, pinned)
            await anyio.to_thread.run_sync(_netns.unpin, path)
            await anyio.to_thread.run_sync(_files.remove_files, self.files_dir(cid))
            with contextlib.suppress(FileNotFoundError):
                self._record(cid).unlink()
            self.attachments.pop(cid, None)
            self._busy.pop(cid, None)
        mode = attachment.mode if attachment is not None else None
        if mode is not None and mode.kind == "network" and mode.name != DEFAULT_NETWORK:
            await self._refresh_hosts(mode.name)

    async def _del(self, attachment: Attachment, pinned: bool) -> None:
        assert attachment.plugins is not None
        call = self._call(attachment, pinned)
        errors = await del_chain(attachment.network, attachment.plugins, call,
                                 dirs=self.plugin_dirs, prev_result=attachment.result)  # fmt: skip
        if not pinned:
            # The bridge plugin leaves its NAT chain when the namespace is
            # gone (containernetworking/plugins#810): remove it ourselves.
            await _iptables.remove_container_rules(attachment.container_id)
        if errors:
            raise errors[0]

    def _call(self, attachment: Attachment, pinned: bool) -> Invocation:
        netns = str(self.netns_path(attachment.container_id)) if pinned else ""
        ports = [p.to_cni() for p in attachment.ports]
        return Invocation(attachment.container_id, netns, IFNAME, {"portMappings": ports})

    def _save(self, attachment: Attachment) -> Attachment:
        _write_json(self._record(attachment.container_id), attachment.to_json())
        self.attachments[attachment.container_id] = attachment
        return attachment

    def _write_files(self, attachment: Attachment, others: list[tuple[str, str]]) -> None:
        directory = self.files_dir(attachment.container_id)
        directory.mkdir(mode=0o755, exist_ok=True)
        name = attachment.hostname or attachment.container_id[:63]
        own = (attachment.address, name) if attachment.address else None
        _files.write_in_place(directory / "hosts", _files.hosts(own, others))
        _files.write_in_place(directory / "resolv.conf", _files.resolv_conf())
        _files.write_in_place(directory / "hostname", name + "\n")

    def _peers(self, attachment: Attachment) -> list[tuple[str, str]]:
        mode = attachment.mode
        if mode.kind != "network" or mode.name == DEFAULT_NETWORK:
            return []  # as docker: names resolve on user-defined networks only
        return [
            (other.address, other.hostname or other.container_id)
            for other in self.members(mode.name)
            if other.container_id != attachment.container_id and other.address
        ]

    async def _refresh_hosts(self, name: str) -> None:
        """Rewrite the hosts file of every container on a user-defined network
        (the texts made here, on the loop that changes the records; written
        in a thread)."""
        texts = []
        for attachment in self.members(name):
            own_name = attachment.hostname or attachment.container_id[:63]
            own = (attachment.address, own_name) if attachment.address else None
            path = self.files_dir(attachment.container_id) / "hosts"
            texts.append((path, _files.hosts(own, self._peers(attachment))))

        def write() -> None:
            for path, text in texts:
                if path.exists():
                    with contextlib.suppress(OSError):
                        _files.write_in_place(path, text)

        await anyio.to_thread.run_sync(write)

    # -- at start ----------------------------------------------------------------

    async def sweep(self, containers: Iterable[str]) -> list[str]:
        """Release the network of every container that no longer exists, and
        remove pins and files nobody records; the ids released."""
        live = set(containers)
        released = []
        for cid in sorted(set(self.attachments) - live):
            try:
                await self.release(cid)
            except (SupervisorError, OSError, TimeoutError) as exc:
                log.error("cannot release the network of %s (gone): %s", cid, exc)
                continue
            log.info("released the network of %s (its container is gone)", cid)
            released.append(cid)
        # A live container without a record (lost: the daemon makes it again
        # from its labels) keeps its namespace and files.
        for entry in list((self.root / "netns").iterdir()):
            if entry.name not in self.attachments and entry.name not in live:
                await anyio.to_thread.run_sync(_netns.unpin, entry)
        for entry in list((self.root / "files").iterdir()):
            if entry.name not in self.attachments and entry.name not in live:
                await anyio.to_thread.run_sync(_files.remove_files, entry)
        await self._sweep_addresses(live)
        known = set(self.attachments) | live
        await _iptables.remove_stray_rules(
            known.__contains__,
            [n.subnet for n in self.networks.values()],
            [a.address for a in self.attachments.values() if a.address],
        )
        return released

    async def _sweep_addresses(self, live: set[str]) -> None:
        """host-local's allocations for containers nobody knows (their record
        lost with their container): a DEL of the chain releases each, and the
        rules it holds."""
        by_cni = {n.cni_name: n for n in self.networks.values()}
        for directory in list(self.ipam_dir.iterdir()):
            network = by_cni.get(directory.name)
            for path in list(directory.iterdir()) if directory.is_dir() else ():
                if not path.name[:1].isdigit():
                    continue  # lock, last_reserved_ip.0
                try:
                    owner = path.read_text(errors="replace").split("\n", 1)[0].strip()
                except OSError:
                    continue
                if owner in self.attachments or owner in live:
                    continue
                if network is None:
                    path.unlink(missing_ok=True)  # a network that is gone: its file alone
                    continue
                call = Invocation(owner, "", IFNAME, {"portMappings": []})
                await del_chain(network.cni_name, network.plugins(self.ipam_dir), call,
                                dirs=self.plugin_dirs)  # fmt: skip
                log.info("released address %s (of %s, gone)", path.name, owner)

    # -- counters ----------------------------------------------------------------

    async def link_stats(self, cid: str) -> tuple[int, int] | None:
        """Bytes received and sent by the container's interfaces (not ``lo``),
        from the kernel's counters inside its namespace; None without one."""
        attachment = self.attachments.get(cid)
        if attachment is None:
            return None
        owner = attachment.mode.name if attachment.mode.kind == "container" else cid
        path = self.netns_path(owner)
        if attachment.mode.kind == "host" or not _netns.is_pinned(path):
            return None
        with anyio.fail_after(NETLINK_TIMEOUT):
            return await anyio.to_thread.run_sync(_netns.run_in, path, _link_counters)


def _link_counters() -> tuple[int, int]:
    """Bytes received and sent through every interface but ``lo`` of the
    calling thread's namespace (the kernel's 64-bit counters)."""
    from pyroute2 import IPRoute

    rx = tx = 0
    with IPRoute() as ipr:
        for link in ipr.get_links():
            if link.get("ifname") == "lo":
                continue
            stats = link.get("stats64") or link.get("stats")
            if stats:
                rx += int(stats["rx_bytes"])
                tx += int(stats["tx_bytes"])
    return rx, tx


async def _delete_link(name: str) -> None:
    from pyroute2 import AsyncIPRoute

    with anyio.fail_after(NETLINK_TIMEOUT):
        async with AsyncIPRoute() as ipr:
            found = [link async for link in await ipr.link("dump") if link.get("ifname") == name]
            if found:
                await ipr.link("del", index=found[0]["index"])


def _probe_port(port: PortMapping) -> None:
    """Fail if something on this host already listens on the port (portmap
    would silently shadow it)."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port.host_ip or "0.0.0.0", port.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidArgument(f"port {port}: the host port is already in use") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"port {port}: {port.host_ip} is not an address of this host"
                ) from None
            raise


__all__ = ("Attachment", "CniError", "Mode", "NetworkManager")
