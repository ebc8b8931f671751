"""What a killed containerd leaves behind and never clears itself: task
bundles, stray shims, runc state.

containerd 1.6 has no API for these, so this works on its state directory
(only when the caller says where it is). Measured on containerd 1.6.20 with
containerd SIGKILLed while tasks were created and deleted, and while a shim
was SIGSTOPped:

- a bundle whose shim is gone before the task was made (no ``address`` file,
  or an ``address`` but no ``runtime`` file and no shim): containerd's clean-up
  fails on it at every start, and every later Create of that id fails with
  "failed to start shim: mkdir ...: file exists";
- ``.<id>``, the first half of a bundle's delete (a rename): the next delete of
  that id leaves its bundle behind, which then blocks Create as above;
- a shim containerd could not reload in time (5 s; one stopped, or too slow
  under load): containerd runs the shim's clean-up (which kills its
  container) and deletes its bundle, but leaves the shim running in a
  directory that is gone. Nothing reaches it again, unless a later Create of
  the id connects to its socket (the runc shim reuses a socket that answers);
  and a bundle such a Create leaves counts as served by a live shim, so
  nothing would clear it. A shim like that with no child process is killed
  (:func:`stop_stray_shims`);
- runc's state of a container whose task containerd lost: every Create of
  that id fails with "container with given ID already exists"
  (:func:`clear_runc_state`).

A bundle is only removed when no shim process serves its id (or only a stray
one, killed first), and never through its ``rootfs`` (it is rmdir'ed: a
mounted or non-empty rootfs keeps the whole bundle) or any symlink.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

log = logging.getLogger("supervisor.client")

__all__ = (
    "DEAD_BUNDLE_ERROR",
    "RUNC_EXISTS_ERROR",
    "clear_dead_bundle",
    "clear_for_create",
    "clear_half_deleted",
    "clear_runc_state",
    "half_deleted",
    "settle_lost_task",
    "stop_stray_shims",
    "sweep_dead_bundles",
    "wait_task_gone",
)

#: How containerd 1.6 says a dead bundle blocks a Create.
DEAD_BUNDLE_ERROR = "failed to start shim: mkdir"
#: How runc says a container of the id is still in its state dir.
RUNC_EXISTS_ERROR = "container with given ID already exists"
_TASKS = "io.containerd.runtime.v2.task"
_SHIM = b"containerd-shim"
#: Where the runc v2 shim keeps runc's state, one directory per namespace.
RUNC_ROOT = Path("/run/containerd/runc")
#: How long the create after a lost task's delete waits for containerd's clean-up.
TASK_GONE_WAIT = 2.0
#: How long a killed stray shim may take to leave /proc.
STRAY_EXIT_WAIT = 2.0


def _scan() -> list[tuple[int, str, str]]:
    """(pid, namespace, id) of every runc v2 shim process, starting or serving."""
    found: list[tuple[int, str, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        args = _cmdline(entry.name)
        if not args or _SHIM not in os.path.basename(args[0]):
            continue
        flags = dict(itertools.pairwise(args))
        namespace, task_id = flags.get(b"-namespace"), flags.get(b"-id")
        if namespace and task_id:
            found.append(
                (
                    int(entry.name),
                    namespace.decode(errors="replace"),
                    task_id.decode(errors="replace"),
                )
            )
    return found


def _cmdline(pid: str) -> list[bytes]:
    """A process's arguments; none for one that is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read(8192)
    except OSError:
        return []
    return data.split(b"\0") if data else []


def _shims() -> set[tuple[str, str]]:
    """(namespace, id) of every runc v2 shim process, starting or serving."""
    return {(namespace, task_id) for _, namespace, task_id in _scan()}


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...);
    None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def _has_children(pid: int) -> bool:
    """Whether ``pid`` has a child process that is not a zombie (or it cannot
    tell)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False  # gone
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                children = f.read().split()
        except FileNotFoundError:
            if os.path.exists(f"/proc/{pid}/task/{tid}"):
                return True  # a kernel without the children file: cannot tell
            continue  # the thread ended
        except OSError:
            return True
        for child in children:
            fields = _stat(child.decode())
            if fields and fields[0] != b"Z":  # None: reaped meanwhile
                return True
    return False


def _tasks_prefix(state: Path) -> str:
    """Where the shims of containerd's ``state`` dir work, as /proc shows a
    cwd (links resolved), with a trailing slash."""
    return os.path.realpath(state / _TASKS) + "/"


def _outside_its_bundle(pid: int, tasks: str, namespace: str, task_id: str) -> bool:
    """Whether shim ``pid`` of ``namespace``/``task_id`` works under ``tasks``
    but no longer in that id's bundle (deleted, or renamed to ``.<id>``)."""
    cwd = _cwd(pid)
    return cwd is not None and cwd.startswith(tasks) and cwd != f"{tasks}{namespace}/{task_id}"


def _still_the_shim(pid: int, namespace: str, task_id: str) -> bool:
    """Whether ``pid`` is (still) the runc shim of ``namespace``/``task_id``."""
    args = _cmdline(str(pid))
    if not args or _SHIM not in os.path.basename(args[0]):
        return False
    flags = dict(itertools.pairwise(args))
    return flags.get(b"-namespace") == namespace.encode() and flags.get(b"-id") == task_id.encode()


def _strays(state: Path, namespace: str | None, task_id: str | None) -> list[tuple[int, str, str]]:
    """(pid, namespace, id) of each shim started in a bundle of ``state`` that
    is no longer that id's bundle. Only ``namespace``/``task_id`` when given."""
    tasks = _tasks_prefix(state)
    return [
        (pid, ns, tid)
        for pid, ns, tid in _scan()
        if (namespace is None or ns == namespace)
        and (task_id is None or tid == task_id)
        and _outside_its_bundle(pid, tasks, ns, tid)
    ]


def stop_stray_shims(
    state: Path,
    namespace: str | None = None,
    task_id: str | None = None,
    *,
    task_unknown: bool = False,
) -> int:
    """Kill (SIGKILL, by pid) each shim of containerd's ``state`` dir whose
    bundle is gone, that no bundle leads to and that serves no process (see
    the module docstring), and wait (at most :data:`STRAY_EXIT_WAIT`) until
    they have left /proc. How many were killed.

    A shim still answers on its socket, which a bundle's ``address`` names:
    a later Create of its id may have connected to it, and a grouped shim
    (one for several containers, named after the first) serves the others
    after the first one's bundle went. While any bundle of the namespace
    names a socket the shim listens on, it is left; ``task_unknown``: the
    caller knows containerd has no task of ``task_id``, so its bundle does not
    count. A shim with child processes is never killed: that would orphan
    them."""
    tasks = _tasks_prefix(state)
    killed: list[int] = []
    ignore = task_id if task_unknown else None
    for pid, ns, tid in _strays(state, namespace, task_id):
        outcome = _kill_stray(pid, tasks, ns, tid, ignore)
        if outcome == "killed":
            log.info("stopped shim %d of %s/%s: its bundle is gone, no containerd reaches it",
                     pid, ns, tid)  # fmt: skip
            killed.append(pid)
        elif outcome == "has processes":
            log.warning("shim %d of %s/%s lost its bundle but has processes; leaving it",
                        pid, ns, tid)  # fmt: skip
    deadline = time.monotonic() + STRAY_EXIT_WAIT
    while any(_cmdline(str(pid)) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.01)  # a zombie has no cmdline: gone as far as this is concerned
    return len(killed)


def _kill_stray(pid: int, tasks: str, namespace: str, task_id: str, ignore: str | None) -> str:
    """SIGKILL shim ``pid`` if, once it is pinned (a pidfd: its pid cannot be
    reused before the signal, so every check is made on the process that gets
    it), it is still that id's shim outside its bundle, no bundle of the
    namespace but ``ignore`` names a socket it listens on, and it has no child
    process. What became of it: killed, gone, reachable, has processes."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return "gone"
    try:
        if not _still_the_shim(pid, namespace, task_id) or not _outside_its_bundle(
            pid, tasks, namespace, task_id
        ):
            return "gone"
        sockets = _listening(pid)
        if sockets is None or _named_by_a_bundle(tasks + namespace, sockets, ignore):
            return "reachable"  # often: a Create joined it, and it serves that task
        if _has_children(pid):
            return "has processes"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return "killed"
    except OSError:
        return "gone"
    finally:
        os.close(pidfd)


def _listening(pid: int) -> set[str] | None:
    """The paths of the unix sockets ``pid`` holds; None if it cannot tell."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        paths = set()
        with open(f"/proc/{pid}/net/unix") as table:
            next(table, None)  # the header
            for line in table:
                fields = line.split()
                if len(fields) >= 8 and fields[6] in inodes:
                    paths.add(fields[7])
        return paths
    except OSError:
        return None


def _named_by_a_bundle(bundles: str, sockets: set[str], ignore: str | None) -> bool:
    """Whether a bundle of the namespace (not ``ignore``) has an ``address``
    that names one of ``sockets``."""
    try:
        entries = list(os.scandir(bundles))
    except OSError:
        return False
    for entry in entries:
        if entry.name.startswith(".") or entry.name == ignore:
            continue
        try:
            with open(os.path.join(entry.path, "address")) as f:
                address = f.read(4096).strip()
        except OSError:
            continue
        if address.removeprefix("unix://") in sockets:
            return True
    return False


def _held(bundle: Path) -> bool:
    """Whether a live shim has ``bundle`` as its working directory."""
    where = os.path.join(os.path.realpath(bundle.parent), bundle.name)
    return any(_cwd(pid) == where for pid, _, _ in _scan())


def _dead(bundle: Path, namespace: str, shims: set[tuple[str, str]], *, strict: bool) -> bool:
    """Whether ``bundle`` (in the state dir) is one containerd will never clear.
    ``strict``: containerd is down and will look at it on start, so only a
    bundle runc never touched (no ``runtime`` file) counts."""
    if bundle.name.startswith("."):
        return not _held(bundle)
    if (namespace, bundle.name) in shims:
        return False
    if not (bundle / "address").exists():
        return True
    return not strict or not (bundle / "runtime").exists()


def _remove(bundle: Path) -> bool:
    """Remove a bundle without following a link or entering its rootfs."""
    rootfs = bundle / "rootfs"
    if rootfs.is_dir() and not rootfs.is_symlink():
        try:
            rootfs.rmdir()
        except OSError as exc:
            log.warning("leaving task bundle %s: its rootfs is in use (%s)", bundle, exc)
            return False
    log.info("removing task bundle %s left by a killed containerd", bundle)
    for path, dirs, files in os.walk(bundle, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, name))
        for name in dirs:
            full = os.path.join(path, name)
            with contextlib.suppress(OSError):
                if os.path.islink(full):
                    os.unlink(full)
                else:
                    os.rmdir(full)
    with contextlib.suppress(OSError):
        os.rmdir(bundle)
    return True


def _runc_delete(namespace: str, task_id: str) -> None:
    """runc may have made the container before its shim died: its documented
    clean-up kills what is left and removes its state and cgroups."""
    runc = shutil.which("runc")
    if runc is None or not (RUNC_ROOT / namespace / task_id).exists():
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [runc, "--root", str(RUNC_ROOT / namespace), "delete", "--force", task_id],
            capture_output=True,
            timeout=10,
            check=False,
        )


def clear_runc_state(state: Path, namespace: str, task_id: str) -> bool:
    """A Create failed with :data:`RUNC_EXISTS_ERROR` for a task containerd
    (its ``state`` dir) does not know: runc's state of an earlier container of
    the id outlived the task (its shim was killed, or containerd's clean-up
    after it timed out). runc's documented clean-up (``delete --force``) kills
    what is left of it and removes its state; not when its process is served
    by a shim of another containerd (runc's root is per namespace, not per
    containerd). Whether that state is gone."""
    init = _runc_init_pid(RUNC_ROOT / namespace / task_id)
    if init is not None and _served_elsewhere(init, _tasks_prefix(state)):
        log.warning("runc's container %s/%s is served by another containerd's shim; leaving it",
                    namespace, task_id)  # fmt: skip
        return False
    _runc_delete(namespace, task_id)
    return not (RUNC_ROOT / namespace / task_id).exists()


def _runc_init_pid(container: Path) -> int | None:
    try:
        with open(container / "state.json", "rb") as f:
            pid = json.loads(f.read(1 << 20)).get("init_process_pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 0 else None


def _served_elsewhere(pid: int, tasks: str) -> bool:
    """Whether ``pid``'s parent is a shim that does not work under ``tasks``."""
    fields = _stat(pid)
    try:
        parent = int(fields[1]) if fields else 0
    except (ValueError, IndexError):
        parent = 0
    if not parent:
        return False  # gone: nothing to spare
    args = _cmdline(str(parent))
    if not args or _SHIM not in os.path.basename(args[0]):
        return False  # an orphan (reparented to init, or to another reaper)
    cwd = _cwd(parent)
    return cwd is None or not cwd.startswith(tasks)


def clear_dead_bundle(state: Path, root: Path | None, namespace: str, task_id: str) -> bool:
    """Remove the dead bundles of one id (see the module docstring) from
    containerd's ``state`` (and ``root``) directories, while containerd runs:
    call it only when containerd does not know the task and a Create of that
    id failed with :data:`DEAD_BUNDLE_ERROR`. Whether anything was removed."""
    shims = _shims()
    removed = False
    for name in (task_id, f".{task_id}"):
        bundle = state / _TASKS / namespace / name
        live = not bundle.is_dir() or bundle.is_symlink()
        if not live and _dead(bundle, namespace, shims, strict=False):
            if (bundle / "runtime").exists():
                _runc_delete(namespace, task_id)
            removed |= _remove(bundle)
        if root is not None and name.startswith("."):
            hidden = root / _TASKS / namespace / name
            if hidden.is_dir() and not hidden.is_symlink():
                removed |= _remove(hidden)
    return removed


def wait_task_gone(
    state: Path | None, namespace: str, task_id: str, *, shim_seen: bool = False
) -> bool:
    """After the delete of a task containerd lost: wait (at most
    :data:`TASK_GONE_WAIT`) until its shim has exited and, when ``state`` (the
    state dir) is known, its bundle is gone. containerd cleans up after a shim
    that went away in the background, and that clean-up removes whatever bundle
    is at the task's path then: a Create of the same id made meanwhile fails
    ("mkdir ...: file exists", or the new shim's "getwd: no such file or
    directory"). ``shim_seen``: a shim of the id was there (and was killed), so
    containerd's clean-up of its bundle may be to come. Whether it is gone."""
    names = (task_id, f".{task_id}")
    bundles = [] if state is None else [state / _TASKS / namespace / n for n in names]
    deadline = time.monotonic() + TASK_GONE_WAIT
    seen = shim_seen  # a shim of the id: its clean-up (a `shim delete` run too) is to come
    while True:
        live = any((ns, tid) == (namespace, task_id) for _, ns, tid in _scan())
        seen = seen or live
        if not live and not (seen and any(os.path.lexists(b) for b in bundles)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def settle_lost_task(state: Path | None, namespace: str, task_id: str) -> bool:
    """After the delete of a task containerd lost: wait for its shim and bundle
    to go (:func:`wait_task_gone`), and stop its shim if it outlived its bundle
    (:func:`stop_stray_shims`). Such a shim keeps its socket, and the next
    Create of the id joins it. Seen in ``bench/faults.py`` after a daemon was
    killed in the middle of a Create: the next daemon cleared that task as
    lost, its READY came after 60 s (a Create's timeout), and that id's shim
    was found stray later. Whether it is gone."""
    stopped = 0 if state is None else stop_stray_shims(state, namespace, task_id, task_unknown=True)
    gone = wait_task_gone(state, namespace, task_id, shim_seen=stopped > 0)
    if (
        not gone
        and state is not None
        and stop_stray_shims(state, namespace, task_id, task_unknown=True)
    ):
        gone = wait_task_gone(state, namespace, task_id, shim_seen=True)
    return gone


def clear_for_create(state: Path, root: Path | None, namespace: str, task_id: str) -> bool:
    """A Create of ``task_id`` failed with :data:`DEAD_BUNDLE_ERROR`: stop a
    stray shim of the id and let a clean-up containerd has under way finish
    (:func:`settle_lost_task`), then remove what is still dead. Whether a
    Create may be tried again (no bundle is left at the task's path)."""
    settle_lost_task(state, namespace, task_id)
    removed = clear_dead_bundle(state, root, namespace, task_id)
    return removed or not os.path.lexists(state / _TASKS / namespace / task_id)


def half_deleted(state: Path, root: Path | None, namespace: str, task_id: str) -> bool:
    """Whether an earlier delete of ``task_id`` left a ``.<id>`` (cheap: two lstats)."""
    return any(
        top is not None and os.path.lexists(top / _TASKS / namespace / f".{task_id}")
        for top in (state, root)
    )


def clear_half_deleted(state: Path, root: Path | None, namespace: str, task_id: str) -> None:
    """Before deleting a task: remove a ``.<id>`` a killed containerd left
    from an earlier delete of that id, or this delete would leave the bundle
    behind (its rename onto ``.<id>`` fails). Only one delete of an id runs
    at a time, so a ``.<id>`` found now is not one in progress. A shim still
    in it keeps it: it may serve the very task to delete (see
    :func:`stop_stray_shims`); a Create that then meets the bundle this delete
    leaves clears both (:func:`clear_for_create`)."""
    for top in (state, root):
        if top is None:
            continue
        hidden = top / _TASKS / namespace / f".{task_id}"
        usable = os.path.lexists(hidden) and hidden.is_dir() and not hidden.is_symlink()
        if usable and not _held(hidden):
            _remove(hidden)


def sweep_dead_bundles(state: Path, root: Path | None) -> None:
    """Stop the stray shims (:func:`stop_stray_shims`) and remove every dead
    bundle of every namespace; only while containerd is down."""
    stop_stray_shims(state)
    shims = _shims()
    tasks = state / _TASKS
    if tasks.is_dir():
        for namespace in tasks.iterdir():
            if namespace.is_dir() and not namespace.is_symlink():
                for bundle in namespace.iterdir():
                    usable = bundle.is_dir() and not bundle.is_symlink()
                    if usable and _dead(bundle, namespace.name, shims, strict=True):
                        _remove(bundle)
    if root is not None and (root / _TASKS).is_dir():
        for namespace in (root / _TASKS).iterdir():
            if namespace.is_dir() and not namespace.is_symlink():
                for bundle in namespace.iterdir():
                    if bundle.name.startswith(".") and bundle.is_dir() and not bundle.is_symlink():
                        _remove(bundle)
