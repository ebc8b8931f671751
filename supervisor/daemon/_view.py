"""What `ps` shows, kept between calls: the daemon's last read of each container.

A listing of every container and task costs containerd a call to each shim
(~0.14 ms a task) and us a decode of every record, so `ps` at 1000 containers
would take ten times `ps` at none. Instead each container's last read is kept
with a generation number, and anything that may change what containerd says
about a container bumps it first:

- every operation of the daemon on the container (its lock, on entry and exit);
- every event containerd sends about it (an exit, an OOM, a pause);
- the relist each second, for a task whose state differs from the one kept;
- containerd's absence or return (all of them).

A read is kept only if no bump happened while it was made; `ps` reads again
what is stale (one call per container for a few, one listing of each for
many) and answers the rest from memory, as dockerd does. A container's entry
in wire form is kept too, made again when what the daemon adds to it (a
problem, a network attachment) changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from ..client import ContainerInfo, ProcessState


@dataclass(slots=True)
class Entry:
    generation: int
    #: None: containerd has no such container (a create still to come).
    info: ContainerInfo | None
    task: ProcessState | None
    #: The ContainerInfo message as `ps` sends it, and what it was made from.
    encoded: bytes | None = None
    encoded_key: Any = field(default=None)


class View:
    def __init__(self) -> None:
        # One counter for all: a container forgotten and made again under the
        # same id never finds a number it had before.
        self._counter = 0
        self._generations: dict[str, int] = {}
        self._touches: dict[str, int] = {}
        self.entries: dict[str, Entry] = {}

    def touch(self, cid: str) -> None:
        """What containerd says about ``cid`` may have changed, or may change now."""
        self._counter += 1
        self._generations[cid] = self._counter
        self._touches[cid] = self._touches.get(cid, 0) + 1

    def touches(self, cid: str) -> int:
        """How often ``cid`` was touched: a read made when this was N is still
        what containerd says if nothing but the reader's own touches came since."""
        return self._touches.get(cid, 0)

    def touch_all(self) -> None:
        for cid in list(self._generations.keys() | self.entries.keys()):
            self.touch(cid)

    def forget(self, cid: str) -> None:
        """The container is gone; an id used again starts afresh."""
        self._generations.pop(cid, None)
        self._touches.pop(cid, None)
        self.entries.pop(cid, None)

    def generation(self, cid: str) -> int:
        return self._generations.get(cid, 0)

    def store(
        self, cid: str, generation: int, info: ContainerInfo | None, task: ProcessState | None
    ) -> None:
        """Keep a read begun at ``generation``, unless something touched it since."""
        if self._generations.get(cid, 0) == generation:
            self.entries[cid] = Entry(generation, info, task)

    def fresh(self, cid: str) -> Entry | None:
        entry = self.entries.get(cid)
        if entry is None or entry.generation != self._generations.get(cid, 0):
            return None
        return entry


class TouchingLock:
    """A container's lock: what the view keeps of it goes stale when an
    operation takes the lock and again when it lets go, so that no read
    made meanwhile is kept as fresh."""

    __slots__ = ("_cid", "_lock", "_view")

    #: Touches of one use: on entry and on exit.
    TOUCHES = 2

    def __init__(self, view: View, cid: str) -> None:
        self._view = view
        self._cid = cid
        self._lock = anyio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        self._view.touch(self._cid)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._view.generation(self._cid):  # (not when the operation forgot it)
            self._view.touch(self._cid)
        self._lock.release()
