"""The control socket is made without following links, in a directory only root can change."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import grpclib.server
import pytest

from supervisor import SupervisorError
from supervisor.daemon._control import prepare_socket_dir, serve

pytestmark = pytest.mark.anyio

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


@needs_root
async def test_socket_swapped_for_a_link_before_chmod_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    victim.chmod(0o600)
    path = tmp_path / "run" / "control.sock"
    start = grpclib.server.Server.start
    servers: list[grpclib.server.Server] = []

    async def start_then_swap(self: grpclib.server.Server, *args: Any, **kwargs: Any) -> None:
        servers.append(self)
        await start(self, *args, **kwargs)
        os.unlink(path)  # someone replaces the socket between bind and chmod
        os.symlink(victim, path)

    monkeypatch.setattr(grpclib.server.Server, "start", start_then_swap)
    with pytest.raises(SupervisorError, match="replaced"):
        await serve(object(), path, None)  # type: ignore[arg-type]
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    [server] = servers
    await server.wait_closed()  # closed on the way out: nothing listens


@needs_root
async def test_socket_is_0660_root_owned(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"
    server = await serve(object(), path, None)  # type: ignore[arg-type]
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    finally:
        server.close()
        await server.wait_closed()


@needs_root
@pytest.mark.parametrize(
    ("mode", "uid", "gid", "expected"),
    [
        (0o777, 0, 0, "writable by anyone"),
        (0o775, 0, 65534, "writable by group 65534"),
        (0o755, 65534, 0, "belongs to uid 65534"),
    ],
)
def test_directory_others_could_change_is_refused(
    tmp_path: Path, mode: int, uid: int, gid: int, expected: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, uid, gid)
    run.chmod(mode)
    with pytest.raises(SupervisorError, match=expected):
        prepare_socket_dir(run / "control.sock")
    # Through a link too: what counts is the directory the socket lands in.
    link = tmp_path / "link"
    link.symlink_to(run)
    with pytest.raises(SupervisorError, match=expected):
        prepare_socket_dir(link / "control.sock")


@needs_root
def test_sticky_world_writable_ancestor_is_fine(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    prepare_socket_dir(shared / "mine" / "control.sock")  # root's own dir inside: fine
    with pytest.raises(SupervisorError, match="writable by anyone"):
        prepare_socket_dir(shared / "control.sock")  # in the sticky dir itself: not
