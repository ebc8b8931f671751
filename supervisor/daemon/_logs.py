"""Container output as JSON lines with size-based rotation, like Docker's json-file driver.

Each line of output becomes one record, ``{"time": ..., "stream": ..., "log": ...}``, where
``log`` keeps the line's newline. Records that do not end a line carry ``"partial": true``.
Synchronous on purpose: the daemon calls it through ``anyio.to_thread``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ("MAX_LINE", "RotatingJsonLog", "read_records")

MAX_LINE = 16 * 1024
"""Longest ``log`` value in one record, in bytes; longer lines are split into partial records."""

_STREAMS = frozenset({"stdout", "stderr"})

log = logging.getLogger("supervisor.daemon")


class RotatingJsonLog:
    """An append-only JSON-lines log at *path*, rotated past *max_bytes*.

    *max_files* counts the current file: at most ``path``, ``path.1`` ... ``path.N-1`` exist,
    ``path.N-1`` holding the oldest records. With ``max_files=1`` a full log starts over empty.
    Safe to call from several threads.
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
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._file = _open(path)
        self._size = os.fstat(self._file.fileno()).st_size

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
                    self._pending[stream] = buf[start:]
                    break
            self._append(records)

    def flush_partial(self, when: datetime | None = None) -> None:
        """Write out unfinished lines as partial records (when the output has ended)."""
        with self._lock:
            stamp = _timestamp(when)
            records = [_record(stamp, stream, data, True) for stream, data in self._pending.items()]
            self._pending.clear()
            self._append(records)

    def close(self) -> None:
        """Flush unfinished lines and close the file; closing twice is harmless.
        What cannot be written (a full disk) is logged and dropped."""
        if self._file.closed:
            return
        try:
            self.flush_partial()
        except OSError as exc:
            log.error("cannot write %s: %s", self.path, exc)
        with self._lock:
            try:
                self._file.close()
            except OSError as exc:
                log.error("cannot write %s: %s", self.path, exc)

    def __enter__(self) -> RotatingJsonLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _append(self, records: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = self._size
        for record in records:
            if size and size + len(record) > self._max_bytes:
                self._emit(chunk)
                self._rotate()
                chunk, size = [], 0
            chunk.append(record)
            size += len(record)
        self._emit(chunk)

    def _emit(self, chunk: list[bytes]) -> None:
        if chunk:
            data = b"".join(chunk)
            self._file.write(data)
            self._file.flush()
            self._size += len(data)

    def _rotate(self) -> None:
        if self._max_files == 1:
            self._file.truncate(0)
        else:
            names = [self._path, *(_rotated(self._path, n) for n in range(1, self._max_files))]
            names[-1].unlink(missing_ok=True)
            for older, newer in zip(reversed(names[1:]), reversed(names[:-1]), strict=True):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(newer, older)
            previous, self._file = self._file, _open(self._path)
            previous.close()
        self._size = 0


def read_records(
    path: Path, *, tail: int | None = None, include_rotated: bool = True
) -> list[dict[str, Any]]:
    """The records of the log at *path*, oldest first, rotated files included.

    *tail* keeps only the last that many. Missing files read as empty and malformed lines
    (a record cut short by a crash) are skipped.
    """
    if tail is not None and tail < 0:
        raise ValueError(f"tail must not be negative, not {tail}")
    files = [path]
    if include_rotated:
        files += _rotated_files(path)
    # Newest file first, so a tail stops reading early.
    chunks: list[list[dict[str, Any]]] = []
    count = 0
    for file in files:
        if tail is not None and count >= tail:
            break
        records = _parse(file)
        chunks.append(records)
        count += len(records)
    result = [record for records in reversed(chunks) for record in records]
    if tail is not None:
        return result[-tail:] if tail else []
    return result


def _open(path: Path) -> io.BufferedWriter:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    return os.fdopen(fd, "ab")


def _rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _rotated_files(path: Path) -> list[Path]:
    # Every path.N, not just up to the current max_files: a smaller limit set since leaves
    # older files behind, and they still sort correctly by N.
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


def _parse(file: Path) -> list[dict[str, Any]]:
    try:
        lines = file.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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
