"""Dead task bundles: which ones go, and that removal never follows a link or
enters a rootfs. No containerd needed: the layout is containerd 1.6's."""

from __future__ import annotations

from pathlib import Path

from supervisor.client._bundles import clear_dead_bundle, sweep_dead_bundles

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
