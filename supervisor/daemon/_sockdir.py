"""The control socket's directory, checked before the daemon starts anything."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import SupervisorError


def prepare_socket_dir(path: Path) -> None:
    """Make the control socket's directory if missing (0755), and refuse one that
    someone other than root could change: a socket there could be replaced by
    another that answers in the daemon's name. The directory and every one above
    it must be root's and not writable by others (unless sticky, like /tmp, where
    others cannot touch root's entries)."""
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    real = Path(os.path.realpath(parent))
    for directory in (real, *real.parents):
        st = os.stat(directory)
        where = f"control socket {path}: directory {directory}"
        if st.st_uid != 0:
            raise SupervisorError(f"{where} belongs to uid {st.st_uid}, not root")
        sticky = bool(st.st_mode & stat.S_ISVTX) and directory != real
        if st.st_mode & stat.S_IWOTH and not sticky:
            raise SupervisorError(f"{where} is writable by anyone (chmod o-w it)")
        if directory == real and st.st_mode & stat.S_IWGRP and st.st_gid != 0:
            raise SupervisorError(f"{where} is writable by group {st.st_gid} (chmod g-w it)")
