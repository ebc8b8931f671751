"""The daemon's own configuration: one TOML file, every key optional.

::

    namespace = "supervisor"
    state_dir = "/var/lib/containerd-supervisor"
    log_dir = "/var/log/containerd-supervisor"
    definitions_dir = "/etc/containerd-supervisor/containers"
    log_level = "info"                  # debug, info, warning or error
    stop_containers_on_exit = false

    [containerd]
    address = "/run/containerd/containerd.sock"   # absent: run a managed containerd
    binary = "containerd"

    [control]
    socket = "/run/containerd-supervisor/control.sock"
    group = "wheel"

    [logs]
    max_size = "10m"
    max_files = 5

    [metrics]
    address = "127.0.0.1:9323"          # or "unix:/run/...sock"; absent: no metrics

    [network]
    default = "bridge"                  # a new container's network: bridge, none or host
    subnet = "10.213.0.0/16"            # the default network's (bridge supervisor0)
    pool = "10.214.0.0/16"              # where user-defined networks get a /24
    cni_path = ["/usr/lib/cni", "/opt/cni/bin"]

    [images]
    insecure_registries = ["registry.lan:5000"]   # plain http (loopback ones always are)

    [runtime]
    max_shim_group = 16                 # members of a shim group (1 to 64)
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from .._units import parse_size
from ..client import validate_id
from ..errors import InvalidArgument, SupervisorError, one_line
from ..net._cni import DEFAULT_PLUGIN_DIRS
from ..net._manager import Mode
from ..net._networks import DEFAULT_POOL, DEFAULT_SUBNET, parse_subnet
from ._groups import DEFAULT_MAX_MEMBERS, MAX_MEMBERS_LIMIT

__all__ = (
    "LOG_LEVELS",
    "ConfigError",
    "DaemonConfig",
    "load_config",
    "parse_size",
)

LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

_MIB = 1024 * 1024
#: The largest size, count or limit a key takes: the runtime's numbers are int64.
MAX_INT = 2**63 - 1
_D = TypeVar("_D")


class ConfigError(SupervisorError, ValueError):
    """The config file is unreadable or a key in it is invalid."""

    def __init__(self, path: Path, key: str, message: str) -> None:
        super().__init__(path, key, message)
        self.path = path
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return _located(self.path, self.key, self.message)


@dataclass(frozen=True)
class DaemonConfig:
    """What ``supervisor daemon`` runs with; the defaults work as root out of the box."""

    containerd_address: str | None = None
    namespace: str = "supervisor"
    state_dir: Path = Path("/var/lib/containerd-supervisor")
    log_dir: Path = Path("/var/log/containerd-supervisor")
    definitions_dir: Path = Path("/etc/containerd-supervisor/containers")
    control_socket: Path = Path("/run/containerd-supervisor/control.sock")
    control_group: str | None = None
    log_level: str = "info"
    log_max_bytes: int = 10 * _MIB
    log_max_files: int = 5
    stop_containers_on_exit: bool = False
    containerd_binary: str = "containerd"
    #: Where Prometheus scrapes ``/metrics``: (host, port), or a unix socket path.
    metrics_address: tuple[str, int] | Path | None = None
    #: A new container's network when it names none.
    default_network: str = "bridge"
    network_subnet: str = DEFAULT_SUBNET
    network_pool: str = DEFAULT_POOL
    cni_path: tuple[Path, ...] = DEFAULT_PLUGIN_DIRS
    #: Registries pulled from over plain http (loopback ones always are).
    insecure_registries: tuple[str, ...] = ()
    #: The most containers one shim group takes (see ._groups).
    max_shim_group: int = DEFAULT_MAX_MEMBERS

    @property
    def fifo_dir(self) -> Path:
        """Where the stdio fifos of the containers' tasks live."""
        return self.state_dir / "fifo"

    @property
    def managed(self) -> bool:
        """Whether the daemon runs its own containerd (no address was configured)."""
        return self.containerd_address is None


def load_config(path: Path | None) -> DaemonConfig:
    """Read the daemon's config file; ``None`` gives the defaults.

    Raises :class:`ConfigError` naming the file and the dotted key at fault.
    """
    if path is None:
        return DaemonConfig()
    try:
        top = _Table(_read_toml(path), known=_TOP_KEYS)
        containerd = top.table("containerd", known=("address", "binary"))
        control = top.table("control", known=("socket", "group"))
        logs = top.table("logs", known=("max_size", "max_files"))
        metrics = top.table("metrics", known=("address",))
        network = top.table("network", known=("default", "subnet", "pool", "cni_path"))
        images = top.table("images", known=("insecure_registries",))
        runtime = top.table("runtime", known=("max_shim_group",))
        default = DaemonConfig()
        return DaemonConfig(
            containerd_address=_address(containerd),
            namespace=_namespace(top, default.namespace),
            state_dir=top.absolute_path("state_dir", default.state_dir),
            log_dir=top.absolute_path("log_dir", default.log_dir),
            definitions_dir=top.absolute_path("definitions_dir", default.definitions_dir),
            control_socket=control.absolute_path("socket", default.control_socket),
            control_group=_group(control),
            log_level=_log_level(top, default.log_level),
            log_max_bytes=logs.size("max_size", default.log_max_bytes),
            log_max_files=_max_files(logs, default.log_max_files),
            stop_containers_on_exit=top.boolean(
                "stop_containers_on_exit", default.stop_containers_on_exit
            ),
            containerd_binary=_binary(containerd, default.containerd_binary),
            metrics_address=_metrics_address(metrics),
            default_network=_default_network(network, default.default_network),
            network_subnet=_subnet(network, "subnet", default.network_subnet),
            network_pool=_subnet(network, "pool", default.network_pool),
            cni_path=_cni_path(network, default.cni_path),
            insecure_registries=_registries(images),
            max_shim_group=_max_shim_group(runtime, default.max_shim_group),
        )
    except _Invalid as exc:
        raise ConfigError(path, exc.key, exc.message) from None
    except _Unreadable as exc:
        raise ConfigError(path, "", exc.message) from exc.__cause__


_TOP_KEYS = (
    "namespace",
    "state_dir",
    "log_dir",
    "definitions_dir",
    "log_level",
    "stop_containers_on_exit",
    "containerd",
    "control",
    "logs",
    "metrics",
    "network",
    "images",
    "runtime",
)


def _max_shim_group(runtime: _Table, default: int) -> int:
    value = runtime.integer("max_shim_group", default)
    if not 1 <= value <= MAX_MEMBERS_LIMIT:
        runtime.fail("max_shim_group", f"must be from 1 to {MAX_MEMBERS_LIMIT}, not {value}")
    return value


def _registries(images: _Table) -> tuple[str, ...]:
    hosts = images.strings("insecure_registries") or []
    for index, host in enumerate(hosts):
        if not host or "/" in host or any(c.isspace() for c in host):
            images.fail(f"insecure_registries[{index}]", f"{host!r} is not a host[:port]")
    return tuple(hosts)


def _default_network(network: _Table, default: str) -> str:
    value = network.string("default", default)
    try:
        Mode.parse(value)
    except InvalidArgument as exc:
        network.fail("default", str(exc))
    if value.startswith("container:"):
        network.fail("default", "must be bridge, none, host or a network's name")
    return value


def _subnet(network: _Table, key: str, default: str) -> str:
    value = network.string(key, default)
    try:
        parse_subnet(value)
    except InvalidArgument as exc:
        network.fail(key, str(exc))
    return value


def _cni_path(network: _Table, default: tuple[Path, ...]) -> tuple[Path, ...]:
    dirs = network.strings("cni_path")
    if dirs is None:
        return default
    if not dirs or not all(d.startswith("/") for d in dirs):
        network.fail("cni_path", "must be a non-empty array of absolute paths")
    return tuple(Path(d) for d in dirs)


def _metrics_address(metrics: _Table) -> tuple[str, int] | Path | None:
    address = metrics.string("address", None)
    if address is None:
        return None
    path = address.removeprefix("unix:").removeprefix("//")
    if path.startswith("/"):
        if "\0" in path:
            metrics.fail("address", "a socket path cannot hold a NUL")
        return Path(path)
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]  # [::1]:9323
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())
        or any(c.isspace() or c in "/[]" for c in host)
        or (":" in host) != bracketed
    ):
        metrics.fail("address", f"{address!r} is not HOST:PORT or unix:/PATH")
    if not 0 < int(port) < 65536:
        metrics.fail("address", f"port {port} is not between 1 and 65535")
    return host, int(port)


def _address(containerd: _Table) -> str | None:
    address = containerd.string("address", None)
    if address is None:
        return None
    path = address.removeprefix("unix://")
    if not path.startswith("/"):
        containerd.fail("address", f"{address!r} must be an absolute socket path")
    return path


def _binary(containerd: _Table, default: str) -> str:
    binary = containerd.string("binary", default)
    if not binary or ("/" in binary and not binary.startswith("/")):
        containerd.fail("binary", f"{binary!r} must be a command name or an absolute path")
    return binary


def _namespace(top: _Table, default: str) -> str:
    namespace = top.string("namespace", default)
    try:
        return validate_id(namespace, "namespace")
    except InvalidArgument as exc:
        top.fail("namespace", str(exc))


def _group(control: _Table) -> str | None:
    group = control.string("group", None)
    if group is not None and not group:
        control.fail("group", "must not be empty")
    return group


def _log_level(top: _Table, default: str) -> str:
    level = top.string("log_level", default)
    if level.lower() not in LOG_LEVELS:
        top.fail("log_level", f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    return level.lower()


def _max_files(logs: _Table, default: int) -> int:
    count = logs.integer("max_files", default)
    if count < 1:
        logs.fail("max_files", f"must be at least 1, not {count}")
    return count


# What follows is shared with the container definitions.


def _located(path: Path, key: str, message: str) -> str:
    """One line, whatever the file name or the key holds (a newline, a NUL...)."""
    return one_line(f"{path}: {key}: {message}" if key else f"{path}: {message}")


def _short(value: object) -> str:
    """A value for a message: its repr, cut when long (a 4000-digit integer)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} characters)"


class _Invalid(Exception):
    """One key's value is wrong; the loader adds the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message


class _Unreadable(Exception):
    """The file cannot be read or is not TOML."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; raises ``_Unreadable`` with the parser's line and column."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Unreadable(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except ValueError as exc:  # TOMLDecodeError, or an integer of over 4300 digits
        raise _Unreadable(f"invalid TOML: {exc}") from exc


_TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


def _describe(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"


class _Table:
    """Typed access to one TOML table; every complaint names the dotted key."""

    def __init__(self, data: Mapping[str, Any], known: tuple[str, ...], prefix: str = "") -> None:
        self._data = data
        self._prefix = prefix
        for name in data:
            if name not in known:
                self.fail(name or '""', "unknown key")

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def fail(self, name: str, message: str) -> NoReturn:
        raise _Invalid(self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self._data

    def get(self, name: str, kind: type | tuple[type, ...], what: str) -> Any:
        """The value, ``None`` if absent; ``what`` names the expected type in the complaint."""
        value = self._data.get(name)
        if value is not None and (
            not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
        ):
            self.fail(name, f"must be {what}, not {_describe(value)}")
        return value

    def table(self, name: str, known: tuple[str, ...]) -> _Table:
        data = self.get(name, dict, "a table")
        return _Table(data or {}, known, prefix=f"{self.key(name)}.")

    def tables(self, name: str, known: tuple[str, ...]) -> list[_Table]:
        items = self.get(name, list, "an array of tables") or []
        out = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                self.fail(f"{name}[{index}]", f"must be a table, not {_describe(item)}")
            out.append(_Table(item, known, prefix=f"{self.key(name)}[{index}]."))
        return out

    def string_map(self, name: str) -> dict[str, str]:
        data: dict[str, Any] = self.get(name, dict, "a table of strings") or {}
        for item, value in data.items():
            if not isinstance(value, str):
                self.fail(f"{name}.{item}", f"must be a string, not {_describe(value)}")
        return dict(data)

    def strings(self, name: str) -> list[str] | None:
        items: list[Any] | None = self.get(name, list, "an array of strings")
        if items is None:
            return None
        for index, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(f"{name}[{index}]", f"must be a string, not {_describe(item)}")
        return list(items)

    def string(self, name: str, default: _D) -> str | _D:
        value: str | None = self.get(name, str, "a string")
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value: bool | None = self.get(name, bool, "a boolean")
        return default if value is None else value

    def integer(self, name: str, default: _D) -> int | _D:
        value: int | None = self.get(name, int, "an integer")
        if value is not None and not -MAX_INT <= value <= MAX_INT:
            self.fail(name, f"{_short(value)} is out of range (at most {MAX_INT} either way)")
        return default if value is None else value

    def positive_number(
        self, name: str, default: _D, minimum: float = 0.0, maximum: float = math.inf
    ) -> float | _D:
        """A finite number above ``minimum`` (or at it, when it is not 0), up to ``maximum``."""
        value: float | None = self.get(name, (int, float), "a number")
        if value is None:
            return default
        try:
            number = float(value)
        except OverflowError:  # an integer past any float
            number = math.inf
        if not (math.isfinite(number) and number > 0):
            self.fail(name, f"must be a positive number, not {_short(value)}")
        if not minimum <= number <= maximum:
            self.fail(name, f"must be from {minimum:g} to {maximum:g}, not {_short(value)}")
        return number

    def absolute_path(self, name: str, default: _D) -> Path | _D:
        value = self.string(name, None)
        if value is None:
            return default
        if not value.startswith("/"):
            self.fail(name, f"{value!r} must be an absolute path")
        return Path(value)

    def size(self, name: str, default: _D) -> int | _D:
        value: int | str | None = self.get(name, (int, str), "an integer or a size like '10m'")
        if value is None:
            return default
        try:
            return parse_size(value)
        except InvalidArgument as exc:
            self.fail(name, str(exc))
