"""The CLI's verbs: calls on the daemon's control API."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import stat
import struct
import sys
import termios
import tty
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.abc
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ._proto.supervisor import v1 as pb
from ._units import parse_size
from .errors import SupervisorError, Unavailable, from_grpc, one_line

_READ = 65536


#: docker's exit codes for its own errors (see cli.py).
CLI_ERROR, CANNOT_RUN, NOT_FOUND = 125, 126, 127

# How runc says a container's command could not be run, in a start error.
_NOT_FOUND = re.compile(r'exec: "[^"]*": (executable file not found|stat [^:]*: no such file)')
_CANNOT_RUN = re.compile(r'exec: "[^"]*": (permission denied|is a directory|exec format error)')


def error_code(error: BaseException) -> int:
    """125 for an error of the CLI or the daemon; 127 and 126, as docker, when the
    container's command is not found or cannot be run."""
    text = str(error)
    if _NOT_FOUND.search(text):
        return NOT_FOUND
    if _CANNOT_RUN.search(text):
        return CANNOT_RUN
    return CLI_ERROR


async def run_command(args: argparse.Namespace) -> int:
    """Run one CLI verb; errors become one line on stderr and exit code 125 (126,
    127 for a command that cannot be run or is not found)."""
    path = args.socket
    channel = Channel(path=path)
    try:
        stub = pb.ControlStub(channel)
        try:
            try:
                return await VERBS[args.command](stub, channel, args)
            except BaseExceptionGroup as group:  # from an attached call's task group
                raise _first(group) from None
        except GRPCError as exc:
            error: Exception = from_grpc(exc)
        except (
            ConnectionRefusedError,
            ConnectionResetError,
            FileNotFoundError,
            NotADirectoryError,
            StreamTerminatedError,
        ) as exc:
            error = Unavailable(f"cannot reach the daemon at {path} ({_why(exc)}); is it running?")
        except PermissionError:
            error = SupervisorError(f"permission denied on {path} (root or its group only)")
        except OSError as exc:  # e.g. "AF_UNIX path too long"
            error = SupervisorError(f"{_why(exc)} (control socket {path})")
        print(one_line(f"supervisor {args.command}: {error}"), file=sys.stderr)
        return error_code(error)
    finally:
        channel.close()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _absolute(path: str) -> str:
    return os.path.abspath(path)


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


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
    return parse_size(text)


def _info_dict(info: pb.ContainerInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "status": info.status,
        "pid": info.pid,
        "restart": info.restart,
        "restart_count": info.restart_count,
        "exit_code": info.exit_code if info.exited else None,
        "started_at": info.started_at.isoformat() if info.started_at else None,
        "finished_at": info.finished_at.isoformat() if info.finished_at else None,
        "source": info.source,
        "command": list(info.command),
        "rootfs": info.rootfs,
        "labels": dict(info.labels),
        "manually_stopped": info.manually_stopped,
        "oom_kills": info.oom_kills,
        "log_path": info.log_path,
        "problem": info.problem or None,
    }


# -- run, exec: attached streams ------------------------------------------------------------


class _Call:
    def __init__(self) -> None:
        self.code: int | None = None
        self.reset: StreamTerminatedError | None = None

    def result(self) -> int:
        if self.code is not None:
            return self.code
        assert self.reset is not None
        raise self.reset


@contextlib.asynccontextmanager
async def _reset_means_status() -> AsyncIterator[_Call]:
    """grpclib can see the server's reset before the status that preceded it
    (a call refused at once, e.g. an unknown id). Swallow the reset here: the
    request's own exit, outside this block, raises the status when it came."""
    call = _Call()
    try:
        yield call
    except BaseException as exc:
        first = _first(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(first, StreamTerminatedError):
            raise
        call.reset = first


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not os.isatty(0):
        yield
        return
    saved = termios.tcgetattr(0)
    try:
        tty.setraw(0)
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _terminal_size() -> pb.Resize | None:
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
            if rows and cols:
                return pb.Resize(width=cols, height=rows)
    return None


def _size_key(size: pb.Resize | None) -> tuple[int, int] | None:
    return None if size is None else (size.width, size.height)


async def _stdin_chunks() -> AsyncIterator[bytes]:
    fd = sys.stdin.fileno()
    # stdin stays blocking (a terminal shares it with stdout): wait until it is
    # readable, then one read returns what is there. Files can't be polled.
    mode = os.fstat(fd).st_mode
    pollable = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
    while True:
        try:
            if pollable:
                await anyio.wait_readable(fd)
                data = os.read(fd, _READ)
            else:
                data = await anyio.to_thread.run_sync(os.read, fd, _READ)
        except OSError as exc:
            if exc.errno == errno.EIO:  # the terminal went away
                return
            raise
        if not data:
            return
        yield data


async def _attached(
    stream: Any, input_cls: type, output_cls: type, interactive: bool, terminal: bool
) -> int:
    """Pump stdin and SIGWINCH into ``stream``, its outputs to stdout/stderr."""
    code = 255
    async with anyio.create_task_group() as tg:
        sent = _size_key(_terminal_size()) if terminal else None

        async def resize_if_changed() -> None:
            # Checked before every input too: a SIGWINCH can arrive after the
            # keystrokes typed in the new size, or be merged with another.
            nonlocal sent
            size = _terminal_size()
            if size is not None and _size_key(size) != sent:
                sent = _size_key(size)
                await stream.send_message(input_cls(resize=size))

        async def forward_stdin() -> None:
            if interactive:
                async for chunk in _stdin_chunks():
                    if terminal:
                        await resize_if_changed()
                    await stream.send_message(input_cls(stdin=chunk))
                await stream.send_message(input_cls(close_stdin=True))

        async def forward_resizes() -> None:
            with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
                async for _ in signals:
                    await resize_if_changed()

        async def quietly(forward: Any) -> None:
            # The output side decides how this ends: once the server has sent
            # the exit code it may reset the stream under a pending input.
            with contextlib.suppress(StreamTerminatedError, GRPCError):
                await forward()

        if interactive or terminal:
            tg.start_soon(quietly, forward_stdin)
        if terminal:
            tg.start_soon(quietly, forward_resizes)
        out = sys.stdout.buffer
        err = sys.stderr.buffer
        while True:
            message = await stream.recv_message()
            if message is None:
                break
            if message.stdout is not None:
                out.write(message.stdout)
                out.flush()
            elif message.stderr is not None:
                err.write(message.stderr)
                err.flush()
            elif message.exit_code is not None:
                code = message.exit_code
                break
        tg.cancel_scope.cancel()
    # Half-close: the server, which waits for it, then ends the call cleanly.
    with contextlib.suppress(StreamTerminatedError, GRPCError):
        await stream.end()
    return code


#: The signals an attached `run` passes to its container (docker's --sig-proxy).
_PROXIED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


async def _run(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not args.rootfs:
        raise SupervisorError("--rootfs DIR is needed (images are not supported yet)")
    if not command:
        raise SupervisorError("a command is needed: supervisor run --rootfs DIR CMD [ARG...]")
    definition = pb.Definition(
        id=args.name,
        rootfs=_absolute(args.rootfs),
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
    )
    request = pb.RunRequest(definition=definition, attach=not args.detach, remove=args.rm)
    async with (
        channel.request(
            "/supervisor.v1.Control/Run", Cardinality.STREAM_STREAM, pb.RunInput, pb.RunOutput
        ) as stream,
        _reset_means_status() as call,
    ):
        await stream.send_message(pb.RunInput(request=request))
        first = await stream.recv_message()
        if first is None or first.started is None:
            await stream.recv_trailing_metadata()
            raise SupervisorError("the daemon did not start the container")
        if args.detach:
            print(first.started.id)
            await stream.end()
            return 0
        size = _terminal_size() if args.tty else None
        if size is not None:
            await stream.send_message(pb.RunInput(resize=size))
        cid = first.started.id
        with _raw_terminal(args.tty and args.interactive):
            async with anyio.create_task_group() as tg:
                if args.sig_proxy:
                    await tg.start(_proxy_signals, stub, cid, tg.cancel_scope)
                call.code = await _attached(
                    stream, pb.RunInput, pb.RunOutput, args.interactive, args.tty
                )
                tg.cancel_scope.cancel()
            if call.code is None:  # detached by a second Ctrl-C
                await stream.cancel()  # the container goes on without us
                print(f"supervisor run: detached; {cid} goes on (supervisor logs -f {cid})",
                      file=sys.stderr)  # fmt: skip
                return 0
    return call.result()


async def _proxy_signals(
    stub: pb.ControlStub,
    cid: str,
    attached: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Pass the signals the CLI gets to the container, as `docker run` does; a
    second Ctrl-C (SIGINT) detaches instead: the container goes on."""
    interrupts = 0
    with anyio.open_signal_receiver(*_PROXIED) as signals:
        task_status.started()  # before any output: a Ctrl-C after it is passed on
        async for signum in signals:
            if signum == signal.SIGINT:
                interrupts += 1
                if interrupts > 1:
                    attached.cancel()
                    return
            with contextlib.suppress(GRPCError, StreamTerminatedError, OSError):
                await stub.kill(pb.KillRequest(id=cid, signal=signum.name, proxy=True))


async def _exec(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SupervisorError("a command is needed")
    start = pb.ExecStart(
        id=args.id,
        command=command,
        terminal=args.tty,
        stdin=args.interactive,
        env=_pairs(args.env, "environment entry"),
        user=args.user,
        cwd=args.workdir,
        size=_terminal_size() if args.tty else None,
    )
    async with (
        channel.request(
            "/supervisor.v1.Control/Exec", Cardinality.STREAM_STREAM, pb.ExecInput, pb.ExecOutput
        ) as stream,
        _reset_means_status() as call,
    ):
        await stream.send_message(pb.ExecInput(start=start))
        with _raw_terminal(args.tty and args.interactive):
            call.code = await _attached(
                stream, pb.ExecInput, pb.ExecOutput, args.interactive, args.tty
            )
    return call.result()


# -- the rest ----------------------------------------------------------------------------


async def _ps(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    reply = await stub.list(pb.ListRequest(all=args.all))
    if args.json:
        print(json.dumps([_info_dict(c) for c in reply.containers], indent=2))
        return 0
    rows = [("ID", "STATUS", "PID", "RESTART", "RESTARTS", "COMMAND")]
    for c in reply.containers:
        status = (
            f"exited ({c.exit_code})"
            if c.status in ("exited", "stopped") and c.exited
            else c.status
        )
        if c.problem:
            status += " (!)"
        rows.append((c.id, status, str(c.pid or "-"), c.restart, str(c.restart_count),
                     " ".join(c.command)[:40]))  # fmt: skip
    _print_table(rows)
    for c in reply.containers:
        if c.problem:
            print(f"(!) {c.id}: {c.problem}", file=sys.stderr)
    return 0


async def _inspect(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    infos = [_info_dict(await stub.inspect(pb.ContainerRef(id=cid))) for cid in args.ids]
    print(json.dumps(infos, indent=2))
    return 0


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        try:
            return datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * unit)
        except OverflowError:  # before year 1
            raise SupervisorError(f"--since {text!r} is too long ago") from None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SupervisorError(
            f"--since {text!r}: use RFC 3339 or a duration like 10s, 5m"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _logs(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    request = pb.LogsRequest(
        id=args.id,
        follow=args.follow,
        tail=args.tail or 0,
        has_tail=args.tail is not None,
        since=_since(args.since),
    )
    out, err = sys.stdout.buffer, sys.stderr.buffer
    async for record in stub.logs(request):
        target = err if record.stream == "stderr" else out
        if args.timestamps and record.time is not None:
            target.write(record.time.isoformat().encode() + b" ")
        target.write(record.line)
        target.flush()
    return 0


async def _each(args: argparse.Namespace, call: Any) -> int:
    failed = 0
    for cid in args.ids:
        try:
            await call(cid)
            print(cid)
        except GRPCError as exc:
            print(one_line(f"supervisor {args.command}: {from_grpc(exc)}"), file=sys.stderr)
            failed += 1
    return CLI_ERROR if failed else 0


async def _stop(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    return await _each(args, lambda cid: stub.stop(pb.StopRequest(
        id=cid, timeout=args.time or 0.0, has_timeout=args.time is not None)))  # fmt: skip


async def _start(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    return await _each(args, lambda cid: stub.start(pb.ContainerRef(id=cid)))


async def _kill(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    return await _each(args, lambda cid: stub.kill(pb.KillRequest(id=cid, signal=args.signal)))


async def _rm(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    return await _each(args, lambda cid: stub.remove(pb.RemoveRequest(id=cid, force=args.force)))


async def _pause(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    return await _each(args, lambda cid: stub.pause(pb.ContainerRef(id=cid)))


async def _unpause(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    return await _each(args, lambda cid: stub.resume(pb.ContainerRef(id=cid)))


async def _stats(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    first, failed = await _read_stats(stub, list(args.ids), args.command)
    await anyio.sleep(max(0.0, args.interval))  # CPU % is a rate: two readings
    second, _ = await _read_stats(stub, list(first), args.command, quiet=True)
    rows = []
    for cid, now in second.items():
        before = first[cid]
        wall = (
            (now.read_at - before.read_at).total_seconds() if now.read_at and before.read_at else 0
        )
        cpu = (now.cpu_total_ns - before.cpu_total_ns) / 1e9 / wall * 100 if wall > 0 else 0.0
        rows.append((now, max(cpu, 0.0)))
    if args.json:
        print(json.dumps([{**_stats_dict(r), "cpu_percent": round(cpu, 2)} for r, cpu in rows],
                         indent=2))  # fmt: skip
    else:
        host = _host_memory()
        table = [("ID", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS")]
        for r, cpu in rows:
            limit = r.memory_limit or host
            share = f"{r.memory_usage / limit * 100:.2f}%" if limit else "-"
            table.append((r.id, f"{cpu:.2f}%", f"{_human(r.memory_usage)} / {_human(limit)}",
                          share, str(r.pids_current)))  # fmt: skip
        _print_table(table)
    return CLI_ERROR if failed else 0


async def _read_stats(
    stub: pb.ControlStub, ids: list[str], command: str, *, quiet: bool = False
) -> tuple[dict[str, pb.StatsResponse], bool]:
    """One reading of ``ids`` (all running containers when empty), in one call."""
    if not ids and quiet:
        return {}, False
    reply = await stub.stats_all(pb.StatsRequest(ids=ids))
    if not quiet:
        for cid in reply.not_running:
            print(f"supervisor {command}: container {cid} is not running", file=sys.stderr)
    return {r.id: r for r in reply.stats}, bool(reply.not_running)


def _stats_dict(r: pb.StatsResponse) -> dict[str, Any]:
    return {
        "id": r.id,
        "cpu_total_ns": r.cpu_total_ns,
        "memory_usage": r.memory_usage,
        "memory_limit": r.memory_limit or None,
        "pids_current": r.pids_current,
        "pids_limit": r.pids_limit or None,
        "oom_kills": r.oom_kills,
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
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def _events(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    async for event in stub.events(pb.EventsRequest()):
        record = {
            "time": event.time.isoformat() if event.time else None,
            "id": event.container_id,
            "type": event.type,
        }
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


async def _apply_result(reply: pb.ApplyResponse) -> int:
    for verb, ids in (("created", reply.created), ("replaced", reply.replaced),
                      ("removed", reply.removed)):  # fmt: skip
        for cid in ids:
            print(f"{verb} {cid}")
    for error in reply.errors:
        print(f"error: {error}", file=sys.stderr)
    return CLI_ERROR if reply.errors else 0


async def _apply(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    directory = _absolute(args.directory)
    return await _apply_result(await stub.apply(pb.ApplyRequest(directory=directory)))


async def _reload(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    return await _apply_result(await stub.reload(pb.ReloadRequest()))


async def _version(stub: pb.ControlStub, channel: Channel, args: argparse.Namespace) -> int:
    from . import __version__

    v = await stub.version(pb.VersionRequest())
    print(f"client:     {__version__}")
    print(f"daemon:     {v.version} (namespace {v.namespace})")
    print(f"containerd: {v.containerd_version} ({v.containerd_revision})")
    return 0


VERBS = {
    "run": _run,
    "exec": _exec,
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
