"""Container output as JSON lines with size-based rotation, like Docker's json-file driver.

Each line of output becomes one record, ``{"time": ..., "stream": ..., "log": ...}``, where
``log`` keeps the line's newline. Records that do not end a line carry ``"partial": true``.
Synchronous on purpose: the daemon calls it through ``anyio.to_thread``. Memory stays bounded
whatever the output: a line waits for its newline up to :data:`MAX_LINE` bytes, and the
readers stream the files in blocks rather than load them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from collections.abc import Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = (
    "BATCH_BYTES",
    "MAX_LINE",
    "RotatingJsonLog",
    "iter_records",
    "next_batch",
    "read_records",
)

MAX_LINE = 16 * 1024
"""Longest ``log`` value in one record, in bytes; longer lines are split into partial records."""

MAX_RECORD = 6 * MAX_LINE + 256
"""Longest line a record can take in the file: :data:`MAX_LINE` bytes escaped as ``\\u00XX``
at worst, plus the other fields. A longer line is damage, and is skipped without being held."""

BATCH_BYTES = 256 * 1024
"""About how much output :func:`next_batch` hands over at once."""

_BLOCK = 64 * 1024  # what the readers read at a time

_STREAMS = frozenset({"stdout", "stderr"})
_FIELDS = ("time", "stream", "log")

log = logging.getLogger("supervisor.daemon")


class RotatingJsonLog:
    """An append-only JSON-lines log at *path*, rotated past *max_bytes*.

    *max_files* counts the current file: at most ``path``, ``path.1`` ... ``path.N-1`` exist,
    ``path.N-1`` holding the oldest records. With ``max_files=1`` a full log starts over empty.
    Safe to call from several threads.

    A write that fails (a full disk, a rotation that cannot move a file) raises ``OSError``
    and leaves the file ending with a whole record; the next write tries again, rotation
    included, so the log recovers by itself once the cause is gone. Each failure is logged
    once, when it starts, and the recovery once, so a failure after a recovery shows again.
    """

    def __init__(self, path: Path, max_bytes: int, max_files: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if max_files < 1:
            raise ValueError(f"max_files must be positive, not {max_files}")
        self._path = path
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._lock = threading.Lock()
        self._pending: dict[str, bytes] = {}
        self._failing = False
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._fd = _open(path)
        self._size = os.fstat(self._fd).st_size

    @property
    def path(self) -> Path:
        """The current log file."""
        return self._path

    def write(self, stream: str, data: bytes, when: datetime | None = None) -> None:
        """Record *data* read from *stream* (``"stdout"`` or ``"stderr"``) at *when* (now).

        Complete lines are written at once; an unfinished last line waits, per stream, for the
        rest of it (or :meth:`flush_partial`). A naive *when* is taken as UTC.
        """
        if stream not in _STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        with self._lock:
            self._check_open()
            buf = self._pending.pop(stream, b"") + data
            stamp = _timestamp(when)
            records: list[bytes] = []
            start, end = 0, len(buf)
            while start < end:
                newline = buf.find(b"\n", start, start + MAX_LINE)
                if newline >= 0:
                    records.append(_record(stamp, stream, buf[start : newline + 1], False))
                    start = newline + 1
                elif end - start > MAX_LINE:
                    cut = _cut(buf, start)
                    records.append(_record(stamp, stream, buf[start:cut], True))
                    start = cut
                else:
                    self._pending[stream] = buf[start:]  # at most MAX_LINE bytes
                    break
            self._append(records)

    def flush_partial(self, when: datetime | None = None) -> None:
        """Write out unfinished lines as partial records (when the output has ended)."""
        with self._lock:
            self._check_open()
            stamp = _timestamp(when)
            records = [_record(stamp, stream, data, True) for stream, data in self._pending.items()]
            self._pending.clear()
            self._append(records)

    def close(self) -> None:
        """Flush unfinished lines and close the file; closing twice is harmless.
        What cannot be written (a full disk) is logged and dropped."""
        with contextlib.suppress(OSError, ValueError):  # logged; ValueError: closed already
            self.flush_partial()
        with self._lock:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                with contextlib.suppress(OSError):  # nothing is buffered: nothing to lose
                    os.close(fd)

    def __enter__(self) -> RotatingJsonLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"{self._path} is closed")

    def _append(self, records: list[bytes]) -> None:
        if not records:
            return
        try:
            chunk: list[bytes] = []
            size = self._size
            for record in records:
                if size and size + len(record) > self._max_bytes:
                    self._emit(chunk)
                    self._rotate()
                    chunk, size = [], self._size
                chunk.append(record)
                size += len(record)
            self._emit(chunk)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.error("cannot write %s: %s", self._path, exc)
            raise
        if self._failing:
            self._failing = False
            log.info("writing %s again", self._path)

    def _emit(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        data = memoryview(b"".join(chunk))
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            # A short write left part of a record (a full disk): cut it off, or the next
            # record, glued to it, would be lost with it.
            if written:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

    def _rotate(self) -> None:
        """Start a new current file. Safe to repeat after a failure: a file already moved
        aside is not moved again, so retries do not push older files out."""
        if self._max_files == 1:
            os.ftruncate(self._fd, 0)
            self._size = 0
            return
        if self._is_current():
            names = [self._path, *(_rotated(self._path, n) for n in range(1, self._max_files))]
            names[-1].unlink(missing_ok=True)
            for older, newer in zip(reversed(names[1:]), reversed(names[:-1]), strict=True):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(newer, older)
        previous, self._fd = self._fd, _open(self._path)
        self._size = os.fstat(self._fd).st_size
        with contextlib.suppress(OSError):  # nothing is buffered: nothing to lose
            os.close(previous)

    def _is_current(self) -> bool:
        """Whether the open file is still the one at ``path``."""
        try:
            named = os.stat(self._path)
        except FileNotFoundError:
            return False
        own = os.fstat(self._fd)
        return (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino)


def iter_records(
    path: Path, *, tail: int | None = None, include_rotated: bool = True
) -> Generator[dict[str, Any], None, None]:
    """The records of the log at *path*, oldest first, rotated files included, read as they
    are consumed: memory stays at a few blocks whatever the size of the log or of *tail*.

    *tail* keeps only the last that many, found by reading the files backwards from their
    end. The files are opened at the first record and read up to the sizes they had then;
    a rotation meanwhile neither loses nor repeats records, and what is written after is
    left to a follower. Missing files read as empty; lines that are not records (a record
    cut short by a crash, damage) are skipped. Close the iterator to close the files early.
    """
    if tail is not None and tail < 0:
        raise ValueError(f"tail must not be negative, not {tail}")
    return _records(path, tail, include_rotated)


def read_records(
    path: Path, *, tail: int | None = None, include_rotated: bool = True
) -> list[dict[str, Any]]:
    """:func:`iter_records` as a list, for logs known to be small (tests, tools)."""
    return list(iter_records(path, tail=tail, include_rotated=include_rotated))


def next_batch(
    records: Iterator[dict[str, Any]], max_bytes: int = BATCH_BYTES
) -> list[dict[str, Any]]:
    """The next records of *records*, up to about *max_bytes* of output; empty at the end.

    For a caller that reads in a thread and hands records on: it holds one batch at a time.
    """
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        batch.append(record)
        size += len(record["log"]) + 128  # the fields and the dict around it, roughly
        if size >= max_bytes:
            break
    return batch


def _records(
    path: Path, tail: int | None, include_rotated: bool
) -> Generator[dict[str, Any], None, None]:
    with contextlib.ExitStack() as stack:
        files = _open_files(path, include_rotated, stack)
        first, offset = (0, 0) if tail is None else _tail_start(files, tail)
        for index in range(first, len(files)):
            fd, size = files[index]
            for line in _lines_forward(fd, offset if index == first else 0, size):
                record = _parse(line)
                if record is not None:
                    yield record


def _open_files(
    path: Path, include_rotated: bool, stack: contextlib.ExitStack
) -> list[tuple[int, int]]:
    """The log's files, oldest first: each a descriptor and the file's size now.

    Opened newest first and told apart by inode: a rotation between two opens shifts a file
    already open to the next name, where it is recognised, so nothing is read twice or missed.
    """
    names = [path, *(_rotated_files(path) if include_rotated else ())]
    seen: set[tuple[int, int]] = set()
    files: list[tuple[int, int]] = []
    for name in names:
        try:
            # O_NONBLOCK: a FIFO by that name must not hang the reader; files ignore it.
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            continue
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            os.close(fd)
            continue
        stack.callback(os.close, fd)
        seen.add((st.st_dev, st.st_ino))
        files.append((fd, st.st_size))
    files.reverse()
    return files


def _tail_start(files: list[tuple[int, int]], tail: int) -> tuple[int, int]:
    """Where the last *tail* records begin: an index into *files* and an offset in it."""
    if tail == 0:
        return len(files), 0
    count = 0
    for index in reversed(range(len(files))):
        fd, size = files[index]
        for offset, line in _lines_backward(fd, size):
            if _parse(line) is not None:
                count += 1
                if count == tail:
                    return index, offset
    return 0, 0


def _lines_forward(fd: int, start: int, stop: int) -> Iterator[bytes]:
    """The lines of a file between two offsets, without their newlines.

    Read in blocks; a line longer than :data:`MAX_RECORD` is passed over without being
    held, so memory stays at a block and a record.
    """
    pos = start
    buf = b""  # the start of a line whose end is further on
    overlong = False
    while pos < stop:
        block = os.pread(fd, min(_BLOCK, stop - pos), pos)
        if not block:
            break  # cut short meanwhile (a log that started over)
        pos += len(block)
        buf += block
        begin = 0
        while (newline := buf.find(b"\n", begin)) >= 0:
            if not overlong and 0 < newline - begin <= MAX_RECORD:
                yield buf[begin:newline]
            overlong = False
            begin = newline + 1
        buf = buf[begin:]
        if len(buf) > MAX_RECORD:
            buf, overlong = b"", True
    if buf and not overlong:
        yield buf


def _lines_backward(fd: int, end: int) -> Iterator[tuple[int, bytes]]:
    """The lines of a file before offset *end*, last first, each with its offset.

    The mirror of :func:`_lines_forward`, for a tail: it reads no more than the tail.
    """
    pos = end
    buf = b""  # file[pos : pos + len(buf)], the end of a line whose start is further back
    overlong = False
    while pos > 0:
        size = min(_BLOCK, pos)
        pos -= size
        block = os.pread(fd, size, pos)
        if len(block) < size:
            return  # cut short meanwhile (a log that started over)
        buf = block + buf
        stop = len(buf)
        while (newline := buf.rfind(b"\n", 0, stop)) >= 0:
            if not overlong and 0 < stop - newline - 1 <= MAX_RECORD:
                yield pos + newline + 1, buf[newline + 1 : stop]
            overlong = False
            stop = newline
        buf = buf[:stop]
        if len(buf) > MAX_RECORD:
            buf, overlong = b"", True
    if buf and not overlong:
        yield 0, buf


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if isinstance(record, dict) and all(isinstance(record.get(key), str) for key in _FIELDS):
        return record
    return None


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _rotated_files(path: Path) -> list[Path]:
    # Every path.N, not just up to the current max_files: a smaller limit set since leaves
    # older files behind, and they still sort correctly by N. Newest first.
    prefix = path.name + "."
    try:
        names = [entry.name for entry in os.scandir(path.parent)]
    except FileNotFoundError:
        return []
    numbers = sorted(
        int(suffix)
        for name in names
        if name.startswith(prefix)
        and (suffix := name[len(prefix) :]).isascii()
        and suffix.isdigit()
    )
    return [_rotated(path, n) for n in numbers]


def _timestamp(when: datetime | None) -> str:
    if when is None:
        when = datetime.now(UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    else:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(stamp: str, stream: str, data: bytes, partial: bool) -> bytes:
    text = json.dumps(data.decode("utf-8", errors="replace"), ensure_ascii=False)
    tail = ',"partial":true}\n' if partial else "}\n"
    return f'{{"time":"{stamp}","stream":"{stream}","log":{text}{tail}'.encode()


def _cut(buf: bytes, start: int) -> int:
    # Back off to a character boundary so a split multi-byte character is not replaced
    # in both halves; give up after three bytes (the input is not UTF-8 anyway).
    cut = start + MAX_LINE
    for back in range(4):
        if buf[cut - back] & 0xC0 != 0x80:
            return cut - back
    return cut
