"""Task bundles a killed containerd leaves behind and never clears itself.

containerd 1.6 has no API for these, so this works on its state directory
(only when the caller says where it is):

- a bundle made before its shim started (no ``address`` file, no shim): every
  later Create of that id fails with "failed to start shim: mkdir ...: file
  exists";
- ``.<id>``, the first half of a bundle's delete (a rename): the next delete of
  that id leaves its bundle behind, which then blocks Create as above.

Neither holds a process. Bundles served by a shim are containerd's: it loads
them at start, and Tasks.Delete clears them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger("supervisor.client")

__all__ = ("DEAD_BUNDLE_ERROR", "clear_dead_bundle", "sweep_dead_bundles")

#: How containerd 1.6 says a dead bundle blocks a Create.
DEAD_BUNDLE_ERROR = "failed to start shim: mkdir"
_TASKS = "io.containerd.runtime.v2.task"


def _remove(bundle: Path, *, in_state: bool) -> bool:
    if not bundle.is_dir() or bundle.is_symlink():
        return False
    hidden = bundle.name.startswith(".")
    if not hidden and not (in_state and not (bundle / "address").exists()):
        return False
    if os.path.ismount(bundle / "rootfs"):
        log.warning("leaving %s: its rootfs is still mounted", bundle)
        return False
    log.info("removing task bundle %s left by a killed containerd", bundle)
    shutil.rmtree(bundle, ignore_errors=True)
    return True


def clear_dead_bundle(state: Path, root: Path | None, namespace: str, task_id: str) -> bool:
    """Remove one id's dead bundles from containerd's ``state`` (and ``root``)
    directories. Safe while containerd runs as long as no Create of that id is
    under way. Whether anything was removed."""
    removed = False
    for top, in_state in ((state, True), (root, False)):
        if top is None:
            continue
        for name in (task_id, f".{task_id}"):
            removed |= _remove(top / _TASKS / namespace / name, in_state=in_state)
    return removed


def sweep_dead_bundles(state: Path, root: Path | None) -> None:
    """Remove every dead bundle of every namespace; only while containerd is down
    (a bundle without ``address`` is also one whose shim is starting)."""
    for top, in_state in ((state, True), (root, False)):
        if top is None or not (top / _TASKS).is_dir():
            continue
        for namespace in (top / _TASKS).iterdir():
            if namespace.is_dir() and not namespace.is_symlink():
                for bundle in namespace.iterdir():
                    _remove(bundle, in_state=in_state)
