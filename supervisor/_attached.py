"""An attached ``run`` and ``exec``: bidirectional streams on grpclib's async client.

These pump stdin, terminal resizes and (for ``run``) signals into the call
while its output streams back, which the CLI's small synchronous client does
not do. Only these two verbs import this module, and with it anyio and
grpclib; their messages still go through the CLI's own codec
(``_messages``, as a grpclib codec), not betterproto2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import signal
import stat
import struct
import sys
import termios
import tty
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import anyio
import anyio.abc
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ._commands import _pairs, command_of, error_code, run_request
from ._messages import Message, decode, new
from .errors import SupervisorError, Unavailable, from_grpc, one_line

_READ = 65536


class _Codec(CodecBase):
    """grpclib's codec for the messages of ``_messages``: the "types" grpclib is
    given are their names."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return decode(message_type, data)


def _type(name: str) -> Any:
    return cast(Any, name)


def _attached_verb(
    verb: Callable[[Channel, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return anyio.run(_call, verb, args)

    return run


async def _call(
    verb: Callable[[Channel, argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    path = args.socket
    channel = Channel(path=path, codec=_Codec())
    try:
        try:
            try:
                return await verb(channel, args)
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


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _Outcome:
    def __init__(self) -> None:
        self.code: int | None = None
        self.reset: StreamTerminatedError | None = None

    def result(self) -> int:
        if self.code is not None:
            return self.code
        assert self.reset is not None
        raise self.reset


@contextlib.asynccontextmanager
async def _reset_means_status() -> AsyncIterator[_Outcome]:
    """grpclib can see the server's reset before the status that preceded it
    (a call refused at once, e.g. an unknown id). Swallow the reset here: the
    request's own exit, outside this block, raises the status when it came."""
    call = _Outcome()
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


def _terminal_size() -> Message | None:
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
            if rows and cols:
                return new("Resize", width=cols, height=rows)
    return None


def _size_key(size: Message | None) -> tuple[int, int] | None:
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


async def _attached(stream: Any, input_type: str, interactive: bool, terminal: bool) -> int:
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
                await stream.send_message(new(input_type, resize=size))

        async def forward_stdin() -> None:
            if interactive:
                async for chunk in _stdin_chunks():
                    if terminal:
                        await resize_if_changed()
                    await stream.send_message(new(input_type, stdin=chunk))
                await stream.send_message(new(input_type, close_stdin=True))

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


async def _run(channel: Channel, args: argparse.Namespace) -> int:
    first_input = run_request(args)
    bytes(first_input)  # a value out of range is the verb's own error, before any call
    async with (
        channel.request(
            "/supervisor.v1.Control/Run",
            Cardinality.STREAM_STREAM,
            _type("RunInput"),
            _type("RunOutput"),
        ) as stream,
        _reset_means_status() as call,
    ):
        await stream.send_message(first_input)
        first = await stream.recv_message()
        if first is None or first.started is None:
            await stream.recv_trailing_metadata()
            raise SupervisorError("the daemon did not start the container")
        size = _terminal_size() if args.tty else None
        if size is not None:
            await stream.send_message(new("RunInput", resize=size))
        cid = first.started.id
        with _raw_terminal(args.tty and args.interactive):
            async with anyio.create_task_group() as tg:
                if args.sig_proxy:
                    await tg.start(_proxy_signals, channel, cid, tg.cancel_scope)
                call.code = await _attached(stream, "RunInput", args.interactive, args.tty)
                tg.cancel_scope.cancel()
            if call.code is None:  # detached by a second Ctrl-C
                await stream.cancel()  # the container goes on without us
                print(f"supervisor run: detached; {cid} goes on (supervisor logs -f {cid})",
                      file=sys.stderr)  # fmt: skip
                return 0
    return call.result()


async def _proxy_signals(
    channel: Channel,
    cid: str,
    attached: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Pass the signals the CLI gets to the container, as `docker run` does; a
    second Ctrl-C (SIGINT) detaches instead: the container goes on."""
    kill = UnaryUnaryMethod[Message, Message](
        channel, "/supervisor.v1.Control/Kill", _type("KillRequest"), _type("ContainerInfo")
    )
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
                await kill(new("KillRequest", id=cid, signal=signum.name, proxy=True))


async def _exec(channel: Channel, args: argparse.Namespace) -> int:
    command = command_of(args)
    if not command:
        raise SupervisorError("a command is needed")
    start = new(
        "ExecStart",
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
            "/supervisor.v1.Control/Exec",
            Cardinality.STREAM_STREAM,
            _type("ExecInput"),
            _type("ExecOutput"),
        ) as stream,
        _reset_means_status() as call,
    ):
        await stream.send_message(new("ExecInput", start=start))
        with _raw_terminal(args.tty and args.interactive):
            call.code = await _attached(stream, "ExecInput", args.interactive, args.tty)
    return call.result()


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _attached_verb(_run),
    "exec": _attached_verb(_exec),
}
