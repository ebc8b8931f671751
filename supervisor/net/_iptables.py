"""iptables rules the CNI plugins leave behind: found by the comment the
bridge and portmap plugins put on a container's rules (``name: "<network>"
id: "<id>"``; only our networks' names, which start with ``supervisor-``:
other CNI users' rules are theirs) and by the addresses the firewall plugin
admits in our subnets, and removed with iptables itself."""

from __future__ import annotations

import ipaddress
import logging
import re
import shlex
from collections.abc import Callable, Iterable

import anyio

log = logging.getLogger("supervisor.net")

#: Bound on one iptables call (it waits for the xtables lock).
IPTABLES_TIMEOUT = 30.0
_OWNED = re.compile(r'name: \\?"(supervisor-[^"\\]+)\\?" id: \\?"([^"\\]+)\\?"')
_JUMP = re.compile(r"-j (CNI-[A-Za-z0-9-]+)")
_ADDR = re.compile(r"-[sd] (\d+\.\d+\.\d+\.\d+)/32")
#: Chains a plugin makes for one container (the shared ones are never removed).
_PER_CONTAINER = re.compile(r"CNI-(DN-)?[0-9a-f]{20,}")


async def _iptables(*args: str, check: bool = True) -> str:
    with anyio.fail_after(IPTABLES_TIMEOUT):
        done = await anyio.run_process(["iptables", "-w", *args], check=False)
    if check and done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise OSError(f"iptables {' '.join(args)}: {message}")
    return done.stdout.decode(errors="replace")


async def _save(table: str) -> list[str]:
    with anyio.fail_after(IPTABLES_TIMEOUT):
        done = await anyio.run_process(["iptables-save", "-t", table], check=False)
    if done.returncode != 0:
        return []
    return done.stdout.decode(errors="replace").splitlines()


async def _remove(table: str, rules: Iterable[str]) -> int:
    """Delete the ``-A`` rules given as iptables-save printed them, then
    flush and delete the per-container chains they jumped to."""
    chains = set()
    count = 0
    for rule in rules:
        words = shlex.split(rule)
        if words[:1] != ["-A"]:
            continue
        jump = _JUMP.search(rule)
        if jump and _PER_CONTAINER.fullmatch(jump.group(1)):
            chains.add(jump.group(1))
        try:
            await _iptables("-t", table, "-D", *words[1:])
            count += 1
        except OSError as exc:
            log.debug("%s", exc)
    for chain in sorted(chains):
        try:
            await _iptables("-t", table, "-F", chain)
            await _iptables("-t", table, "-X", chain)
        except OSError as exc:
            log.debug("%s", exc)
    return count


def _ids(line: str) -> set[str]:
    """The container ids of our networks a rule's comment names."""
    return {cid for _, cid in _OWNED.findall(line)}


async def remove_container_rules(cid: str) -> None:
    """Remove every rule a plugin tagged with container ``cid``."""
    for table in ("nat", "filter"):
        rules = [line for line in await _save(table) if cid in _ids(line)]
        if rules:
            removed = await _remove(table, rules)
            log.info("removed %d %s rules left for %s", removed, table, cid)


async def remove_stray_rules(
    known: Callable[[str], bool],
    subnets: Iterable[ipaddress.IPv4Network] = (),
    addresses: Iterable[str] = (),
) -> None:
    """Remove the rules of containers that are not ``known``, and the
    firewall plugin's rules for addresses in ``subnets`` nobody has."""
    nets = list(subnets)
    live = set(addresses)
    for table in ("nat", "filter"):
        stray = []
        for line in await _save(table):
            ids = _ids(line)
            if ids and not any(known(cid) for cid in ids):
                stray.append(line)
            elif table == "filter" and line.startswith("-A CNI-FORWARD ") and not ids:
                match = _ADDR.search(line)
                if match and match.group(1) not in live:
                    address = ipaddress.IPv4Address(match.group(1))
                    if any(address in net for net in nets):
                        stray.append(line)
        if stray:
            removed = await _remove(table, stray)
            log.info("removed %d stray %s rules of containers that are gone", removed, table)


async def remove_bridge(bridge: str) -> None:
    """Remove a network's own rules: the firewall plugin's isolation of its bridge."""
    mentions = re.compile(rf"-[io] {re.escape(bridge)}\b")
    rules = [
        line
        for line in await _save("filter")
        if line.startswith("-A CNI-ISOLATION-STAGE-") and mentions.search(line)
    ]
    await _remove("filter", rules)
