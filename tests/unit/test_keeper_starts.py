"""How a failed start is judged: the shim's failure (what a killed containerd
leaves) is retried a few times; the container's own is an exit at once."""

from __future__ import annotations

from pathlib import Path

from supervisor.daemon._config import DaemonConfig
from supervisor.daemon._keeper import SHIM_START_RETRIES, Keeper
from supervisor.errors import ContainerdError


def test_a_shim_that_could_not_start_is_retried_then_counted(tmp_path: Path) -> None:
    keeper = Keeper(DaemonConfig(state_dir=tmp_path))
    dead = ContainerdError("failed to start shim: mkdir /x/c: file exists")
    gone = ContainerdError("failed to start shim: start failed: getwd: no such file or directory")
    tries = [keeper._shim_failed("c", dead) for _ in range(SHIM_START_RETRIES + 1)]
    assert tries == [True] * SHIM_START_RETRIES + [False]
    assert keeper._shim_failed("c", gone)  # counted afresh after an exit was recorded
    assert keeper._shim_failed("other", dead)  # per container


def test_the_containers_own_failure_is_not_retried(tmp_path: Path) -> None:
    keeper = Keeper(DaemonConfig(state_dir=tmp_path))
    own = ContainerdError(
        'failed to create shim task: OCI runtime create failed: exec: "nosuch": not found'
    )
    assert not keeper._shim_failed("c", own)


def test_a_bundle_removed_under_runc_is_retried(tmp_path: Path) -> None:
    keeper = Keeper(DaemonConfig(state_dir=tmp_path))
    gone = ContainerdError(
        "failed to create shim task: OCI runtime create failed: unable to retrieve OCI "
        "runtime error (open /s/io.containerd.runtime.v2.task/ns/c/log.json: no such file or "
        "directory): runc did not terminate successfully: exit status 1: unknown"
    )
    assert keeper._shim_failed("c", gone)
