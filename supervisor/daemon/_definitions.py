"""Container definitions: one TOML file per container in the definitions directory.

::

    id = "web"                          # default: the file name without .toml
    rootfs = "/srv/rootfs/web"          # absolute, an existing directory; or:
    image = "busybox:1.36"              # an image (pulled when missing), not with rootfs
    pull = "missing"                    # missing | always | never
    entrypoint = ["/bin/sh", "-c"]      # with an image: instead of the image's
    command = ["/bin/httpd", "-f"]      # with an image: instead of its cmd (optional)
    user = "0:0"                        # uid[:gid] or name[:group] from the rootfs
    cwd = "/"
    restart = "on-failure:5"            # no, always, on-failure[:N], unless-stopped
    stop_signal = "SIGTERM"             # or "TERM", or 15
    stop_timeout = 10.0
    memory = "256m"
    cpus = 1.5                          # 0.01 to 8192
    pids = 200                          # at most 4194304
    terminal = false
    network = "bridge"                  # none, host, container:<id>, a network's name;
                                        # absent: the daemon's default (bridge)
    ports = ["8080:80", "127.0.0.1:5353:53/udp"]   # [IP:]HOST:CONTAINER[/tcp|udp]
    shim_group = "web"                  # share one runc shim with this group's others

    [env]
    LANG = "C.UTF-8"

    [labels]
    team = "web"

    [[mounts]]
    source = "/srv/data"
    destination = "/data"
    readonly = true                     # also: type = "bind", options = ["rbind", "rw"]
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..client import Mount, oci_spec, validate_id
from ..client._spec import IMAGE_ROOTFS
from ..errors import InvalidArgument, SupervisorError
from ..net import Mode, PortMapping, parse_port
from ..net._ports import check_ports
from ._config import _Invalid, _located, _read_toml, _Table, _Unreadable
from ._groups import validate_group
from ._images import normalize_image
from ._policy import RestartPolicy

__all__ = (
    "ENV_NAME_RULE",
    "MAX_CPUS",
    "MAX_PIDS",
    "MIN_CPUS",
    "ContainerDefinition",
    "DefinitionError",
    "directory_problem",
    "load_definition",
    "load_definitions",
)

_KEYS = (
    "id",
    "rootfs",
    "image",
    "pull",
    "entrypoint",
    "command",
    "env",
    "user",
    "cwd",
    "restart",
    "stop_signal",
    "stop_timeout",
    "memory",
    "cpus",
    "pids",
    "mounts",
    "labels",
    "terminal",
    "network",
    "ports",
    "shim_group",
)
_MOUNT_KEYS = ("source", "destination", "type", "options", "readonly")

#: The range of ``cpus``: Docker's minimum (1 ms of every 100 ms period, the
#: kernel's smallest quota) and the most CPUs Linux supports.
MIN_CPUS = 0.01
MAX_CPUS = 8192.0
ENV_NAME_RULE = "an environment variable name must be non-empty, without '=' or NUL"
#: The most ``pids`` the kernel takes (PID_MAX_LIMIT, 2**22).
MAX_PIDS = 4_194_304
PULL_POLICIES = ("missing", "always", "never")
#: What an image's config gives unless the definition says otherwise.
IMAGE_DEFAULTS = ("command", "user", "cwd", "stop_signal")


class DefinitionError(SupervisorError, ValueError):
    """A container definition file is unreadable, invalid or clashes with another."""

    def __init__(self, path: Path, key: str, message: str) -> None:
        super().__init__(path, key, message)
        self.path = path
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return _located(self.path, self.key, self.message)


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, kw_only=True)
class ContainerDefinition:
    """One container the daemon keeps running, as read from ``source``."""

    id: str
    #: A directory, or None with ``image``.
    rootfs: Path | None
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=_frozen, hash=False)
    user: str = "0:0"
    cwd: str = "/"
    restart: RestartPolicy = field(default_factory=lambda: RestartPolicy.parse("no"))
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    mounts: tuple[Mount, ...] = ()
    labels: Mapping[str, str] = field(default_factory=_frozen, hash=False)
    terminal: bool = False
    #: None: the daemon's default network when the container is made.
    network: str | None = None
    ports: tuple[PortMapping, ...] = ()
    #: An image reference (instead of ``rootfs``), its pull policy, and an
    #: entrypoint to run instead of the image's.
    image: str = ""
    pull: str = "missing"
    entrypoint: tuple[str, ...] | None = None
    #: Which of IMAGE_DEFAULTS the definition gave (the others come from the image).
    explicit: frozenset[str] = field(default=frozenset(IMAGE_DEFAULTS), compare=False)
    #: The shim group it shares a runc shim with ("": a shim of its own).
    shim_group: str = ""
    source: Path

    def spec(self) -> dict[str, Any]:
        """The OCI runtime spec; raises :class:`InvalidArgument` if it is unsound.
        For an image, the definition as :func:`with_image` made it, and the
        user given by number (names are looked up in the container's rootfs)."""
        return oci_spec(
            self.rootfs if self.rootfs is not None else IMAGE_ROOTFS,
            self.command,
            env=self.env,
            cwd=self.cwd,
            user=self.user,
            hostname=self.id[:63],  # ids reach 76; a hostname 64 at most
            terminal=self.terminal,
            memory_limit=self.memory,
            cpus=self.cpus,
            pids_limit=self.pids,
            mounts=self.mounts,
        )

    def definition_hash(self) -> str:
        """A sha256 of what the definition means, not how its file is written.

        Fields left at their default are omitted, so adding a field to this
        class later does not change the hash of existing definitions.
        """
        canonical: dict[str, Any] = {}
        for item in fields(self):
            if item.name in ("source", "explicit"):
                continue
            value = getattr(self, item.name)
            if item.default is not MISSING:
                default = item.default
            elif item.default_factory is not MISSING:
                default = item.default_factory()
            else:
                default = MISSING
            if value != default:
                canonical[item.name] = _plain(value)
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, Mount):
        return value.to_oci()
    if isinstance(value, PortMapping):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, RestartPolicy | Path):
        return str(value)
    return value


def load_definition(path: Path) -> ContainerDefinition:
    """Read and check one definition file, including that its OCI spec builds.

    Raises :class:`DefinitionError` naming the file and the key at fault.
    """
    try:
        definition = _parse(_read_toml(path), path)
    except _Invalid as exc:
        raise DefinitionError(path, exc.key, exc.message) from None
    except _Unreadable as exc:
        raise DefinitionError(path, "", exc.message) from exc.__cause__
    if definition.image:
        return definition  # its spec needs the image's config: checked when it is made
    try:
        definition.spec()
    except InvalidArgument as exc:
        raise DefinitionError(path, "", str(exc)) from exc
    return definition


def load_definitions(
    directory: Path,
) -> tuple[list[ContainerDefinition], list[DefinitionError]]:
    """Load every ``*.toml`` file in ``directory``, in name order.

    An invalid file, or one repeating an id already loaded, is reported and
    skipped; the others load. Hidden files are ignored; a missing directory
    holds no definitions.
    """
    try:
        paths = sorted(
            (
                entry
                for entry in directory.iterdir()
                if entry.name.endswith(".toml")
                and not entry.name.startswith(".")
                and not entry.is_dir()
            ),
            key=lambda entry: entry.name,
        )
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [DefinitionError(directory, "", f"cannot list: {exc.strerror or exc}")]
    definitions: list[ContainerDefinition] = []
    errors: list[DefinitionError] = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            definition = load_definition(path)
        except DefinitionError as exc:
            errors.append(exc)
            continue
        first = seen.get(definition.id)
        if first is not None:
            message = f"id {definition.id!r} is already defined by {first}"
            errors.append(DefinitionError(path, "id", message))
            continue
        seen[definition.id] = path
        definitions.append(definition)
    return definitions, errors


def _parse(data: dict[str, Any], path: Path) -> ContainerDefinition:
    table = _Table(data, _KEYS)
    image = _image(table)
    return ContainerDefinition(
        id=_id(table, path),
        rootfs=None if image else _rootfs(table),
        command=_command(table, required=not image),
        env=_frozen(_env(table)),
        user=_user(table),
        cwd=_cwd(table),
        restart=_restart(table),
        stop_signal=_signal(table),
        stop_timeout=table.positive_number("stop_timeout", 10.0),
        memory=table.size("memory", None),
        cpus=table.positive_number("cpus", None, minimum=MIN_CPUS, maximum=MAX_CPUS),
        pids=_pids(table),
        mounts=tuple(_mount(mount) for mount in table.tables("mounts", _MOUNT_KEYS)),
        labels=_frozen(table.string_map("labels")),
        terminal=table.boolean("terminal", False),
        network=_network(table),
        ports=_ports(table),
        image=image,
        pull=_pull(table, image),
        entrypoint=_entrypoint(table, image),
        explicit=frozenset(key for key in IMAGE_DEFAULTS if table.has(key)),
        shim_group=_shim_group(table),
        source=path,
    )


def _image(table: _Table) -> str:
    image = table.string("image", "")
    if not image:
        if table.has("image"):
            table.fail("image", "must not be empty")
        return ""
    if table.has("rootfs"):
        table.fail("image", "give either an image or a rootfs, not both")
    try:
        return normalize_image(image)
    except InvalidArgument as exc:
        table.fail("image", str(exc))


def _pull(table: _Table, image: str) -> str:
    value = table.string("pull", "missing")
    if value not in PULL_POLICIES:
        table.fail("pull", f"must be one of {', '.join(PULL_POLICIES)}, not {value!r}")
    if table.has("pull") and not image:
        table.fail("pull", "only applies to an image")
    return value


def _entrypoint(table: _Table, image: str) -> tuple[str, ...] | None:
    value = table.strings("entrypoint")
    if value is not None and not image:
        table.fail("entrypoint", "only applies to an image (put it in command)")
    if value is not None and value and not value[0]:
        table.fail("entrypoint", "must not start with an empty string")
    return None if value is None else tuple(value)


def _network(table: _Table) -> str | None:
    value = table.string("network", None)
    if value is not None:
        try:
            Mode.parse(value)
        except InvalidArgument as exc:
            table.fail("network", str(exc))
    return value


def _shim_group(table: _Table) -> str:
    value = table.string("shim_group", None)
    if value is None:
        return ""
    try:
        return validate_group(value)
    except InvalidArgument as exc:
        table.fail("shim_group", str(exc))


def _ports(table: _Table) -> tuple[PortMapping, ...]:
    specs = table.strings("ports") or []
    try:
        return check_ports(parse_port(spec) for spec in specs)
    except InvalidArgument as exc:
        table.fail("ports", str(exc))


def _id(table: _Table, path: Path) -> str:
    given = table.string("id", None)
    value = path.name.removesuffix(".toml") if given is None else given
    try:
        return validate_id(value)
    except InvalidArgument as exc:
        hint = "" if given is not None else " (taken from the file name; set id to override)"
        table.fail("id", f"{exc}{hint}")


def _rootfs(table: _Table) -> Path:
    rootfs = table.absolute_path("rootfs", None)
    if rootfs is None:
        table.fail("rootfs", "is required (or an image)")
    problem = directory_problem(rootfs)
    if problem:
        table.fail("rootfs", problem)
    return rootfs


def directory_problem(path: Path) -> str | None:
    """Why ``path`` is not a directory we can use (a container's rootfs, a
    definitions directory), or None."""
    try:
        if path.is_dir():
            return None
    except OSError as exc:  # a name too long, a directory we may not search...
        return f"{str(path)!r} cannot be used: {exc.strerror or exc}"
    return f"{str(path)!r} is not a directory"


def _command(table: _Table, *, required: bool = True) -> tuple[str, ...]:
    command = table.strings("command")
    if command is None:
        if not required:
            return ()
        table.fail("command", "is required")
    if not command or not command[0]:
        table.fail("command", "must be a non-empty array of strings with a non-empty first")
    return tuple(command)


def _env(table: _Table) -> dict[str, str]:
    env = table.string_map("env")
    for name in env:
        if not name or "=" in name or "\0" in name:
            table.fail(f"env.{name}", ENV_NAME_RULE)
    return env


def _user(table: _Table) -> str:
    user = table.string("user", "0:0")
    name, _, group = user.partition(":")
    if not name or (user.endswith(":") and not group) or ":" in group:
        table.fail("user", f"{user!r} is not uid[:gid] or name[:group]")
    return user


def _cwd(table: _Table) -> str:
    cwd = table.string("cwd", "/")
    if not cwd.startswith("/"):
        table.fail("cwd", f"{cwd!r} must be an absolute path")
    return cwd


def _restart(table: _Table) -> RestartPolicy:
    try:
        return RestartPolicy.parse(table.string("restart", "no"))
    except InvalidArgument as exc:
        table.fail("restart", str(exc))


def _signal(table: _Table) -> int:
    value: int | str | None = table.get("stop_signal", (int, str), "a signal name or number")
    if value is None:
        return int(signal.SIGTERM)
    if isinstance(value, int):
        if value not in signal.valid_signals():
            table.fail("stop_signal", f"{value} is not a signal number")
        return value
    name = value.upper()
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        table.fail("stop_signal", f"{value!r} is not a signal name")


def _pids(table: _Table) -> int | None:
    pids = table.integer("pids", None)
    if pids is not None and pids <= 0:
        table.fail("pids", f"must be positive, not {pids}")
    if pids is not None and pids > MAX_PIDS:
        table.fail("pids", f"must be at most {MAX_PIDS} (the kernel's limit), not {pids}")
    return pids


def _mount(table: _Table) -> Mount:
    source = table.string("source", None)
    destination = table.string("destination", None)
    kind = table.string("type", "bind")
    options = table.strings("options")
    options = ["rbind", "rw"] if options is None else options
    if source is None or destination is None:
        table.fail("source" if source is None else "destination", "is required")
    if not source:
        table.fail("source", "must not be empty")
    if kind == "bind" and not source.startswith("/"):
        table.fail("source", f"{source!r} must be an absolute path for a bind mount")
    if not destination.startswith("/"):
        table.fail("destination", f"{destination!r} must be an absolute path")
    if not kind:
        table.fail("type", "must not be empty")
    if table.boolean("readonly", False):
        options = ["ro" if option == "rw" else option for option in options]
        if "ro" not in options:
            options.append("ro")
    return Mount(source, destination, kind, tuple(options))
