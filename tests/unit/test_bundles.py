"""Dead task bundles: which ones go, and that removal never follows a link or
enters a rootfs. No containerd needed: the layout is containerd 1.6's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from supervisor.client._bundles import (
    TASK_GONE_WAIT,
    _has_children,
    _served_elsewhere,
    _shims,
    _tasks_prefix,
    clear_dead_bundle,
    clear_for_create,
    clear_half_deleted,
    settle_lost_task,
    stop_stray_shims,
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
    state, root = tmp_path / "state", tmp_path / "root"
    live = bundle(state, "i", "config.json", "address", "runtime")
    half = bundle(state, ".i", "config.json")
    root_half = bundle(root, ".i", "x")
    clear_half_deleted(state, root, NS, "i")
    assert live.exists() and not half.exists() and not root_half.exists()


def _fake_shim(
    task_id: str,
    seconds: float,
    cwd: Path | None = None,
    child: bool = False,
    listen: str | None = None,
) -> subprocess.Popen[bytes]:
    """A process that /proc shows as a runc shim serving ``task_id``, started in
    ``cwd`` (its bundle, as containerd starts a shim); ``child``: with a child
    process, as a shim serving a container has; ``listen``: on a unix socket
    at that path, as a shim serves containerd."""
    code = f"import time; time.sleep({seconds})"
    if child:
        code = f"import os; os.fork() or os.execvp('sleep', ['sleep', '{seconds}']); {code}"
    if listen:
        code = (
            "import socket; s = socket.socket(socket.AF_UNIX); "
            f"s.bind({listen!r}); s.listen(); {code}"
        )
    # The interpreter under a shim's name: /proc shows it as one, and it
    # still finds its standard library from that path.
    named = Path(tempfile.mkdtemp(prefix="shim-")) / "containerd-shim-runc-v2"
    named.symlink_to(os.path.realpath(sys.executable))
    shim = subprocess.Popen(
        [str(named), "-c", code, "-namespace", NS, "-id", task_id],
        cwd=cwd,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while (NS, task_id) not in _shims() or (listen and not os.path.exists(listen)):
        assert time.monotonic() < deadline and shim.poll() is None
        time.sleep(0.01)
    shutil.rmtree(named.parent)
    return shim


def _bundle_naming(state: Path, name: str, socket_path: str) -> Path:
    """A bundle whose ``address`` names ``socket_path``, as a Create that
    reached a shim on that socket leaves it."""
    path = bundle(state, name, "config.json", "runtime")
    (path / "address").write_text(f"unix://{socket_path}")
    return path


def _socket_path() -> str:
    """A short path for a unix socket (their paths are limited to 107 bytes)."""
    return os.path.join(tempfile.mkdtemp(prefix="s-"), "s")


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


def _end(shim: subprocess.Popen[bytes]) -> None:
    """Kill the fake shim and what it started (its own session), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(shim.pid, signal.SIGKILL)
    shim.wait()


def test_a_shim_whose_bundle_was_deleted_under_it_is_stopped_and_the_id_runs_again(
    tmp_path: Path,
) -> None:
    """containerd killed mid-delete: the bundle was renamed to .<id> (and
    removed) while its shim lived on. The next Create of the id reached that
    shim and left a bundle that looked served: the stray goes, then the bundle."""
    state = tmp_path / "state"
    old = bundle(state, "t", "config.json", "address")
    shim = _fake_shim("t", 30, cwd=old)
    try:
        old.rename(old.with_name(".t"))
        shutil.rmtree(old.with_name(".t"))
        served = bundle(state, "t", "config.json", "address")  # the next Create's
        assert clear_for_create(state, None, NS, "t")
        assert shim.wait(timeout=5) == -signal.SIGKILL
        assert not served.exists() and not old.with_name(".t").exists()
    finally:
        _end(shim)


def test_a_half_deleted_bundle_a_shim_is_in_stays_until_a_create_clears_both(
    tmp_path: Path,
) -> None:
    """Before a delete, a .<id> a shim still has as its cwd is kept: that shim
    may serve the very task to delete (a Create connected to it). The bundle
    the delete then leaves blocks the next Create, which clears both."""
    state = tmp_path / "state"
    old = bundle(state, "u", "config.json", "address")
    shim = _fake_shim("u", 30, cwd=old)
    try:
        hidden = old.rename(old.with_name(".u"))
        clear_half_deleted(state, None, NS, "u")
        assert shim.poll() is None and hidden.exists()
        left = bundle(state, "u", "config.json", "address")
        assert clear_for_create(state, None, NS, "u")
        assert shim.wait(timeout=5) == -signal.SIGKILL
        assert not hidden.exists() and not left.exists()
    finally:
        _end(shim)


def test_a_shim_with_processes_is_never_killed_nor_its_directory_removed(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    old = bundle(state, "v", "config.json", "address")
    shim = _fake_shim("v", 30, cwd=old, child=True)
    try:
        deadline = time.monotonic() + 10
        while not _has_children(shim.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        hidden = old.rename(old.with_name(".v"))
        clear_half_deleted(state, None, NS, "v")
        sweep_dead_bundles(state, None)
        assert stop_stray_shims(state, NS, "v", task_unknown=True) == 0
        assert shim.poll() is None and hidden.exists()
    finally:
        _end(shim)


def test_shims_in_their_bundles_or_of_another_state_dir_are_not_strays(tmp_path: Path) -> None:
    state, other = tmp_path / "state", tmp_path / "other"
    live = bundle(state, "w", "config.json", "address", "runtime")
    elsewhere = bundle(other, "x", "config.json", "address")
    shims = [_fake_shim("w", 30, cwd=live), _fake_shim("x", 30, cwd=elsewhere)]
    try:
        shutil.rmtree(elsewhere)  # deleted, but not under this state dir
        assert stop_stray_shims(state) == 0
        sweep_dead_bundles(state, None)
        assert all(s.poll() is None for s in shims) and live.exists()
    finally:
        for s in shims:
            _end(s)


def test_the_sweep_before_containerd_starts_stops_strays(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = bundle(state, "y", "config.json", "address", "runtime")
    shim = _fake_shim("y", 30, cwd=old)
    try:
        hidden = old.rename(old.with_name(".y"))
        sweep_dead_bundles(state, None)
        assert shim.wait(timeout=5) == -signal.SIGKILL and not hidden.exists()
    finally:
        _end(shim)


def test_a_stray_an_id_s_bundle_may_reach_is_left_unless_the_task_is_unknown(
    tmp_path: Path,
) -> None:
    """A Create after the stray's bundle went connects to the stray (the shim
    reuses a socket that answers): containerd reaches it through the new
    bundle, so only a caller that knows containerd has no such task kills it."""
    state = tmp_path / "state"
    old = bundle(state, "z", "config.json", "address", "runtime")
    socket_path = _socket_path()
    shim = _fake_shim("z", 30, cwd=old, listen=socket_path)
    try:
        shutil.rmtree(old)
        current = _bundle_naming(state, "z", socket_path)
        assert stop_stray_shims(state) == 0
        sweep_dead_bundles(state, None)
        assert shim.poll() is None and current.exists()
        assert stop_stray_shims(state, NS, "z", task_unknown=True) == 1
        assert shim.wait(timeout=5) == -signal.SIGKILL
    finally:
        _end(shim)
        shutil.rmtree(os.path.dirname(socket_path))


def test_a_grouped_shim_whose_first_members_bundle_went_serves_the_others(
    tmp_path: Path,
) -> None:
    """A grouped shim is named after the member that started it and works in
    that member's bundle, which goes when that member's task is deleted; the
    shim serves the others on. While another member's bundle names its
    socket it is never a stray, even for a Create of the first member."""
    state = tmp_path / "state"
    first = bundle(state, "g1", "config.json", "address", "runtime")
    socket_path = _socket_path()
    shim = _fake_shim("g1", 30, cwd=first, listen=socket_path)
    try:
        other = _bundle_naming(state, "g2", socket_path)
        shutil.rmtree(first)
        assert stop_stray_shims(state) == 0
        assert stop_stray_shims(state, NS, "g1", task_unknown=True) == 0
        sweep_dead_bundles(state, None)
        assert shim.poll() is None and other.exists()
        shutil.rmtree(other)  # the last member deleted: nothing reaches the shim
        assert stop_stray_shims(state) == 1
        assert shim.wait(timeout=5) == -signal.SIGKILL
    finally:
        _end(shim)
        shutil.rmtree(os.path.dirname(socket_path))


def test_runc_state_whose_process_another_containerds_shim_serves_is_spared(
    tmp_path: Path,
) -> None:
    """runc keeps one root per namespace for every containerd: a container
    whose process a shim of another state dir serves is not ours to delete."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    their_bundle = bundle(theirs, "c", "config.json", "address")
    our_bundle = bundle(ours, "c", "config.json", "address")
    for where, spared in ((their_bundle, True), (our_bundle, False)):
        shim = _fake_shim("c", 30, cwd=where, child=True)
        try:
            deadline = time.monotonic() + 10
            while not _has_children(shim.pid):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            child = int(Path(f"/proc/{shim.pid}/task/{shim.pid}/children").read_text().split()[0])
            assert _served_elsewhere(child, _tasks_prefix(ours)) is spared
        finally:
            _end(shim)
    assert not _served_elsewhere(os.getpid(), _tasks_prefix(ours))  # not a shim's


def test_a_lost_tasks_shim_that_outlived_its_bundle_is_stopped(tmp_path: Path) -> None:
    """After the delete of a lost task, a shim of the id whose bundle is gone
    would be joined by the next Create: it is stopped, at once."""
    state = tmp_path / "state"
    old = bundle(state, "l", "config.json", "address")
    shim = _fake_shim("l", 30, cwd=old)
    try:
        shutil.rmtree(old)
        began = time.monotonic()
        assert settle_lost_task(state, NS, "l")
        assert shim.wait(timeout=5) == -signal.SIGKILL
        assert time.monotonic() - began < TASK_GONE_WAIT + 1
    finally:
        _end(shim)


def test_a_lost_tasks_shim_still_in_its_bundle_is_waited_for_not_killed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    live = bundle(state, "m", "config.json", "address")
    shim = _fake_shim("m", 0.3, cwd=live)
    cleanup = threading.Timer(0.5, lambda: shutil.rmtree(live))
    cleanup.start()
    try:
        assert settle_lost_task(state, NS, "m")
        assert shim.wait(timeout=5) == 0  # it exited by itself
    finally:
        cleanup.cancel()
        _end(shim)
