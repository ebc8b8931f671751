"""The CLI's verbs: calls on the daemon's control API.

They go through the CLI's own small synchronous client (``_h2client``) and
message codec (``_messages``): a call costs a few milliseconds on top of
Python's start-up, where asyncio, grpclib and betterproto2 cost several times
that. Only an attached ``run`` (stdin, resizes, signals) and ``exec`` use the
async grpclib client, in ``_attached``, imported by those alone.

Deadlines: a call that should be quick gives up after :data:`DEADLINE` (the
CLI then says "timed out"); ``stop`` without ``-t`` (the container's own stop
timeout applies), ``apply``, ``reload``, ``logs`` and ``events`` have none.
Every call also fails when the daemon stops answering at all (see
``_h2client``: it is sent a PING after some silence).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from ._h2client import Channel
from ._messages import Message, decode, new
from .errors import SupervisorError, Unavailable, one_line

TYPE_CHECKING = False  # typing is not imported at run time: the CLI's start-up
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any

_SERVICE = "/supervisor.v1.Control/"
#: Seconds a quick call may take (a `stop -t T` adds T).
DEADLINE = 300.0
#: `run -d` of an image may pull it first (the daemon bounds a pull at 30 min).
RUN_DEADLINE = 1900.0
#: Calls in flight at once when a verb is given several ids.
IN_FLIGHT = 8

#: docker's exit codes for its own errors (see cli.py).
CLI_ERROR, CANNOT_RUN, NOT_FOUND = 125, 126, 127

# How runc says a container's command could not be run, in a start error.
_NOT_FOUND = re.compile(r'exec: "[^"]*": (executable file not found|stat [^:]*: no such file)')
_CANNOT_RUN = re.compile(r'exec: "[^"]*": (permission denied|is a directory|exec format error)')

_INT64_MAX = (1 << 63) - 1


def error_code(error: BaseException) -> int:
    """125 for an error of the CLI or the daemon; 127 and 126, as docker, when the
    container's command is not found or cannot be run."""
    text = str(error)
    if _NOT_FOUND.search(text):
        return NOT_FOUND
    if _CANNOT_RUN.search(text):
        return CANNOT_RUN
    return CLI_ERROR


class _Failed(Exception):
    """A call failed: the daemon's error (or the connection's), carried out of
    the verb so that it is told apart from the verb's own checks."""

    def __init__(self, error: SupervisorError) -> None:
        super().__init__(str(error))
        self.error = error


def run_command(args: argparse.Namespace) -> int:
    """Run one CLI verb; errors of the daemon and the connection become one line
    on stderr and exit code 125 (126, 127 for a command that cannot be run or is
    not found). The verb's own checks raise SupervisorError (cli.main: 125)."""
    path = args.socket
    if args.command == "login":
        return login(args)
    if args.command == "exec" or (args.command == "run" and not args.detach):
        from ._attached import VERBS as ATTACHED

        return ATTACHED[args.command](args)
    try:
        with Channel(path) as channel:
            return VERBS[args.command](channel, args)
    except _Failed as failed:
        error: Exception = failed.error
    except TimeoutError:
        raise  # cli.main: "timed out"
    except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError,
            NotADirectoryError) as exc:  # fmt: skip
        error = Unavailable(f"cannot reach the daemon at {path} ({_why(exc)}); is it running?")
    except PermissionError:
        error = SupervisorError(f"permission denied on {path} (root or its group only)")
    except OSError as exc:  # e.g. "AF_UNIX path too long"
        error = SupervisorError(f"{_why(exc)} (control socket {path})")
    verb = " ".join([args.command, *[getattr(args, f"{args.command}_command", "") or ""]]).strip()
    print(one_line(f"supervisor {verb}: {error}"), file=sys.stderr)
    return error_code(error)


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _unary(
    channel: Channel, method: str, request: Message, reply: str, timeout: float | None = DEADLINE
) -> Message:
    data = bytes(request)  # before the call: a value out of range is the verb's own error
    try:
        return decode(reply, channel.unary(_SERVICE + method, data, timeout=timeout))
    except SupervisorError as exc:
        raise _Failed(exc) from None


def _stream(channel: Channel, method: str, request: Message, reply: str) -> Iterator[Message]:
    data = bytes(request)
    try:
        for message in channel.stream(_SERVICE + method, data):
            yield decode(reply, message)
    except SupervisorError as exc:
        raise _Failed(exc) from None


def _each(
    channel: Channel,
    args: argparse.Namespace,
    method: str,
    request: Callable[[str], Message],
    timeout: float | None = DEADLINE,
) -> int:
    """``method`` on every id, :data:`IN_FLIGHT` at a time; one line per id, in
    their order: the id when it worked, the error on stderr when not."""
    ids: list[str] = args.ids
    requests = [bytes(request(cid)) for cid in ids]
    failed = 0
    try:
        replies = channel.unary_many(
            _SERVICE + method, requests, in_flight=IN_FLIGHT, timeout=timeout
        )
        for cid, reply in zip(ids, replies, strict=True):
            if isinstance(reply, SupervisorError):
                print(one_line(f"supervisor {args.command}: {reply}"), file=sys.stderr)
                failed += 1
            else:
                print(cid)
    except SupervisorError as exc:  # the connection, not one call
        raise _Failed(exc) from None
    return CLI_ERROR if failed else 0


def _time(nanos: int) -> datetime | None:
    """The API's Unix nanoseconds (0: none) as a datetime, to the microsecond."""
    if nanos <= 0:
        return None
    from datetime import UTC, datetime, timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000)


def _iso(nanos: int) -> str | None:
    when = _time(nanos)
    return None if when is None else when.isoformat()


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SupervisorError(f"{what} {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def _size(text: str | None) -> int:
    if not text:
        return 0
    from ._units import parse_size

    return parse_size(text)


def command_of(args: argparse.Namespace) -> list[str]:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    return command


def run_request(args: argparse.Namespace) -> Message:
    """The RunInput that starts ``run``'s container."""
    command = command_of(args)
    image = ""
    if not args.rootfs:
        if not command:
            raise SupervisorError("an image is needed: supervisor run IMAGE [CMD...] "
                                  "(or --rootfs DIR CMD...)")  # fmt: skip
        image, command = command[0], command[1:]
    elif not command:
        raise SupervisorError("a command is needed: supervisor run --rootfs DIR CMD [ARG...]")
    if (args.entrypoint is not None or args.pull) and not image:
        raise SupervisorError("--entrypoint and --pull apply to an image, not to --rootfs")
    entrypoint = [args.entrypoint] if args.entrypoint else []
    definition = new(
        "Definition",
        id=args.name,
        rootfs=os.path.abspath(args.rootfs) if args.rootfs else "",
        image=image,
        pull=args.pull,
        entrypoint=entrypoint,
        has_entrypoint=args.entrypoint is not None,
        command=command,
        env=_pairs(args.env, "environment entry"),
        user=args.user,
        cwd=args.workdir,
        restart=args.restart,
        stop_signal=args.stop_signal,
        stop_timeout=args.stop_timeout,
        memory=_size(args.memory),
        cpus=args.cpus or 0.0,
        pids=args.pids or 0,
        labels=_pairs(args.label, "label"),
        terminal=args.tty,
        stdin=args.interactive,
        network=args.network,
        ports=args.publish,
        shim_group=args.shim_group,
    )
    request = new("RunRequest", definition=definition, attach=not args.detach, remove=args.rm)
    return new("RunInput", request=request)


def _info_dict(info: Message) -> dict[str, Any]:
    return {
        "id": info.id,
        "status": info.status,
        "pid": info.pid,
        "restart": info.restart,
        "restart_count": info.restart_count,
        "exit_code": info.exit_code if info.exited else None,
        "started_at": _iso(info.started_at_unix_nanos),
        "finished_at": _iso(info.finished_at_unix_nanos),
        "source": info.source,
        "command": list(info.command),
        "rootfs": info.rootfs,
        "labels": dict(info.labels),
        "manually_stopped": info.manually_stopped,
        "oom_kills": info.oom_kills,
        "log_path": info.log_path,
        "problem": info.problem or None,
        "image": info.image or None,
        "network": info.network or None,
        "address": info.address or None,
        "ports": list(info.ports),
        "shim_group": info.shim_group or None,
    }


def _short_image(name: str) -> str:
    """An image as docker shows it: busybox:1.36 for docker.io/library/busybox:1.36."""
    return name.removeprefix("docker.io/library/").removeprefix("docker.io/") or "-"


def _ports_text(ports: Sequence[str]) -> str:
    """Published ports as docker prints them: 127.0.0.1:8080->80/tcp."""
    out = []
    for port in ports:
        body, _, protocol = port.partition("/")
        host, _, container = body.rpartition(":")
        out.append(f"{host if ':' in host else '0.0.0.0:' + host}->{container}/{protocol}")
    return ", ".join(out)


# -- the verbs ------------------------------------------------------------------------------


def _run(channel: Channel, args: argparse.Namespace) -> int:
    """``run -d`` (an attached run is in _attached): the request and the first reply."""
    first = _unary(channel, "Run", run_request(args), "RunOutput", timeout=RUN_DEADLINE)
    if first.started is None:
        raise SupervisorError("the daemon did not start the container")
    print(first.started.id)
    return 0


def _ps(channel: Channel, args: argparse.Namespace) -> int:
    reply = _unary(channel, "List", new("ListRequest", all=args.all), "ListResponse")
    if args.json:
        import json

        print(json.dumps([_info_dict(c) for c in reply.containers], indent=2))
        return 0
    rows = [("ID", "STATUS", "PID", "RESTART", "RESTARTS", "ADDRESS", "PORTS", "IMAGE", "COMMAND")]
    problems = []
    for c in reply.containers:
        get = c.received().get  # (1000 rows: attribute access per field cost ~30 ms)
        status = get("status", "")
        if status in ("exited", "stopped") and get("exited"):
            status = f"exited ({get('exit_code', 0)})"
        if get("problem"):
            status += " (!)"
            problems.append(f"(!) {get('id', '')}: {get('problem')}")
        ports = get("ports")
        rows.append((get("id", ""), status, str(get("pid") or "-"), get("restart", ""),
                     str(get("restart_count", 0)), get("address") or "-",
                     _ports_text(ports) if ports else "-", _short_image(get("image", "")),
                     " ".join(get("command", ()))[:40]))  # fmt: skip
    _print_table(rows)
    for line in problems:
        print(line, file=sys.stderr)
    return 0


def _inspect(channel: Channel, args: argparse.Namespace) -> int:
    import json

    requests = [bytes(new("ContainerRef", id=cid)) for cid in args.ids]
    infos = []
    try:
        for reply in channel.unary_many(
            _SERVICE + "Inspect", requests, in_flight=IN_FLIGHT, timeout=DEADLINE
        ):
            if isinstance(reply, SupervisorError):
                raise reply  # the first failure fails the verb, as it always has
            infos.append(_info_dict(decode("ContainerInfo", reply)))
    except SupervisorError as exc:
        raise _Failed(exc) from None
    print(json.dumps(infos, indent=2))
    return 0


def _since(text: str | None) -> int:
    """``--since`` as Unix nanoseconds; 0 for none (also for a time before 1970)."""
    if not text:
        return 0
    from datetime import UTC, datetime, timedelta

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        try:
            when = datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * unit)
        except OverflowError:  # before year 1
            raise SupervisorError(f"--since {text!r} is too long ago") from None
    else:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise SupervisorError(
                f"--since {text!r}: use RFC 3339 or a duration like 10s, 5m"
            ) from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    nanos = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    return min(max(nanos, 0), _INT64_MAX)


def _logs(channel: Channel, args: argparse.Namespace) -> int:
    request = new(
        "LogsRequest",
        id=args.id,
        follow=args.follow,
        tail=args.tail or 0,
        has_tail=args.tail is not None,
        since_unix_nanos=_since(args.since),
    )
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for record in _stream(channel, "Logs", request, "LogRecord"):
        target = err if record.stream == "stderr" else out
        if args.timestamps and record.time_unix_nanos:
            target.write(f"{_iso(record.time_unix_nanos)} ".encode())
        target.write(record.line)
        target.flush()
    return 0


def _stop(channel: Channel, args: argparse.Namespace) -> int:
    grace = args.time
    # Without -t (or with one too large to add up, or nan) the daemon applies
    # the container's own stop timeout, which we do not know: no deadline.
    timeout = DEADLINE + max(grace, 0.0) if grace is not None and grace < 1e9 else None
    return _each(channel, args, "Stop", lambda cid: new(
        "StopRequest", id=cid, timeout=grace or 0.0, has_timeout=grace is not None),
        timeout=timeout)  # fmt: skip


def _start(channel: Channel, args: argparse.Namespace) -> int:
    return _each(channel, args, "Start", lambda cid: new("ContainerRef", id=cid))


def _kill(channel: Channel, args: argparse.Namespace) -> int:
    return _each(channel, args, "Kill", lambda cid: new("KillRequest", id=cid, signal=args.signal))


def _rm(channel: Channel, args: argparse.Namespace) -> int:
    return _each(channel, args, "Remove",
                 lambda cid: new("RemoveRequest", id=cid, force=args.force))  # fmt: skip


def _pause(channel: Channel, args: argparse.Namespace) -> int:
    return _each(channel, args, "Pause", lambda cid: new("ContainerRef", id=cid))


def _unpause(channel: Channel, args: argparse.Namespace) -> int:
    return _each(channel, args, "Resume", lambda cid: new("ContainerRef", id=cid))


def _stats(channel: Channel, args: argparse.Namespace) -> int:
    first, failed = _read_stats(channel, list(args.ids), args.command)
    interval = args.interval if args.interval == args.interval else 0.0  # nan
    time.sleep(min(max(0.0, interval), 3600.0))  # CPU % is a rate: two readings
    second, _ = _read_stats(channel, list(first), args.command, quiet=True)
    rows = []
    for cid, now in second.items():
        before = first[cid]
        wall = (
            (now.read_at_unix_nanos - before.read_at_unix_nanos) / 1e9
            if now.read_at_unix_nanos and before.read_at_unix_nanos
            else 0
        )
        cpu = (now.cpu_total_ns - before.cpu_total_ns) / 1e9 / wall * 100 if wall > 0 else 0.0
        rows.append((now, max(cpu, 0.0)))
    if args.json:
        import json

        print(json.dumps([{**_stats_dict(r), "cpu_percent": round(cpu, 2)} for r, cpu in rows],
                         indent=2))  # fmt: skip
    else:
        host = _host_memory()
        table = [("ID", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "PIDS")]
        for r, cpu in rows:
            limit = r.memory_limit or host
            share = f"{r.memory_usage / limit * 100:.2f}%" if limit else "-"
            net = f"{_human(r.net_rx_bytes)} / {_human(r.net_tx_bytes)}" if r.has_network else "-"
            table.append((r.id, f"{cpu:.2f}%", f"{_human(r.memory_usage)} / {_human(limit)}",
                          share, net, str(r.pids_current)))  # fmt: skip
        _print_table(table)
    return CLI_ERROR if failed else 0


def _read_stats(
    channel: Channel, ids: list[str], command: str, *, quiet: bool = False
) -> tuple[dict[str, Message], bool]:
    """One reading of ``ids`` (all running containers when empty), in one call."""
    if not ids and quiet:
        return {}, False
    reply = _unary(channel, "StatsAll", new("StatsRequest", ids=ids), "StatsList")
    if not quiet:
        for cid in reply.not_running:
            print(f"supervisor {command}: container {cid} is not running", file=sys.stderr)
    return {r.id: r for r in reply.stats}, bool(reply.not_running)


def _stats_dict(r: Message) -> dict[str, Any]:
    return {
        "id": r.id,
        "cpu_total_ns": r.cpu_total_ns,
        "memory_usage": r.memory_usage,
        "memory_limit": r.memory_limit or None,
        "pids_current": r.pids_current,
        "pids_limit": r.pids_limit or None,
        "oom_kills": r.oom_kills,
        "net_rx_bytes": r.net_rx_bytes if r.has_network else None,
        "net_tx_bytes": r.net_tx_bytes if r.has_network else None,
    }


def _human(size: float) -> str:
    """Bytes in binary units, as docker prints them: 1.5MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.4g}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _host_memory() -> int:
    """The host's memory: the limit of a container without one, as docker shows it."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths).format
    sys.stdout.write("".join(line(*row).rstrip() + "\n" for row in rows))


def _events(channel: Channel, args: argparse.Namespace) -> int:
    import json

    for event in _stream(channel, "Events", new("EventsRequest"), "Event"):
        record = {"time": _iso(event.time_unix_nanos), "id": event.container_id,
                  "type": event.type}  # fmt: skip
        if event.exec_id:
            record["exec_id"] = event.exec_id
        if event.pid:
            record["pid"] = event.pid
        if event.has_exit_code:
            record["exit_code"] = event.exit_code
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            extra = f" exit={event.exit_code}" if event.has_exit_code else ""
            print(f"{record['time']} {event.container_id} {event.type}{extra}", flush=True)
    return 0


def _apply_result(reply: Message) -> int:
    for verb, ids in (("created", reply.created), ("replaced", reply.replaced),
                      ("removed", reply.removed)):  # fmt: skip
        for cid in ids:
            print(f"{verb} {cid}")
    for error in reply.errors:
        print(f"error: {error}", file=sys.stderr)
    return CLI_ERROR if reply.errors else 0


def _apply(channel: Channel, args: argparse.Namespace) -> int:
    request = new("ApplyRequest", directory=os.path.abspath(args.directory))
    return _apply_result(_unary(channel, "Apply", request, "ApplyResponse", timeout=None))


def _reload(channel: Channel, args: argparse.Namespace) -> int:
    reply = _unary(channel, "Reload", new("ReloadRequest"), "ApplyResponse", timeout=None)
    return _apply_result(reply)


def _version(channel: Channel, args: argparse.Namespace) -> int:
    from . import __version__

    v = _unary(channel, "Version", new("VersionRequest"), "VersionResponse")
    print(f"client:     {__version__}")
    print(f"daemon:     {v.version} (namespace {v.namespace})")
    print(f"containerd: {v.containerd_version} ({v.containerd_revision})")
    return 0


def _pull(channel: Channel, args: argparse.Namespace) -> int:
    request = new("PullRequest", ref=args.ref, platform=args.platform)
    show = None if args.quiet or not sys.stdout.isatty() else _Progress()
    final = None
    try:
        for update in _stream(channel, "Pull", request, "PullProgress"):
            if update.done_image:
                final = update
            elif show is not None:
                show.update(update)
    finally:
        if show is not None:
            show.close()
    if final is None:
        raise SupervisorError("the daemon ended the pull without an image")
    print(final.image if args.quiet else f"{final.image} {final.image_digest}")
    return 0


class _Progress:
    """One line per layer, redrawn in place on a terminal: status, bytes, rate."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[str, int, int, float, float]] = {}
        self.drawn = 0

    def update(self, update: Message) -> None:
        now = time.monotonic()
        began = self.layers.get(update.digest, ("", 0, 0, now, now))[3]
        self.layers[update.digest] = (update.status, update.done, update.total, began, now)
        lines = []
        for digest, (status, done, total, start, last) in self.layers.items():
            rate = done / (last - start) if last > start else 0.0
            size = f"{_human(done)}/{_human(total)}" if total else _human(done)
            lines.append(f"{digest.removeprefix('sha256:')[:12]}: {status:<11} {size:<20} "
                         f"{_human(rate)}/s")  # fmt: skip
        out = "\x1b[F" * self.drawn + "".join(f"\x1b[2K{line}\n" for line in lines)
        sys.stdout.write(out)
        sys.stdout.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        sys.stdout.flush()


def _images(channel: Channel, args: argparse.Namespace) -> int:
    reply = _unary(channel, "ImageList", new("ImageListRequest"), "ImageListResponse")
    if args.quiet:
        for image in reply.images:
            print(image.name)
        return 0
    if args.json:
        import json

        print(json.dumps([{
            "name": i.name, "digest": i.digest, "size": i.size,
            "created": _iso(i.created_unix_nanos), "containers": list(i.containers),
        } for i in reply.images], indent=2))  # fmt: skip
        return 0
    rows = [("IMAGE", "DIGEST", "SIZE", "CREATED", "CONTAINERS")]
    for i in reply.images:
        created = _iso(i.created_unix_nanos) or "-"
        rows.append((_short_image(i.name), i.digest.removeprefix("sha256:")[:12],
                     _human(i.size), created[:19], str(len(i.containers))))  # fmt: skip
    _print_table(rows)
    return 0


def _rmi(channel: Channel, args: argparse.Namespace) -> int:
    failed = False
    for ref in args.refs:
        request = new("ImageRemoveRequest", ref=ref, force=args.force)
        try:
            _unary(channel, "ImageRemove", request, "ImageRemoveResponse")
        except _Failed as exc:
            print(one_line(f"supervisor {args.command}: {exc.error}"), file=sys.stderr)
            failed = True
            continue
        print(ref)
    return CLI_ERROR if failed else 0


def _image(channel: Channel, args: argparse.Namespace) -> int:
    verb = args.image_command
    if verb == "pull":
        return _pull(channel, args)
    if verb == "ls":
        return _images(channel, args)
    if verb == "rm":
        return _rmi(channel, args)
    if verb == "prune":
        reply = _unary(channel, "ImagePrune", new("ImagePruneRequest"), "ImagePruneResponse")
        for name in reply.removed:
            print(name)
        return 0
    if verb == "import":
        request = new("ImageImportRequest", path=os.path.abspath(args.file), name=args.name)
        reply = _unary(channel, "ImageImport", request, "ImageImportResponse", timeout=None)
        for name in reply.names:
            print(name)
        return 0
    request = new("ImageSaveRequest", ref=args.ref, path=os.path.abspath(args.output))
    _unary(channel, "ImageSave", request, "ImageSaveResponse", timeout=None)
    return 0


def login(args: argparse.Namespace) -> int:
    """Store a registry's credentials where the daemon's pulls read them."""
    from .images._auth import Credentials, save_credentials

    password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise SupervisorError("no password on stdin")
    path = save_credentials(args.registry, Credentials(args.username, password), args.config)
    print(f"credentials for {args.registry} saved in {path}")
    return 0


def _network_dict(info: Message) -> dict[str, Any]:
    return {
        "name": info.name,
        "subnet": info.subnet,
        "gateway": info.gateway,
        "bridge": info.bridge,
        "created": _iso(info.created_unix_nanos),
        "containers": {m.id: m.address for m in info.containers},
    }


def _network(channel: Channel, args: argparse.Namespace) -> int:
    verb = args.network_command
    if verb == "create":
        request = new("NetworkCreateRequest", name=args.name, subnet=args.subnet)
        print(_unary(channel, "NetworkCreate", request, "NetworkInfo").name)
        return 0
    if verb == "ls":
        reply = _unary(channel, "NetworkList", new("NetworkListRequest"), "NetworkListResponse")
        rows = [("NAME", "SUBNET", "BRIDGE", "CONTAINERS")]
        rows += [(n.name, n.subnet, n.bridge, str(len(n.containers))) for n in reply.networks]
        _print_table(rows)
        return 0
    method, reply_type = ("NetworkInspect", "NetworkInfo") if verb == "inspect" else (
        "NetworkRemove", "NetworkRemoveResponse")  # fmt: skip
    infos, failed = [], False
    for name in args.names:
        try:
            reply = _unary(channel, method, new("NetworkRef", name=name), reply_type)
        except _Failed as exc:
            print(one_line(f"supervisor network {verb}: {exc.error}"), file=sys.stderr)
            failed = True
            continue
        if verb == "inspect":
            infos.append(_network_dict(reply))
        else:
            print(name)
    if verb == "inspect":
        import json

        print(json.dumps(infos, indent=2))
    return CLI_ERROR if failed else 0


VERBS: dict[str, Callable[[Channel, argparse.Namespace], int]] = {
    "pull": _pull,
    "images": _images,
    "rmi": _rmi,
    "image": _image,
    "network": _network,
    "run": _run,
    "ps": _ps,
    "inspect": _inspect,
    "logs": _logs,
    "stop": _stop,
    "start": _start,
    "kill": _kill,
    "rm": _rm,
    "pause": _pause,
    "unpause": _unpause,
    "stats": _stats,
    "events": _events,
    "apply": _apply,
    "reload": _reload,
    "version": _version,
}
