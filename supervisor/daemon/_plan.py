"""The next step toward what a container should be: pure, so it can be tested
exhaustively and so every fault takes the same path as the happy case.

:func:`plan` reads what containerd says now (the task, if any, and the
container's labels) and returns one :class:`Step`. The daemon takes it,
reads again, and asks again, until the step is one that ends the round. The
labels record every decision before it is acted on (an exit and its restart
decision before the task is deleted, a pending start before the task is
created), so a daemon killed between any two steps is followed by one that
takes the same decisions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from ..client import TaskStatus
from ..errors import InvalidArgument
from ._labels import (
    EXIT_CODE,
    EXIT_PID,
    FINISHED_AT,
    NEXT_START,
    POLICY,
    REMOVE_ON_EXIT,
    STARTED_AT,
    STARTED_PID,
    timestamp,
)
from ._policy import PolicyKind, RestartPolicy, RestartState, decide, restart_on_daemon_start

__all__ = (
    "START_FAILED_EXIT",
    "UNKNOWN_EXIT",
    "Act",
    "Step",
    "TaskView",
    "lenient_state",
    "plan",
    "record_exit",
    "restart_after_shutdown",
)

#: The exit code of a task that ended while nobody could see how (Docker's 255).
UNKNOWN_EXIT = 255
#: How soon a task whose state containerd cannot tell is looked at again.
UNKNOWN_RETRY = 2.0
#: The exit code recorded when a task could not be created or started (Docker's 128).
START_FAILED_EXIT = 128


class Act(enum.Enum):
    """What to do next."""

    NOTHING = "nothing"  # settled: stopped for good, or no definition
    ADOPT = "adopt"  # running: make sure its output is logged
    MARK_STARTED = "mark-started"  # running, but its start is not recorded yet
    DISCARD_CREATED = "discard-created"  # created, never started: delete it
    RECORD_EXIT = "record-exit"  # stopped or gone, exit not recorded: record it and decide
    DELETE_TASK = "delete-task"  # stopped, exit recorded: delete the task
    CLEAR_PENDING = "clear-pending"  # a start is pending but an operator stopped it
    SCHEDULE_START = "schedule-start"  # the daemon's start brings it back (policy)
    WAIT = "wait"  # a start is pending; its backoff ends at ``at``
    START = "start"  # a start is due
    REMOVE = "remove"  # `run --rm`: its exit is recorded, delete the container


@dataclass(frozen=True, slots=True)
class TaskView:
    """The parts of containerd's task state that decisions depend on."""

    status: TaskStatus
    pid: int
    exit_code: int = 0
    exited_at: float | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One step: labels to set (and keys to drop) come with it when it records something."""

    act: Act
    reason: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    at: float | None = None
    exit_code: int | None = None
    restart: bool = False


def lenient_state(labels: Mapping[str, str]) -> RestartState:
    try:
        return RestartState.from_labels(labels)
    except InvalidArgument:
        # A hand-edited label must not stop supervision: start from scratch.
        return RestartState()


def _policy(labels: Mapping[str, str]) -> RestartPolicy:
    try:
        return RestartPolicy.parse(labels.get(POLICY, "no"))
    except InvalidArgument:
        return RestartPolicy.parse("no")


def _started_unrecorded(labels: Mapping[str, str]) -> bool:
    """Whether the last task we marked started has no exit recorded."""
    pid = labels.get(STARTED_PID)
    return bool(pid) and labels.get(EXIT_PID) != pid


def record_exit(
    labels: Mapping[str, str],
    code: int,
    exited_at: float,
    pid: int | str,
    why: str = "",
    *,
    ran_for: float | None = None,
) -> Step:
    """The labels that record an exit and the policy's decision about it
    (``ran_for`` defaults to the time since the recorded start)."""
    state = lenient_state(labels)
    started = timestamp(labels.get(STARTED_AT))
    if ran_for is None:
        ran_for = max(0.0, exited_at - started) if started is not None else 0.0
    decision = decide(_policy(labels), state, code, ran_for)
    new = {
        **decision.state.to_labels(),
        EXIT_CODE: str(code),
        FINISHED_AT: datetime.fromtimestamp(exited_at, UTC).isoformat(),
        EXIT_PID: str(pid),
    }
    remove: tuple[str, ...] = ()
    if decision.restart:
        new[NEXT_START] = f"{exited_at + decision.delay:.6f}"
    else:
        remove = (NEXT_START,)
    reason = f"{why}exited with {code}: {decision.reason}"
    return Step(Act.RECORD_EXIT, reason, new, remove, exit_code=code, restart=decision.restart)


def restart_after_shutdown(labels: Mapping[str, str]) -> bool:
    """Whether a container the daemon stopped at its own shutdown starts with
    the next daemon: unless an operator stopped it, under always and
    unless-stopped, and under on-failure while its budget lasts."""
    state = lenient_state(labels)
    policy = _policy(labels)
    if state.manually_stopped or policy.kind is PolicyKind.NO:
        return False
    if policy.kind is PolicyKind.ON_FAILURE and policy.max_retries:
        return state.restart_count < policy.max_retries
    return True


def plan(
    task: TaskView | None,
    labels: Mapping[str, str],
    now: float,
    *,
    first: bool = False,
) -> Step:
    """The next step for one container. ``first``: this daemon has not synced
    it yet (a stopped ``always`` container is then started, as Docker does)."""
    pending = timestamp(labels.get(NEXT_START))
    if task is not None:
        if task.status in (TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.PAUSING):
            if pending is not None or labels.get(STARTED_PID) != str(task.pid):
                return Step(
                    Act.MARK_STARTED,
                    f"running as pid {task.pid}",
                    {STARTED_AT: f"{now:.6f}", STARTED_PID: str(task.pid)},
                    (NEXT_START, EXIT_PID),
                )
            return Step(Act.ADOPT, f"running as pid {task.pid}")
        if task.status is TaskStatus.STOPPED:
            if labels.get(EXIT_PID) != str(task.pid):
                return record_exit(labels, task.exit_code, task.exited_at or now, task.pid)
            return Step(Act.DELETE_TASK, f"exit of pid {task.pid} recorded")
        if task.status is TaskStatus.CREATED:
            # Never started (a daemon or containerd died between create and
            # start): discard it; the pending start, if any, makes a new one.
            return Step(Act.DISCARD_CREATED, "task created, never started")
        # UNKNOWN: its shim did not answer (stopped, overloaded). Never act on
        # a state nobody knows; look again.
        return Step(Act.WAIT, f"task state {task.status.value}", at=now + UNKNOWN_RETRY)
    if pending is None and _started_unrecorded(labels):
        # It ran, and its task went while no daemon could see how it ended.
        return record_exit(
            labels,
            UNKNOWN_EXIT,
            now,
            labels[STARTED_PID],
            "task gone without its exit status (a dead shim, or no daemon watching); ",
        )
    state = lenient_state(labels)
    if pending is not None:
        if state.manually_stopped:
            return Step(Act.CLEAR_PENDING, "stopped by an operator", remove=(NEXT_START,))
        if now < pending:
            return Step(Act.WAIT, f"restart in {pending - now:.1f}s", at=pending)
        return Step(Act.START, "start due")
    if labels.get(REMOVE_ON_EXIT) == "true" and EXIT_CODE in labels:
        return Step(Act.REMOVE, "removed on exit")
    if first and EXIT_CODE in labels and restart_on_daemon_start(_policy(labels), state):
        started = replace(state, manually_stopped=False).to_labels()
        return Step(
            Act.SCHEDULE_START,
            "stopped; its policy starts it with the daemon",
            {**started, NEXT_START: f"{now:.6f}"},
        )
    return Step(Act.NOTHING, "stopped")
