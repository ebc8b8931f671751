"""Dead task bundles: which ones go, and that removal never follows a link or
enters a rootfs. No containerd needed: the layout is containerd 1.6's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from supervisor.client._bundles import (
    TASK_GONE_WAIT,
    _shims,
    clear_dead_bundle,
    clear_for_create,
    sweep_dead_bundles,
    wait_task_gone,
)

NS = "unit-bundles-ns"


def bundle(top: Path, name: str, *files: str) -> Path:
    path = top / "io.containerd.runtime.v2.task" / NS / name
    path.mkdir(parents=True)
    for file in files:
        (path / file).write_text("x")
    return path


def test_sweep_removes_hidden_and_shimless_keeps_the_rest(tmp_path: Path) -> None:
    state, root = tmp_path / "state", tmp_path / "root"
    hidden = bundle(state, ".a", "config.json", "address")
    shimless = bundle(state, "b", "config.json")
    never_ran = bundle(state, "c", "config.json", "address")  # shim dead before runc
    ran = bundle(state, "d", "config.json", "address", "runtime")  # containerd cleans it
    root_hidden = bundle(root, ".a", "x")
    root_live = bundle(root, "d", "x")
    sweep_dead_bundles(state, root)
    assert not hidden.exists() and not shimless.exists() and not never_ran.exists()
    assert ran.exists() and root_live.exists() and not root_hidden.exists()


def test_a_rootfs_in_use_keeps_its_bundle_and_links_are_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    busy = bundle(state, "e", "config.json")
    (busy / "rootfs").mkdir()
    (busy / "rootfs" / "file").write_text("a mounted rootfs looks like this")
    linked = bundle(state, "f", "config.json")
    (linked / "work").symlink_to(outside)
    (linked / "rootfs").symlink_to(outside)
    sweep_dead_bundles(state, None)
    assert (busy / "rootfs" / "file").exists()
    assert not linked.exists()
    assert (outside / "precious").read_text() == "keep"


def test_clear_one_id_while_containerd_runs(tmp_path: Path) -> None:
    state, root = tmp_path / "state", tmp_path / "root"
    dead = bundle(state, "g", "config.json", "address", "runtime")
    half = bundle(state, ".g", "config.json")
    other = bundle(state, "h", "config.json")
    assert clear_dead_bundle(state, root, NS, "g")
    assert not dead.exists() and not half.exists() and other.exists()
    assert not clear_dead_bundle(state, root, NS, "g")


def test_a_half_deleted_bundle_goes_before_the_next_delete(tmp_path: Path) -> None:
    from supervisor.client._bundles import clear_half_deleted

    state, root = tmp_path / "state", tmp_path / "root"
    live = bundle(state, "i", "config.json", "address", "runtime")
    half = bundle(state, ".i", "config.json")
    root_half = bundle(root, ".i", "x")
    clear_half_deleted(state, root, NS, "i")
    assert live.exists() and not half.exists() and not root_half.exists()


def _fake_shim(task_id: str, seconds: float) -> subprocess.Popen[bytes]:
    """A process that /proc shows as a runc shim serving ``task_id``."""
    code = f"import time; time.sleep({seconds})"
    shim = subprocess.Popen(
        ["containerd-shim-runc-v2", "-c", code, "-namespace", NS, "-id", task_id],
        executable=sys.executable,
    )
    deadline = time.monotonic() + 10
    while (NS, task_id) not in _shims():  # until it has exec'd
        assert time.monotonic() < deadline and shim.poll() is None
        time.sleep(0.01)
    return shim


def test_a_shim_that_is_exiting_is_waited_for(tmp_path: Path) -> None:
    """The delete of a lost task stops its shim, which may still be in /proc when
    the next Create meets the bundle: the clearing waits for it (bounded)."""
    state = tmp_path / "state"
    dead = bundle(state, "k", "config.json", "address")
    shim = _fake_shim("k", 0.3)
    try:
        assert clear_for_create(state, None, NS, "k")
        assert shim.poll() is not None  # it was waited for, not removed under it
        assert not dead.exists()
    finally:
        shim.kill()
        shim.wait()


def test_the_create_after_a_lost_tasks_delete_waits_for_containerds_clean_up(
    tmp_path: Path,
) -> None:
    """containerd removes a gone shim's bundle in the background: what is at the
    path then goes, a new task's bundle included. The wait covers the shim's
    exit and then the bundle's removal."""
    state = tmp_path / "state"
    old = bundle(state, "n", "config.json", "address")
    shim = _fake_shim("n", 0.2)
    cleanup = threading.Timer(0.4, lambda: shutil.rmtree(old))
    cleanup.start()
    try:
        began = time.monotonic()
        assert wait_task_gone(state, NS, "n")
        assert time.monotonic() - began >= 0.35 and not old.exists()
    finally:
        cleanup.cancel()
        shim.kill()
        shim.wait()


def test_no_shim_means_no_clean_up_to_wait_for(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bundle(state, "p", "config.json")  # dead: only clearing it helps
    began = time.monotonic()
    assert wait_task_gone(state, NS, "p")
    assert wait_task_gone(None, NS, "q")
    assert time.monotonic() - began < TASK_GONE_WAIT


def test_clear_for_create(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dead = bundle(state, "r", "config.json")
    assert clear_for_create(state, None, NS, "r") and not dead.exists()
    assert clear_for_create(state, None, NS, "r")  # nothing left to block a create
    served = bundle(state, "s", "config.json", "address")
    shim = _fake_shim("s", 30)
    try:
        assert not clear_for_create(state, None, NS, "s")
        assert served.exists()
    finally:
        shim.kill()
        shim.wait()
