"""Process stdio: FIFO sets in private directories, files, or nothing."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from ..errors import InvalidArgument
from ._ids import validate_id

_READ_SIZE = 65536


class FifoReader(ByteReceiveStream):
    """The read end of a stdout or stderr FIFO, opened before the process exists.

    ``receive()`` raises :class:`anyio.EndOfStream` once the process has exited
    and the shim closed its end.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.where = os.fspath(path)
        self._fd = os.open(self.where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    @functools.cached_property
    def path(self) -> Path:
        return Path(self.where)

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        # Wait before every read: a FIFO that never had a writer reads as EOF,
        # but is only reported readable once the shim has opened its end.
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            await anyio.wait_readable(self._fd)
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                continue
            if not data:
                raise anyio.EndOfStream
            return data

    async def read_all(self) -> bytes:
        """Everything until the process's end of output."""
        chunks = [chunk async for chunk in self]
        return b"".join(chunks)

    async def aclose(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            anyio.notify_closing(fd)
            os.close(fd)


class FifoWriter(ByteSendStream):
    """The write end of a stdin FIFO.

    Until the shim holds the read end it is opened read-write, so that input
    written early is kept and nothing blocks; once the process exists it is
    reopened write-only, so that a reader gone for good shows up as
    :class:`anyio.BrokenResourceError` instead of a write that never ends.
    Closing it is what the shim sees as end of input.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._write_only = False

    def reader_attached(self) -> None:
        """The shim has opened its end: drop our own read side."""
        if self._fd < 0 or self._write_only:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # no reader after all: keep the read-write descriptor
        old, self._fd = self._fd, fd
        self._write_only = True
        os.close(old)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except BrokenPipeError as exc:
                raise anyio.BrokenResourceError("the process's stdin is closed") from exc
            view = view[written:]

    async def aclose(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            anyio.notify_closing(fd)
            os.close(fd)


class ProcessIO:
    """Where a process's stdio goes. The base class is the null IO: nothing.

    ``stdin``, ``stdout`` and ``stderr`` are the strings handed to containerd;
    ``aclose()`` releases whatever the IO holds once the process is deleted.
    """

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    async def close_stdin(self) -> None:
        """Close our end of stdin, if we hold one."""

    def process_ready(self) -> None:
        """Called once the shim has opened this process's stdio."""

    async def aclose(self) -> None:
        """Release file descriptors and remove any directory this IO made."""


class NullIO(ProcessIO):
    """No stdio at all: the shim connects the process to /dev/null."""


class FileIO(ProcessIO):
    """stdout and stderr appended to files by the shim itself.

    Output is written even while no client is connected; nothing to clean up.
    The shim copies on its own schedule, so the last bytes can reach the file
    just after the process's exit is reported. With ``terminal`` there is no
    separate stderr.
    """

    def __init__(
        self,
        stdout: str | os.PathLike[str],
        stderr: str | os.PathLike[str] | None = None,
        *,
        terminal: bool = False,
    ) -> None:
        out = Path(stdout)
        err = Path(stderr) if stderr is not None else out
        for path in (out, err):
            if not path.is_absolute():
                raise InvalidArgument(f"log path {str(path)!r} must be absolute")
            if not path.parent.is_dir():
                raise InvalidArgument(f"log directory {str(path.parent)!r} does not exist")
        self.terminal = terminal
        self.stdout = f"file://{out}"
        self.stderr = "" if terminal else f"file://{err}"


class FifoIO(ProcessIO):
    """A FIFO set in a private (0700) directory, read ends already open.

    Make one with :meth:`create` before creating the task or exec; read
    ``stdout``/``stderr`` output through :attr:`stdout_reader` and
    :attr:`stderr_reader`, write input through :attr:`stdin_writer`.
    The directory is removed by :meth:`aclose`, which ``Task.delete`` calls.
    """

    def __init__(
        self,
        directory: Path,
        stdin_writer: FifoWriter | None,
        stdout_reader: FifoReader,
        stderr_reader: FifoReader | None,
        terminal: bool,
    ) -> None:
        self.directory = directory
        self.stdin_writer = stdin_writer
        self.stdout_reader = stdout_reader
        self.stderr_reader = stderr_reader
        self.terminal = terminal
        self.stdin = str(stdin_writer.path) if stdin_writer else ""
        self.stdout = stdout_reader.where
        self.stderr = stderr_reader.where if stderr_reader else ""

    @classmethod
    def create(
        cls,
        base_dir: str | os.PathLike[str],
        name: str = "io",
        *,
        stdin: bool = False,
        terminal: bool = False,
    ) -> FifoIO:
        """Make the FIFOs under a new private directory in ``base_dir``.

        With ``terminal`` the process gets a pty and there is no stderr.
        """
        validate_id(name, "FIFO set name")
        base = Path(base_dir)
        base.mkdir(mode=0o711, parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
        opened: list[FifoReader | FifoWriter] = []
        try:
            streams = ["stdout"] + (["stdin"] if stdin else []) + ([] if terminal else ["stderr"])
            for stream in streams:
                os.mkfifo(directory / stream, 0o600)
            writer = FifoWriter(directory / "stdin") if stdin else None
            if writer:
                opened.append(writer)
            out = FifoReader(directory / "stdout")
            opened.append(out)
            err = None if terminal else FifoReader(directory / "stderr")
            if err:
                opened.append(err)
        except BaseException:
            for item in opened:
                os.close(item._fd)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(directory, writer, out, err, terminal)

    @classmethod
    def attach(cls, stdout: str, stderr: str = "", *, terminal: bool = False) -> FifoIO:
        """Open the read ends of a running process's existing FIFOs again
        (their paths are in :class:`ProcessState`), e.g. after a restart of the
        program that made them. No stdin: it was closed with the old writer."""
        out = FifoReader(stdout)
        try:
            err = FifoReader(stderr) if stderr else None
        except BaseException:
            os.close(out._fd)
            raise
        return cls(Path(os.path.dirname(stdout)), None, out, err, terminal)

    async def close_stdin(self) -> None:
        if self.stdin_writer is not None:
            await self.stdin_writer.aclose()

    def process_ready(self) -> None:
        if self.stdin_writer is not None:
            self.stdin_writer.reader_attached()

    async def aclose(self) -> None:
        for item in (self.stdin_writer, self.stdout_reader, self.stderr_reader):
            if item is not None:
                await item.aclose()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.directory)
