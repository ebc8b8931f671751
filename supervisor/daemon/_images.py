"""Containers made from images: the image's config as defaults under what a
definition says, pulls shared between the containers that wait for one image,
and names of users looked up in a container's own snapshot."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ..client import RootfsMount
from ..errors import ImageError, InvalidArgument, NotFound, SupervisorError

if TYPE_CHECKING:
    from ..client import Client
    from ..images import Image, ImageConfig, Platform, PullProgress
    from ._definitions import ContainerDefinition

log = logging.getLogger("supervisor.daemon")

#: Bound on a pull the daemon makes for a container (a slow registry, big layers).
PULL_TIMEOUT = 1800.0
MNT_DETACH = 2
MS_RDONLY = 1


def normalize_image(ref: str) -> str:
    """A reference's full name (``busybox`` is ``docker.io/library/busybox:latest``)."""
    from ..images import normalize

    return normalize(ref)


def with_image(definition: ContainerDefinition, config: ImageConfig) -> ContainerDefinition:
    """The definition with the image's defaults where it gave none, as docker
    applies them: ``entrypoint + cmd`` (a command replaces cmd, an entrypoint
    replaces both), env under the definition's, working dir, user, stop signal."""
    given = definition.explicit
    entrypoint = definition.entrypoint if definition.entrypoint is not None else config.entrypoint
    if "command" in given and definition.command:
        cmd: tuple[str, ...] = definition.command
    elif definition.entrypoint is not None:
        cmd = ()
    else:
        cmd = config.cmd
    command = tuple(entrypoint) + cmd
    if not command:
        raise InvalidArgument(f"image {definition.image} has no command: give one")
    env = {**config.env_dict(), **definition.env}
    changes: dict[str, Any] = {"command": command, "env": env}
    if "cwd" not in given and config.working_dir:
        changes["cwd"] = config.working_dir
    if "user" not in given and config.user:
        changes["user"] = config.user
    if "stop_signal" not in given and config.stop_signal:
        changes["stop_signal"] = _signal_number(config.stop_signal)
    return replace(definition, **changes)


def _signal_number(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        log.warning("image stop signal %r is unknown: SIGTERM", text)
        return int(signal.SIGTERM)


class Pulls:
    """The daemon's pulls: one at a time per image (those who ask meanwhile
    wait for it), in the background for definitions (so that the daemon is
    READY and answers while a big image comes), and never while an image is
    being removed: pulls and creates from images hold :meth:`using`, removals
    :meth:`removing`, since a layer found present (and so not leased by the
    pull) is otherwise free for garbage collection once its last image goes."""

    def __init__(self, insecure: Sequence[str] = ()) -> None:
        self._locks: dict[str, anyio.Lock] = {}
        self.insecure = tuple(insecure)
        self._changed = anyio.Condition()
        self._users = 0
        self._removing = False
        self._running: set[str] = set()
        self._fresh: set[str] = set()  # pulled in the background, not used yet

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[None]:
        """Held by whatever reads images (pulls, containers being made)."""
        async with self._changed:
            while self._removing:
                await self._changed.wait()
            self._users += 1
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self._users -= 1
                    self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def removing(self) -> AsyncIterator[None]:
        """Held while images are removed: waits for every :meth:`using`."""
        async with self._changed:
            while self._removing:
                await self._changed.wait()
            self._removing = True
            try:
                while self._users:
                    await self._changed.wait()
            except BaseException:
                self._removing = False
                self._changed.notify_all()
                raise
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self._removing = False
                    self._changed.notify_all()

    async def pull(
        self,
        client: Client,
        ref: str,
        *,
        platform: Platform | None = None,
        progress: Callable[[PullProgress], None] | None = None,
    ) -> Image:
        """Pull ``ref`` with the daemon's registry settings (root's credentials)."""
        from ..images import RegistryClient, pull

        async with RegistryClient(insecure=self.insecure) as registry:
            return await pull(client, ref, platform=platform, progress=progress,
                              registry=registry)  # fmt: skip

    async def ensure(self, client: Client, ref: str, policy: str, *, force: bool = False) -> Image:
        """The image named ``ref``, pulled as ``policy`` says (``missing``,
        ``always``, ``never``; ``force``: pull whatever the policy). Call it
        under :meth:`using`."""
        from ..images import resolve_image

        name = normalize_image(ref)
        lock = self._locks.setdefault(name, anyio.Lock())
        async with lock:
            if policy != "always" and not force:
                try:
                    return await resolve_image(client, name)
                except (NotFound, ImageError):  # absent, or not for this platform
                    if policy == "never":
                        raise NotFound(
                            f"image {name} is not here and its pull policy is never"
                        ) from None
            log.info("pulling %s", name)
            with anyio.fail_after(PULL_TIMEOUT):
                image = await self.pull(client, name)
            log.info("pulled %s (%s)", name, image.digest)
            return image

    async def ready(
        self, client: Client, ref: str, policy: str, tg: TaskGroup, done: Callable[[], None]
    ) -> Image | None:
        """The image, if it is here as ``policy`` wants; otherwise None, and a
        pull started in ``tg`` (one per image) that calls ``done`` when over."""
        from ..images import resolve_image

        name = normalize_image(ref)
        if name in self._running:
            return None
        if policy == "always" and name not in self._fresh:
            self._start(client, name, tg, done)
            return None
        try:
            image = await resolve_image(client, name)
        except (NotFound, ImageError):
            if policy == "never":
                raise NotFound(f"image {name} is not here and its pull policy is never") from None
            self._start(client, name, tg, done)
            return None
        self._fresh.discard(name)
        return image

    def _start(self, client: Client, name: str, tg: TaskGroup, done: Callable[[], None]) -> None:
        self._running.add(name)
        tg.start_soon(self._background, client, name, done)

    async def _background(self, client: Client, name: str, done: Callable[[], None]) -> None:
        try:
            async with self.using():
                await self.ensure(client, name, "always")
            self._fresh.add(name)
        except (SupervisorError, OSError, TimeoutError) as exc:
            log.error("cannot pull %s: %s", name, exc)
        finally:
            self._running.discard(name)
            done()


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def lookup_user(mounts: Sequence[RootfsMount], user: str) -> str:
    """``user`` as numbers (``uid:gid``), names read from the container's own
    /etc/passwd and /etc/group: its snapshot is mounted read-only in a private
    directory for that (blocking; a thread)."""
    from ..client._spec import parse_user

    name, _, group = user.partition(":")
    if name.isdigit() and (not group or group.isdigit()):
        return user
    with _mounted(mounts) as root:
        ids = parse_user(user, root)
    return f"{ids['uid']}:{ids['gid']}"


@contextlib.contextmanager
def _mounted(mounts: Sequence[RootfsMount]) -> Any:
    if len(mounts) != 1:
        raise InvalidArgument(f"cannot read a rootfs of {len(mounts)} mounts")
    mount = mounts[0]
    if mount.type == "bind":
        yield Path(mount.source)
        return
    target = Path(tempfile.mkdtemp(prefix="supervisor-rootfs-"))
    options = ",".join(o for o in mount.options if o not in ("rw", "ro"))
    try:
        if _libc.mount(mount.source.encode(), bytes(target), mount.type.encode(), MS_RDONLY,
                       options.encode()) != 0:  # fmt: skip
            err = ctypes.get_errno()
            raise InvalidArgument(f"cannot mount the container's rootfs: {os.strerror(err)}")
        try:
            yield target
        finally:
            _libc.umount2(bytes(target), MNT_DETACH)
    finally:
        with contextlib.suppress(OSError):
            target.rmdir()
