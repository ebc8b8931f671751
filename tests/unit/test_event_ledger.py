from datetime import UTC, datetime

from supervisor.client import ExitStatus, ProcessState, TaskStatus
from supervisor.events import ExitLedger, TaskExit, reconcile
from supervisor.events._ledger import UNKNOWN_EXIT_STATUS, Known, ProcessKey

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FORGET = 20.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ledger() -> tuple[ExitLedger, Clock]:
    clock = Clock()
    return ExitLedger(FORGET, clock), clock


def state(
    cid: str,
    pid: int,
    status: TaskStatus,
    exec_id: str | None = None,
    code: int | None = None,
    exited_at: datetime | None = None,
) -> ProcessState:
    exit_status = ExitStatus(code, exited_at) if code is not None else None
    return ProcessState(cid, exec_id, pid, status, exit_status, False, "", "", "")


def test_first_then_repeat() -> None:
    exits, _ = ledger()
    assert exits.first("c1", None, 10) is True
    assert exits.first("c1", None, 10) is False
    assert exits.first("c1", None, 10) is False
    assert len(exits) == 1


def test_keys_are_container_exec_and_pid() -> None:
    exits, _ = ledger()
    assert exits.first("c1", None, 10) is True
    assert exits.first("c1", None, 11) is True
    assert exits.first("c1", "e1", 10) is True
    assert exits.first("c2", None, 10) is True
    assert exits.first("c1", "e1", 10) is False
    assert len(exits) == 4


def test_delivered() -> None:
    exits, _ = ledger()
    assert exits.delivered("c1", None, 10) is False
    exits.first("c1", None, 10)
    assert exits.delivered("c1", None, 10) is True
    assert exits.delivered("c1", "e1", 10) is False
    assert exits.delivered("c1", None, 11) is False
    assert exits.delivered("c2", None, 10) is False


def test_never_forgotten_without_delete() -> None:
    exits, clock = ledger()
    exits.first("c1", None, 10)
    clock.now += 100 * FORGET
    assert exits.first("c2", None, 1) is True
    assert exits.first("c1", None, 10) is False
    assert len(exits) == 2


def test_forgotten_only_after_delete_and_forget_after() -> None:
    exits, clock = ledger()
    exits.first("c1", None, 10)
    exits.first("c1", "e1", 11)
    exits.first("c2", None, 12)
    clock.now += 5
    exits.task_deleted("c1")
    # A late retry inside the window is still a duplicate.
    clock.now += FORGET - 0.5
    assert exits.first("c1", None, 10) is False
    assert len(exits) == 3
    clock.now += 0.5
    assert exits.first("c3", None, 13) is True  # any call prunes
    assert exits.delivered("c1", None, 10) is False
    assert exits.delivered("c1", "e1", 11) is False
    assert exits.delivered("c2", None, 12) is True
    assert len(exits) == 2
    assert exits.first("c1", None, 10) is True


def test_entries_after_delete_survive_prune() -> None:
    exits, clock = ledger()
    exits.first("c1", None, 10)
    clock.now += 1
    exits.task_deleted("c1")
    clock.now += 1
    # The task is re-created under the same id and its new init exits.
    exits.first("c1", None, 20)
    clock.now += FORGET
    assert exits.first("c1", None, 10) is True
    assert exits.first("c1", None, 20) is False
    assert exits.delivered("c1", None, 20) is True


def test_second_delete_forgets_the_recreated_task_later() -> None:
    exits, clock = ledger()
    exits.first("c1", None, 10)
    exits.task_deleted("c1")
    clock.now += 1
    exits.first("c1", None, 20)
    clock.now += 1
    exits.task_deleted("c1")
    clock.now += FORGET - 1
    assert exits.first("x", None, 1) is True
    assert (exits.delivered("c1", None, 10), exits.delivered("c1", None, 20)) == (False, True)
    clock.now += 1
    assert exits.first("x", None, 2) is True
    assert (exits.delivered("c1", None, 10), exits.delivered("c1", None, 20)) == (False, False)
    assert len(exits) == 2


def test_entry_after_delete_at_same_clock_reading_survives() -> None:
    exits, clock = ledger()
    exits.first("c1", None, 10)
    exits.task_deleted("c1")
    exits.first("c1", None, 20)
    clock.now += FORGET
    assert exits.first("c1", None, 10) is True
    assert exits.delivered("c1", None, 20) is True


def test_known_started_ended_deleted() -> None:
    known = Known()
    known.started("c1", None, 10)
    known.started("c1", "e1", 11)
    known.started("c2", None, 12)
    known.started("c2", "e2", 13)
    assert sorted(known.execs()) == [("c1", "e1", 11), ("c2", "e2", 13)]
    known.ended("c1", None, 99)  # another pid: a stale exit does not end the new process
    assert known.processes[("c1", None)] == 10
    known.ended("c1", None, 10)
    assert ("c1", None) not in known.processes
    known.task_deleted("c2")
    assert known.processes == {("c1", "e1"): 11}
    assert known.execs() == [("c1", "e1", 11)]


def test_known_restart_replaces_pid() -> None:
    known = Known()
    known.started("c1", None, 10)
    known.started("c1", None, 20)
    known.ended("c1", None, 10)
    assert known.processes == {("c1", None): 20}


def test_reconcile_stopped_task_gives_its_exit() -> None:
    exits, alive = reconcile({}, [state("c1", 10, TaskStatus.STOPPED, code=3, exited_at=WHEN)], {})
    assert exits == [TaskExit("c1", None, 10, 3, WHEN, reconciled=True)]
    assert alive == {}


def test_reconcile_stopped_task_without_status_gives_255() -> None:
    exits, _ = reconcile({}, [state("c1", 10, TaskStatus.STOPPED)], {})
    assert exits == [TaskExit("c1", None, 10, UNKNOWN_EXIT_STATUS, None, reconciled=True)]


def test_reconcile_known_stopped_task_yields_one_exit() -> None:
    known: dict[ProcessKey, int] = {("c1", None): 10}
    tasks = [state("c1", 10, TaskStatus.STOPPED, code=0, exited_at=WHEN)]
    exits, alive = reconcile(known, tasks, {})
    assert exits == [TaskExit("c1", None, 10, 0, WHEN, reconciled=True)]
    assert alive == {}


def test_reconcile_known_init_gone_gives_255() -> None:
    exits, alive = reconcile({("c1", None): 10}, [], {})
    assert exits == [TaskExit("c1", None, 10, 255, None, reconciled=True)]
    assert alive == {}


def test_reconcile_known_init_with_another_pid_gives_255() -> None:
    known: dict[ProcessKey, int] = {("c1", None): 10}
    exits, alive = reconcile(known, [state("c1", 20, TaskStatus.RUNNING)], {})
    assert exits == [TaskExit("c1", None, 10, 255, None, reconciled=True)]
    assert alive == {("c1", None): 20}


def test_reconcile_known_init_replaced_by_stopped_task_gives_both_exits() -> None:
    known: dict[ProcessKey, int] = {("c1", None): 10}
    tasks = [state("c1", 20, TaskStatus.STOPPED, code=1, exited_at=WHEN)]
    exits, _ = reconcile(known, tasks, {})
    assert sorted(exits, key=lambda e: e.pid) == [
        TaskExit("c1", None, 10, 255, None, reconciled=True),
        TaskExit("c1", None, 20, 1, WHEN, reconciled=True),
    ]


def test_reconcile_known_exec_stopped_gives_its_status() -> None:
    known: dict[ProcessKey, int] = {("c1", None): 10, ("c1", "e1"): 11}
    execs = {("c1", "e1"): state("c1", 11, TaskStatus.STOPPED, "e1", code=7, exited_at=WHEN)}
    exits, alive = reconcile(known, [state("c1", 10, TaskStatus.RUNNING)], execs)
    assert exits == [TaskExit("c1", "e1", 11, 7, WHEN, reconciled=True)]
    assert alive == {("c1", None): 10}


def test_reconcile_known_exec_gone_gives_255() -> None:
    known: dict[ProcessKey, int] = {("c1", None): 10, ("c1", "e1"): 11}
    exits, alive = reconcile(known, [state("c1", 10, TaskStatus.RUNNING)], {("c1", "e1"): None})
    assert exits == [TaskExit("c1", "e1", 11, 255, None, reconciled=True)]
    assert alive == {("c1", None): 10}


def test_reconcile_known_exec_with_another_pid_gives_255() -> None:
    known: dict[ProcessKey, int] = {("c1", "e1"): 11}
    execs = {("c1", "e1"): state("c1", 12, TaskStatus.RUNNING, "e1")}
    exits, alive = reconcile(known, [state("c1", 10, TaskStatus.RUNNING)], execs)
    assert exits == [TaskExit("c1", "e1", 11, 255, None, reconciled=True)]
    assert alive == {("c1", None): 10}


def test_reconcile_running_tasks_and_execs_are_alive() -> None:
    known: dict[ProcessKey, int] = {("c1", None): 10, ("c1", "e1"): 11}
    tasks = [
        state("c1", 10, TaskStatus.RUNNING),
        state("c2", 20, TaskStatus.PAUSED),  # not known before: alive too
        state("c3", 30, TaskStatus.CREATED),  # never started: nothing that can exit yet
    ]
    execs = {("c1", "e1"): state("c1", 11, TaskStatus.RUNNING, "e1")}
    exits, alive = reconcile(known, tasks, execs)
    assert exits == []
    assert alive == {("c1", None): 10, ("c1", "e1"): 11, ("c2", None): 20}


def test_reconcile_mixed() -> None:
    known: dict[ProcessKey, int] = {
        ("a", None): 1,
        ("b", None): 2,
        ("b", "x"): 3,
        ("c", None): 4,
    }
    tasks = [
        state("a", 1, TaskStatus.RUNNING),
        state("b", 2, TaskStatus.STOPPED, code=137, exited_at=WHEN),
        state("d", 5, TaskStatus.RUNNING),
    ]
    execs = {("b", "x"): state("b", 3, TaskStatus.STOPPED, "x", code=137, exited_at=WHEN)}
    exits, alive = reconcile(known, tasks, execs)
    assert sorted(exits, key=lambda e: e.pid) == [
        TaskExit("b", None, 2, 137, WHEN, reconciled=True),
        TaskExit("b", "x", 3, 137, WHEN, reconciled=True),
        TaskExit("c", None, 4, 255, None, reconciled=True),
    ]
    assert alive == {("a", None): 1, ("d", None): 5}


def test_discard_lets_the_same_exit_through_again() -> None:
    ledger = ExitLedger()
    assert ledger.first("c1", None, 7)
    ledger.discard("c1", None, 7)  # recorded but never queued (the reader was cancelled)
    assert ledger.first("c1", None, 7)
    assert not ledger.first("c1", None, 7)
    ledger.discard("nope", "e", 1)  # unknown keys are ignored
    assert len(ledger) == 1
