"""Containers made from images: the image's config as defaults under what a
definition says, pulls shared between the containers that wait for one image,
and names of users looked up in a container's own snapshot."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from .._units import parse_signal
from ..client._rootfs import read_in_root
from ..errors import ImageError, InvalidArgument, NotFound, SupervisorError

if TYPE_CHECKING:
    from ..client import Client, RootfsMount
    from ..images import Image, ImageConfig, Platform, PullProgress
    from ._definitions import ContainerDefinition

log = logging.getLogger("supervisor.daemon")

#: Bound on a pull the daemon makes for a container (a slow registry, big layers).
PULL_TIMEOUT = 1800.0


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
    try:
        return parse_signal(text)
    except InvalidArgument:
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

    @contextlib.asynccontextmanager
    async def removing_if_idle(self) -> AsyncIterator[bool]:
        """:meth:`removing` when nothing uses images now (True), else False at
        once: it never waits, so it never holds up a pull or a create that
        comes while it would have waited."""
        async with self._changed:
            idle = not self._removing and not self._users
            if idle:
                self._removing = True
        if not idle:
            yield False
            return
        try:
            yield True
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

    async def ensure(self, client: Client, ref: str, policy: str) -> Image:
        """The image named ``ref``, pulled as ``policy`` says (``missing``,
        ``always``, ``never``). Call it under :meth:`using`."""
        from ..images import resolve_image

        name = normalize_image(ref)
        lock = self._locks.setdefault(name, anyio.Lock())
        async with lock:
            if policy != "always":
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


def lookup_user(mounts: Sequence[RootfsMount], user: str) -> str:
    """``user`` as numbers (``uid:gid``), names read from the container's own
    /etc/passwd and /etc/group, found in its snapshot's layers as overlayfs
    would show them (the topmost layer that has the file; a whiteout or an
    opaque /etc hides the ones below), each read inside its own layer
    (blocking; a thread). Nothing is mounted: an image may have more layers
    than one mount's options can name."""
    from ..client._spec import parse_user

    name, _, group = user.partition(":")
    if name.isdigit() and (not group or group.isdigit()):
        return user
    layers = _layers(mounts)
    ids = parse_user(user, read=lambda relative: _read_layered(layers, relative),
                     where="the image's ")  # fmt: skip
    return f"{ids['uid']}:{ids['gid']}"


def _layers(mounts: Sequence[RootfsMount]) -> list[Path]:
    """The directories of a snapshot's mounts, the topmost first."""
    if len(mounts) != 1:
        raise InvalidArgument(f"cannot read a rootfs of {len(mounts)} mounts")
    mount = mounts[0]
    if mount.type == "bind":
        return [Path(mount.source)]
    upper: list[Path] = []
    lower: list[Path] = []
    for option in mount.options:
        key, _, value = option.partition("=")
        if key == "upperdir":
            upper = [Path(value)]
        elif key == "lowerdir":
            lower = [Path(p) for p in value.split(":") if p]
    if not lower:
        raise InvalidArgument(f"cannot read a rootfs mounted as {mount.type}")
    return upper + lower


def _read_layered(layers: Sequence[Path], relative: str) -> bytes:
    parent, _, _ = relative.rpartition("/")
    for layer in layers:
        try:
            return read_in_root(layer, relative)
        except (FileNotFoundError, NotADirectoryError):
            pass  # not in this layer: a lower one may have it
        except InvalidArgument:
            # Not a regular file here: an overlayfs whiteout (a character
            # device) hides the file of every layer below; so would anything else.
            raise FileNotFoundError(relative) from None
        with contextlib.suppress(OSError):
            opaque = os.getxattr(layer / parent, "trusted.overlay.opaque", follow_symlinks=False)
            if opaque == b"y":
                break
    raise FileNotFoundError(relative)
