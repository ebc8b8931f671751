"""Exactly-once exits: the ledger of delivered exits and the reconcile decisions.

Pure logic, no I/O: the pipeline feeds it what the stream and containerd say.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..client import ProcessState, TaskStatus
from ._types import TaskExit

#: How long a deleted task's exits are remembered: a shim retries an event
#: for up to ~15 s (1+2+3+4+5 s), so a late copy can follow the delete.
FORGET_AFTER = 20.0
#: Exit code reported when a process ended but its status is gone.
UNKNOWN_EXIT_STATUS = 255

ProcessKey = tuple[str, str | None]  # (container id, exec id or None for init)


class ExitLedger:
    """Which process exits were delivered, keyed by (container, exec, pid).

    A container's entries are forgotten ``forget_after`` seconds after its
    task is deleted, so that late retries and a dead shim's synthetic exit
    are still recognised as duplicates, and memory stays bounded by the
    tasks that exist.
    """

    def __init__(
        self, forget_after: float = FORGET_AFTER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.forget_after = forget_after
        self._clock = clock
        # Entries carry a sequence number: what was recorded before a delete
        # is told from what came after by order, not by clock readings.
        self._seq = 0
        self._seen: dict[str, dict[tuple[str | None, int], int]] = {}
        self._forget: deque[tuple[float, str, int]] = deque()

    def __len__(self) -> int:
        return sum(len(v) for v in self._seen.values())

    def first(self, container_id: str, exec_id: str | None, pid: int) -> bool:
        """Record an exit; True the first time, False for any repeat."""
        if self._forget and self._forget[0][0] <= self._clock():
            self._prune()
        seen = self._seen.get(container_id)
        if seen is None:
            seen = self._seen[container_id] = {}
        key = (exec_id, pid)
        if key in seen:
            return False
        self._seq += 1
        seen[key] = self._seq
        return True

    def discard(self, container_id: str, exec_id: str | None, pid: int) -> None:
        """Forget one exit again (it was recorded but could not be queued), or
        the exit of an earlier process whose pid a new one now has."""
        seen = self._seen.get(container_id)
        if seen is not None:
            seen.pop((exec_id, pid), None)

    def delivered(self, container_id: str, exec_id: str | None, pid: int) -> bool:
        seen = self._seen.get(container_id)
        return seen is not None and (exec_id, pid) in seen

    def task_deleted(self, container_id: str) -> None:
        """Start the countdown to forget what was recorded for this container so far."""
        self._forget.append((self._clock() + self.forget_after, container_id, self._seq))

    def _prune(self) -> None:
        now = self._clock()
        while self._forget and self._forget[0][0] <= now:
            _, container_id, deleted_seq = self._forget.popleft()
            seen = self._seen.get(container_id)
            if seen is None:
                continue
            # A task re-created under the same id keeps its newer entries.
            for key in [k for k, seq in seen.items() if seq <= deleted_seq]:
                del seen[key]
            if not seen:
                del self._seen[container_id]


@dataclass
class Known:
    """Processes the pipeline believes are alive: (container, exec) -> pid."""

    processes: dict[ProcessKey, int] = field(default_factory=dict)

    def started(self, container_id: str, exec_id: str | None, pid: int) -> None:
        self.processes[(container_id, exec_id)] = pid

    def ended(self, container_id: str, exec_id: str | None, pid: int) -> None:
        if self.processes.get((container_id, exec_id)) == pid:
            del self.processes[(container_id, exec_id)]

    def task_deleted(self, container_id: str) -> None:
        for key in [k for k in self.processes if k[0] == container_id]:
            del self.processes[key]

    def execs(self) -> list[tuple[str, str, int]]:
        return [(c, e, pid) for (c, e), pid in self.processes.items() if e is not None]


def reconcile(
    known: Mapping[ProcessKey, int],
    tasks: Iterable[ProcessState],
    execs: Mapping[tuple[str, str], ProcessState | None],
) -> tuple[list[TaskExit], dict[ProcessKey, int]]:
    """Decide which exits were missed while no stream was connected.

    ``known`` is what the pipeline believed alive before; ``tasks`` is
    containerd's task list now; ``execs`` is containerd's view of each known
    exec (None when it no longer exists). Returns the exits to deliver (the
    ledger still filters repeats) and the processes alive now.

    - a task containerd reports stopped: its exit, with containerd's status;
    - a known init process whose task is gone, or now has another pid: it
      ended and its status is lost (255, no time);
    - a known exec containerd reports stopped: its exit; gone: 255;
    - running tasks and execs are alive, known before or not.
    """
    exits: list[TaskExit] = []
    alive: dict[ProcessKey, int] = {}
    listed: dict[str, ProcessState] = {}
    for task in tasks:
        listed[task.container_id] = task
        if task.status is TaskStatus.STOPPED:
            status = task.exit_status
            exits.append(
                TaskExit(
                    task.container_id,
                    None,
                    task.pid,
                    status.code if status else UNKNOWN_EXIT_STATUS,
                    status.exited_at if status else None,
                    reconciled=True,
                )
            )
        elif task.status in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.PAUSING):
            alive[(task.container_id, None)] = task.pid
    for (container_id, exec_id), pid in known.items():
        if exec_id is None:
            now = listed.get(container_id)
            if now is None or now.pid != pid:
                exits.append(
                    TaskExit(container_id, None, pid, UNKNOWN_EXIT_STATUS, None, reconciled=True)
                )
            continue
        state = execs.get((container_id, exec_id))
        if state is None or (state.pid and state.pid != pid):
            exits.append(
                TaskExit(container_id, exec_id, pid, UNKNOWN_EXIT_STATUS, None, reconciled=True)
            )
        elif state.status is TaskStatus.STOPPED:
            status = state.exit_status
            exits.append(
                TaskExit(
                    container_id,
                    exec_id,
                    pid,
                    status.code if status else UNKNOWN_EXIT_STATUS,
                    status.exited_at if status else None,
                    reconciled=True,
                )
            )
        else:
            alive[(container_id, exec_id)] = pid
    return exits, alive
