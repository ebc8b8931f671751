"""The sync loop's decisions, without containerd: each state gives the right
next step, and a daemon killed between any two steps is followed by one that
takes the same decisions (restart counts exact, nothing lost or done twice)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.client import TaskStatus
from supervisor.daemon._labels import (
    EXIT_CODE,
    EXIT_PID,
    NEXT_START,
    POLICY,
    REMOVE_ON_EXIT,
    STARTED_PID,
)
from supervisor.daemon._plan import UNKNOWN_EXIT, Act, TaskView, plan
from supervisor.daemon._policy import RestartState

COUNT = "io.containerd-supervisor/restart-count"
STOPPED_MARK = "io.containerd-supervisor/manually-stopped"


def running(pid: int) -> TaskView:
    return TaskView(TaskStatus.RUNNING, pid)


def stopped(pid: int, code: int, at: float = 100.0) -> TaskView:
    return TaskView(TaskStatus.STOPPED, pid, code, at)


def test_running_and_recorded_is_adopted() -> None:
    step = plan(running(7), {STARTED_PID: "7"}, 0.0)
    assert step.act is Act.ADOPT


def test_running_unrecorded_start_is_marked() -> None:
    step = plan(running(7), {NEXT_START: "1.0", STARTED_PID: "3"}, 5.0)
    assert step.act is Act.MARK_STARTED
    assert step.labels[STARTED_PID] == "7"
    assert NEXT_START in step.remove and EXIT_PID in step.remove


def test_stopped_unrecorded_records_exit_and_decision() -> None:
    labels = {POLICY: "always", STARTED_PID: "7"}
    step = plan(stopped(7, 3, at=100.0), labels, 101.0)
    assert step.act is Act.RECORD_EXIT and step.restart and step.exit_code == 3
    assert step.labels[EXIT_PID] == "7" and step.labels[EXIT_CODE] == "3"
    assert step.labels[COUNT] == "1"
    assert float(step.labels[NEXT_START]) == 100.0 + 0.1  # backoff from the exit time


def test_stopped_recorded_is_deleted() -> None:
    step = plan(stopped(7, 3), {EXIT_PID: "7", STARTED_PID: "7"}, 101.0)
    assert step.act is Act.DELETE_TASK


def test_created_task_is_discarded() -> None:
    step = plan(TaskView(TaskStatus.CREATED, 9), {NEXT_START: "1"}, 5.0)
    assert step.act is Act.DISCARD_CREATED


def test_no_restart_leaves_nothing_pending() -> None:
    step = plan(stopped(7, 0), {POLICY: "on-failure", STARTED_PID: "7"}, 101.0)
    assert step.act is Act.RECORD_EXIT and not step.restart
    assert NEXT_START in step.remove


def test_pending_start_waits_then_starts() -> None:
    labels = {NEXT_START: "110.5", EXIT_PID: "7", STARTED_PID: "7"}
    step = plan(None, labels, 110.0)
    assert (step.act, step.at) == (Act.WAIT, 110.5)
    assert plan(None, labels, 110.5).act is Act.START


def test_manual_stop_clears_a_pending_start() -> None:
    labels = {NEXT_START: "1", **RestartState(manually_stopped=True).to_labels()}
    assert plan(None, labels, 5.0).act is Act.CLEAR_PENDING


def test_task_gone_unwatched_is_an_unknown_exit() -> None:
    step = plan(None, {POLICY: "on-failure", STARTED_PID: "7"}, 50.0)
    assert step.act is Act.RECORD_EXIT and step.exit_code == UNKNOWN_EXIT and step.restart
    assert step.labels[EXIT_PID] == "7"  # recorded once: the next plan does not repeat it
    after = {POLICY: "on-failure", STARTED_PID: "7", **step.labels}
    assert plan(None, after, 50.0).act is Act.WAIT


def test_never_started_container_stays() -> None:
    assert plan(None, {POLICY: "always"}, 5.0).act is Act.NOTHING


def test_remove_on_exit_after_the_exit() -> None:
    labels = {REMOVE_ON_EXIT: "true", EXIT_CODE: "0", EXIT_PID: "7", STARTED_PID: "7"}
    assert plan(None, labels, 5.0).act is Act.REMOVE


def test_daemon_start_restarts_a_stopped_always_container() -> None:
    labels = {POLICY: "always", EXIT_CODE: "0", EXIT_PID: "7", STARTED_PID: "7",
              **RestartState(manually_stopped=True).to_labels()}  # fmt: skip
    step = plan(None, labels, 5.0, first=True)
    assert step.act is Act.SCHEDULE_START and step.labels[STOPPED_MARK] == "false"
    assert plan(None, labels, 5.0, first=False).act is Act.NOTHING
    assert plan(None, {**labels, POLICY: "unless-stopped"}, 5.0, first=True).act is Act.NOTHING


def test_malformed_labels_do_not_stop_supervision() -> None:
    labels = {POLICY: "sometimes", COUNT: "-1", STARTED_PID: "7"}
    step = plan(stopped(7, 1), labels, 101.0)
    assert step.act is Act.RECORD_EXIT and not step.restart  # read as policy "no"


# -- a daemon killed between any two steps -----------------------------------------


@dataclass
class World:
    """containerd as the plan sees it: labels and one task."""

    labels: dict[str, str] = field(default_factory=dict)
    task: TaskView | None = None
    clock: float = 1000.0
    next_pid: int = 100
    starts: int = 0

    def apply(self, step: object, crash_inside_start: bool) -> bool:
        """Take one step; False when the daemon would yield (settled or waiting)."""
        from supervisor.daemon._plan import Step

        assert isinstance(step, Step)
        act = step.act
        if act in (Act.NOTHING, Act.ADOPT):
            return False
        if act is Act.WAIT:
            assert step.at is not None
            self.clock = max(self.clock, step.at)
            return True
        if act in (Act.DELETE_TASK, Act.DISCARD_CREATED):
            self.task = None
        elif act is Act.START:
            self.next_pid += 1
            self.task = TaskView(TaskStatus.CREATED, self.next_pid)
            if crash_inside_start:
                return True  # died between create and start
            self.task = running(self.next_pid)
            self.starts += 1
            self.labels[STARTED_PID] = str(self.next_pid)
            self.labels.pop(NEXT_START, None)
            self.labels.pop(EXIT_PID, None)
        else:
            for key in step.remove:
                self.labels.pop(key, None)
            self.labels.update(step.labels)
        return True


def converge(world: World, crashes: set[int], counter: list[int]) -> None:
    """Run the daemon's loop until it settles; at the step numbers in
    ``crashes`` the daemon dies (the next one starts from what is stored)."""
    first = True
    for _ in range(100):
        counter[0] += 1
        crash = counter[0] in crashes
        step = plan(world.task, world.labels, world.clock, first=first)
        first = False
        if crash and step.act is not Act.START:
            first = True  # died before taking this step
            continue
        if not world.apply(step, crash_inside_start=crash):
            return
        if crash:
            first = True
    raise AssertionError(f"no convergence: {world}")


@settings(max_examples=300, deadline=None)
@given(
    codes=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    crashes=st.sets(st.integers(1, 80), max_size=20),
    policy=st.sampled_from(["always", "on-failure", "on-failure:3", "unless-stopped"]),
)
def test_crashes_between_steps_change_no_decision(
    codes: list[int], crashes: set[int], policy: str
) -> None:
    world = World(labels={POLICY: policy, NEXT_START: "0"})
    counter = [0]
    converge(world, crashes, counter)
    restarts = 0
    limit = int(policy.split(":")[1]) if ":" in policy else None
    for code in codes:
        if world.task is None:
            break  # the policy stopped it
        assert world.task.status is TaskStatus.RUNNING
        world.task = stopped(world.task.pid, code, world.clock)
        world.clock += 0.01
        should = policy in ("always", "unless-stopped") or (
            code != 0 and (limit is None or restarts < limit)
        )
        converge(world, crashes, counter)
        if should:
            restarts += 1
        assert world.labels[COUNT] == str(restarts)
        assert world.labels[EXIT_CODE] == str(code)
        assert (world.task is not None) == should
        assert world.starts == restarts + 1  # each decided restart started exactly once


def test_unknown_task_state_is_never_acted_on() -> None:
    step = plan(TaskView(TaskStatus.UNKNOWN, 0), {STARTED_PID: "7"}, 10.0)
    assert step.act is Act.WAIT and step.at is not None and step.at > 10.0


def test_restart_after_shutdown_follows_the_policy() -> None:
    from supervisor.daemon._plan import restart_after_shutdown

    assert restart_after_shutdown({POLICY: "always"})
    assert restart_after_shutdown({POLICY: "unless-stopped"})
    assert restart_after_shutdown({POLICY: "on-failure:3", COUNT: "2"})
    assert not restart_after_shutdown({POLICY: "on-failure:3", COUNT: "3"})
    assert not restart_after_shutdown({POLICY: "no"})
    stopped_by_hand = RestartState(manually_stopped=True).to_labels()
    assert not restart_after_shutdown({POLICY: "always", **stopped_by_hand})


def test_a_created_task_counts_as_started_once_its_command_runs() -> None:
    import os

    from supervisor.daemon._keeper import _runs_user_process

    assert _runs_user_process(os.getpid())  # python, not `runc init`
    assert not _runs_user_process(0)
    assert not _runs_user_process(2**22 + 12345)  # no such process
