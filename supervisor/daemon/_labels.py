"""The labels the daemon keeps its state in, on each of its containers."""

from __future__ import annotations

import functools
import json
import signal
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from ..client import ContainerInfo
from ..net import parse_port
from ._definitions import ContainerDefinition
from ._policy import RestartPolicy

PREFIX = "io.containerd-supervisor/"
MANAGED = PREFIX + "managed"
HASH = PREFIX + "definition-hash"
POLICY = PREFIX + "restart-policy"
STOP_SIGNAL = PREFIX + "stop-signal"
STOP_TIMEOUT = PREFIX + "stop-timeout"
STARTED_AT = PREFIX + "started-at"
FINISHED_AT = PREFIX + "finished-at"
EXIT_CODE = PREFIX + "exit-code"
#: The pid of the task whose start was recorded last, and of the last recorded exit.
STARTED_PID = PREFIX + "started-pid"
EXIT_PID = PREFIX + "exit-pid"
#: When the decided (re)start is due, in epoch seconds; absent when none is pending.
NEXT_START = PREFIX + "next-start"
LOG_PATH = PREFIX + "log-path"
SOURCE = PREFIX + "source"
#: The definition file a container was made from, so that a file that stops loading keeps
#: its container even when the file's name is not the container's id.
DEFINITION_FILE = PREFIX + "definition-file"
COMMAND = PREFIX + "command"
ROOTFS = PREFIX + "rootfs"
REMOVE_ON_EXIT = PREFIX + "remove-on-exit"
#: The network a container was made on (see supervisor.net.Mode) and its published ports.
NETWORK = PREFIX + "network"
PORTS = PREFIX + "ports"
#: "true" or "false"; containers made before it have their spec read instead.
TERMINAL = PREFIX + "terminal"
#: The shim group a container was made in (its spec's annotation says the same, namespaced).
SHIM_GROUP = PREFIX + "shim-group"
MANAGED_FILTER = f'labels."{MANAGED}"==true'


def policy(labels: Mapping[str, str]) -> RestartPolicy:
    return _parse_policy(labels.get(POLICY, "no"))


# Parsed once per distinct text: a restore reads 1000 containers' labels, most
# alike. What they return is immutable.
_parse_policy = functools.lru_cache(maxsize=256)(RestartPolicy.parse)


@functools.lru_cache(maxsize=1024)
def _json_tuple(text: str) -> tuple[Any, ...]:
    return tuple(json.loads(text) or ())


@functools.lru_cache(maxsize=256)
def _path(text: str) -> Path:
    return Path(text)


def timestamp(text: str | None) -> float | None:
    """A start or finish time from our labels (epoch seconds or ISO 8601)."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def definition_from_labels(info: ContainerInfo) -> ContainerDefinition:
    """Rebuild what the daemon needs of a container made through the API."""
    labels = info.labels
    spec = info.spec
    return ContainerDefinition(
        id=info.id,
        rootfs=None
        if info.image
        else _path(labels.get(ROOTFS) or spec.get("root", {}).get("path", "/")),
        image=info.image,
        command=_json_tuple(labels.get(COMMAND, "[]")) or ("true",),
        restart=policy(labels),
        stop_signal=int(labels.get(STOP_SIGNAL, signal.SIGTERM)),
        stop_timeout=float(labels.get(STOP_TIMEOUT, 10.0)),
        # From the label: reading the spec parses its JSON (~0.2 ms a container
        # at every start of the daemon).
        terminal=labels[TERMINAL] == "true"
        if TERMINAL in labels
        else bool(spec.get("process", {}).get("terminal", False)),
        network=labels.get(NETWORK) or None,
        ports=tuple(parse_port(p) for p in _json_tuple(labels.get(PORTS) or "[]")),
        shim_group=labels.get(SHIM_GROUP, ""),
        source=Path("<api>"),
    )
