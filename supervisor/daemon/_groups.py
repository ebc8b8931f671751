"""Shim groups: containers that share one runc shim.

containerd's runc v2 shim serves every container whose OCI spec carries the
annotation ``io.containerd.runc.v2.group`` with one value from one process
(``runtime/v2/runc/manager/manager_linux.go``): ~2.4 MiB of private memory a
container alone, ~0.4 MiB at ten a shim. The price is a shared fate: a shim
that dies ends every task it serves. So a group is something a user asks
for, by name, and it is kept small (:data:`DEFAULT_MAX_MEMBERS`).

The shim for a group is started by the first Tasks.Create that finds none
listening on the group's socket. Two such creates at once can both start
one: the loser's shim then serves nothing and never exits (seen 1 in 21).
And a shim shuts down when a Tasks.Delete leaves it no task: a delete of
another member in flight then fails with "ttrpc: closed" (seen with `rm -f`
of a whole group), and a create in flight may join a shim about to exit.
The daemon cannot tell reliably whether a group's shim is alive or about
to go (right after a crash, containerd still lists its tasks), so the task
creates and deletes of one group take turns, always (:meth:`ShimGroups.turn`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import anyio

from ..client import validate_id
from ..errors import FailedPrecondition

__all__ = (
    "DEFAULT_MAX_MEMBERS",
    "GROUP_ANNOTATION",
    "MAX_MEMBERS_LIMIT",
    "ShimGroups",
    "annotation_value",
    "group_of_spec",
    "validate_group",
)

#: The annotation the runc v2 shim groups by (containerd 1.6).
GROUP_ANNOTATION = "io.containerd.runc.v2.group"
#: Members a group takes unless ``[runtime] max_shim_group`` says otherwise.
DEFAULT_MAX_MEMBERS = 16
#: The most the config may allow: a crash of a shim with 1000 tasks left
#: containerd's cleanups past their deadline (processes left running).
MAX_MEMBERS_LIMIT = 64
_PREFIX = "containerd-supervisor"


def validate_group(name: str) -> str:
    """Check a group's name with containerd's id rules; raises InvalidArgument."""
    return validate_id(name, "shim group")


def annotation_value(namespace: str, name: str) -> str:
    """The annotation's value for group ``name``: ours, and this namespace's."""
    return f"{_PREFIX}/{namespace}/{name}"


def group_of_spec(spec: Mapping[str, Any]) -> str:
    """The annotation's value in an OCI spec, or ""."""
    annotations = spec.get("annotations")
    if not isinstance(annotations, Mapping):
        return ""
    value = annotations.get(GROUP_ANNOTATION, "")
    return value if isinstance(value, str) else ""


class ShimGroups:
    """The cap on each group's members, and the turns its tasks' creates and
    deletes take."""

    def __init__(self, namespace: str, max_members: int = DEFAULT_MAX_MEMBERS) -> None:
        self.namespace = namespace
        self.max_members = max_members
        self._joining: dict[str, set[str]] = {}  # containers being made, per group
        self._locks: dict[str, anyio.Lock] = {}

    def annotate(self, spec: dict[str, Any], name: str) -> None:
        """Put group ``name`` in ``spec`` (nothing for "")."""
        if name:
            spec.setdefault("annotations", {})[GROUP_ANNOTATION] = annotation_value(
                self.namespace, name
            )

    @contextlib.contextmanager
    def joining(self, name: str, cid: str, members: Iterable[str]) -> Iterator[None]:
        """Admit ``cid`` to group ``name`` while it is made, or raise
        FailedPrecondition when the group is full. ``members``: the group's
        containers now; ``cid`` must be among them once this block ends well."""
        if not name:
            yield
            return
        joining = self._joining.setdefault(name, set())
        taken = (set(members) | joining) - {cid}
        if len(taken) >= self.max_members:
            if not joining:
                del self._joining[name]
            raise FailedPrecondition(
                f"shim group {name} is full: it has {len(taken)} containers, the most "
                f"[runtime] max_shim_group allows (a shim's crash ends all of them)"
            )
        joining.add(cid)
        try:
            yield
        finally:
            joining.discard(cid)
            if not joining:
                del self._joining[name]

    @contextlib.asynccontextmanager
    async def turn(self, annotation: str) -> AsyncIterator[None]:
        """Held around a grouped task's Tasks.Create or Tasks.Delete
        (``annotation``: the value in its spec; "" holds nothing)."""
        if not annotation:
            yield
            return
        lock = self._locks.get(annotation)
        if lock is None:
            lock = self._locks[annotation] = anyio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(annotation, None)
