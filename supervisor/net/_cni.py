"""A small runner of CNI plugins (the CNI spec 1.0.0, "Execution protocol"):
one plugin is one process, its network config on stdin and its result or
error as JSON on stdout; a chain is ADD in order with each result passed on
as ``prevResult``, DEL in reverse order."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..errors import SupervisorError

#: Where Debian's containernetworking-plugins puts them.
DEFAULT_PLUGIN_DIRS: tuple[Path, ...] = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
CNI_VERSION = "1.0.0"
#: Bound on one plugin run (a bridge ADD takes about 20 ms; iptables waits for its lock).
PLUGIN_TIMEOUT = 30.0
#: Bound on what a plugin may print.
MAX_OUTPUT = 1 << 20


class CniError(SupervisorError):
    """A CNI plugin failed: its error code, message and details."""

    def __init__(self, plugin: str, command: str, message: str, code: int = 0) -> None:
        super().__init__(f"{plugin} {command}: {message}")
        self.plugin = plugin
        self.command = command
        self.code = code


@dataclass(frozen=True, slots=True)
class Invocation:
    """What a chain is run for: the container, its namespace and interface."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    runtime_config: Mapping[str, Any] | None = None


def find_plugin(name: str, dirs: Sequence[Path] = DEFAULT_PLUGIN_DIRS) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise CniError(name, "find", "not a plugin name")
    for directory in dirs:
        path = directory / name
        if os.access(path, os.X_OK):
            return path
    where = ", ".join(str(d) for d in dirs)
    raise CniError(name, "find", f"no such plugin in {where} "
                   "(apt-get install containernetworking-plugins)")  # fmt: skip


async def run_plugin(
    plugin: Mapping[str, Any],
    command: str,
    call: Invocation,
    *,
    name: str,
    prev_result: Mapping[str, Any] | None = None,
    dirs: Sequence[Path] = DEFAULT_PLUGIN_DIRS,
) -> dict[str, Any]:
    """Run one plugin of network ``name``; its result ({} for DEL)."""
    kind = str(plugin.get("type", ""))
    binary = find_plugin(kind, dirs)
    conf: dict[str, Any] = {"cniVersion": CNI_VERSION, "name": name, **plugin}
    if prev_result is not None:
        conf["prevResult"] = prev_result
    if call.runtime_config:
        wanted = conf.get("capabilities") or {}
        runtime = {k: v for k, v in call.runtime_config.items() if wanted.get(k)}
        if runtime:
            conf["runtimeConfig"] = runtime
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": call.container_id,
        "CNI_NETNS": call.netns,
        "CNI_IFNAME": call.ifname,
        "CNI_PATH": os.pathsep.join(str(d) for d in dirs),
    }
    # In a worker thread: an asyncio child process costs ~6 ms more a plugin
    # (bench/network.py compares the chain with the plugins run bare).
    data = json.dumps(conf).encode()

    def execute() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(binary)], input=data, env=env, capture_output=True,
                              timeout=PLUGIN_TIMEOUT, check=False)  # fmt: skip

    try:
        done = await anyio.to_thread.run_sync(execute)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"CNI plugin {kind} {command} took over {PLUGIN_TIMEOUT:g}s") from None
    out = done.stdout[:MAX_OUTPUT]
    if done.returncode != 0:
        raise _error(kind, command, out, done.stderr, done.returncode)
    if command != "ADD":
        return {}
    try:
        result = json.loads(out)
    except ValueError:
        raise CniError(kind, command, f"printed no JSON result: {out[:200]!r}") from None
    if not isinstance(result, dict):
        raise CniError(kind, command, "printed a result that is not an object")
    return result


def _error(kind: str, command: str, out: bytes, err: bytes, status: int) -> CniError:
    try:
        data = json.loads(out)
        message = str(data.get("msg") or "failed")
        if data.get("details"):
            message += f": {data['details']}"
        return CniError(kind, command, message, int(data.get("code") or 0))
    except (ValueError, AttributeError, TypeError):
        text = (err or out).decode(errors="replace").strip()[-300:]
        return CniError(kind, command, text or f"exit status {status}")


async def add_chain(
    name: str,
    plugins: Sequence[Mapping[str, Any]],
    call: Invocation,
    *,
    dirs: Sequence[Path] = DEFAULT_PLUGIN_DIRS,
) -> dict[str, Any]:
    """ADD every plugin of a network in order; the last result. On a failure
    the plugins already added are deleted again (in reverse order)."""
    result: dict[str, Any] | None = None
    for index, plugin in enumerate(plugins):
        try:
            result = await run_plugin(plugin, "ADD", call, name=name, prev_result=result,
                                      dirs=dirs)  # fmt: skip
        except BaseException:
            with anyio.CancelScope(shield=True):
                await del_chain(name, plugins[: index + 1], call, dirs=dirs, prev_result=result)
            raise
    return result or {}


async def del_chain(
    name: str,
    plugins: Sequence[Mapping[str, Any]],
    call: Invocation,
    *,
    dirs: Sequence[Path] = DEFAULT_PLUGIN_DIRS,
    prev_result: Mapping[str, Any] | None = None,
) -> list[CniError]:
    """DEL every plugin in reverse order; every plugin gets its DEL even when
    one fails. The failures, if any."""
    errors: list[CniError] = []
    for plugin in reversed(plugins):
        try:
            await run_plugin(plugin, "DEL", call, name=name, prev_result=prev_result, dirs=dirs)
        except CniError as exc:
            errors.append(exc)
        except TimeoutError:
            errors.append(CniError(str(plugin.get("type")), "DEL", "timed out"))
    return errors
