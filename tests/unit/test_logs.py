import json
import logging
import os
import resource
import shutil
import signal
import stat
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from supervisor._proto.supervisor import v1 as pb
from supervisor.daemon import _logs as logs_module
from supervisor.daemon._control import ControlService
from supervisor.daemon._logs import (
    MAX_LINE,
    MAX_RECORD,
    RotatingJsonLog,
    iter_records,
    read_records,
)
from supervisor.daemon._output import CHUNK_COST, FOLLOWER_LIMIT, Follower, copy_logs, publish

WHEN = datetime(2026, 11, 22, 6, 40, 57, 123456, tzinfo=UTC)
STAMP = "2026-11-22T06:40:57.123456Z"


def _logs(path: Path) -> list[str]:
    return [record["log"] for record in read_records(path)]


def _file_logs(path: Path) -> list[str]:
    return [json.loads(line)["log"] for line in path.read_bytes().splitlines()]


def test_records_are_exact_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "c1" / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=3) as log:
        log.write("stdout", b"hello\nworld\n", when=WHEN)
        log.write("stderr", 'caf\xe9 "q" \\ \t\n'.encode(), when=WHEN)
    assert path.read_text() == (
        f'{{"time":"{STAMP}","stream":"stdout","log":"hello\\n"}}\n'
        f'{{"time":"{STAMP}","stream":"stdout","log":"world\\n"}}\n'
        f'{{"time":"{STAMP}","stream":"stderr","log":"caf\xe9 \\"q\\" \\\\ \\t\\n"}}\n'
    )
    assert read_records(path) == [
        {"time": STAMP, "stream": "stdout", "log": "hello\n"},
        {"time": STAMP, "stream": "stdout", "log": "world\n"},
        {"time": STAMP, "stream": "stderr", "log": 'caf\xe9 "q" \\ \t\n'},
    ]


def test_time_is_utc(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", b"a\n", when=WHEN.astimezone(timezone(timedelta(hours=-5))))
        log.write("stdout", b"b\n", when=WHEN.replace(tzinfo=None))
        before = datetime.now(UTC)
        log.write("stdout", b"c\n")
        after = datetime.now(UTC)
    first, second, third = read_records(path)
    assert first["time"] == second["time"] == STAMP
    assert third["time"].endswith("Z")
    stamp = datetime.strptime(third["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= stamp <= after


def test_creates_directory_and_file_with_modes(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = tmp_path / "a" / "b" / "json.log"
        with RotatingJsonLog(path, max_bytes=100, max_files=2):
            pass
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_bytes() == b""


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", b"hel", when=WHEN)
        assert path.read_bytes() == b""
        log.write("stdout", b"lo", when=WHEN)
        log.write("stdout", b"\nnext", when=WHEN)
        assert _file_logs(path) == ["hello\n"]
        log.write("stdout", b" one\nlast", when=WHEN)
        assert _file_logs(path) == ["hello\n", "next one\n"]
    # Closing writes what was still waiting, marked partial.
    last = read_records(path)[-1]
    del last["time"]
    assert last == {"stream": "stdout", "log": "last", "partial": True}


def test_streams_keep_separate_partial_lines(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", b"out-a", when=WHEN)
        log.write("stderr", b"err-a", when=WHEN)
        log.write("stdout", b" out-b\nout-c", when=WHEN)
        log.write("stderr", b" err-b\n", when=WHEN)
        log.write("stdout", b"\n", when=WHEN)
    assert [(record["stream"], record["log"]) for record in read_records(path)] == [
        ("stdout", "out-a out-b\n"),
        ("stderr", "err-a err-b\n"),
        ("stdout", "out-c\n"),
    ]


def test_flush_partial(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", b"o", when=WHEN)
        log.write("stderr", b"e", when=WHEN)
        log.flush_partial(when=WHEN)
        log.flush_partial(when=WHEN)  # nothing left the second time
        assert read_records(path) == [
            {"time": STAMP, "stream": "stdout", "log": "o", "partial": True},
            {"time": STAMP, "stream": "stderr", "log": "e", "partial": True},
        ]
        log.write("stdout", b"fresh\n", when=WHEN)
    assert _logs(path) == ["o", "e", "fresh\n"]


def test_long_line_is_split_into_partial_records(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", b"x" * (MAX_LINE + 10), when=WHEN)
        assert read_records(path) == [
            {"time": STAMP, "stream": "stdout", "log": "x" * MAX_LINE, "partial": True}
        ]
        log.write("stdout", b"y\n", when=WHEN)
        # Arriving whole makes no difference.
        log.write("stdout", b"z" * (2 * MAX_LINE + 1) + b"\n", when=WHEN)
        # A line of exactly MAX_LINE bytes, newline included, still fits one record.
        log.write("stdout", b"w" * (MAX_LINE - 1) + b"\n", when=WHEN)
    records = read_records(path)
    assert [(record["log"], record.get("partial", False)) for record in records] == [
        ("x" * MAX_LINE, True),
        ("x" * 10 + "y\n", False),
        ("z" * MAX_LINE, True),
        ("z" * MAX_LINE, True),
        ("z\n", False),
        ("w" * (MAX_LINE - 1) + "\n", False),
    ]


def test_long_line_split_keeps_characters_whole(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    text = "\u20ac" * MAX_LINE  # three bytes each: MAX_LINE is not a multiple
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", text.encode() + b"\n", when=WHEN)
    logs = _logs(path)
    assert "\ufffd" not in "".join(logs)
    assert "".join(logs) == text + "\n"
    assert all(len(entry.encode()) <= MAX_LINE for entry in logs)


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stderr", b"ok\xff\xfe \xc3\n", when=WHEN)
    assert _logs(path) == ["ok\ufffd\ufffd \ufffd\n"]
    assert path.read_bytes().decode() == (
        f'{{"time":"{STAMP}","stream":"stderr","log":"ok\ufffd\ufffd \ufffd\\n"}}\n'
    )


def test_unknown_stream_is_rejected(tmp_path: Path) -> None:
    with (
        RotatingJsonLog(tmp_path / "json.log", max_bytes=100, max_files=1) as log,
        pytest.raises(ValueError, match="stream"),
    ):
        log.write("stdin", b"x\n")


@pytest.mark.parametrize(("max_bytes", "max_files"), [(0, 1), (100, 0)])
def test_limits_must_be_positive(tmp_path: Path, max_bytes: int, max_files: int) -> None:
    with pytest.raises(ValueError):
        RotatingJsonLog(tmp_path / "json.log", max_bytes=max_bytes, max_files=max_files)


def _record_size(line: str) -> int:
    return len(f'{{"time":"{STAMP}","stream":"stdout","log":"{line}\\n"}}\n'.encode())


@pytest.mark.parametrize("one_write", [False, True])
def test_rotation_keeps_max_files(tmp_path: Path, one_write: bool) -> None:
    path = tmp_path / "json.log"
    lines = [f"line-{i:02d}" for i in range(11)]
    size = _record_size(lines[0])
    with RotatingJsonLog(path, max_bytes=2 * size, max_files=3) as log:
        if one_write:
            log.write("stdout", "".join(line + "\n" for line in lines).encode(), when=WHEN)
        else:
            for line in lines:
                log.write("stdout", f"{line}\n".encode(), when=WHEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["json.log", "json.log.1", "json.log.2"]
    assert _file_logs(path) == ["line-10\n"]
    assert _file_logs(tmp_path / "json.log.1") == ["line-08\n", "line-09\n"]
    assert _file_logs(tmp_path / "json.log.2") == ["line-06\n", "line-07\n"]
    assert all(p.stat().st_size <= 2 * size for p in tmp_path.iterdir())
    assert _logs(path) == [f"{line}\n" for line in lines[6:]]


def test_rotation_with_one_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    size = _record_size("line-00")
    with RotatingJsonLog(path, max_bytes=2 * size, max_files=1) as log:
        for i in range(5):
            log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
            if i == 1:
                assert _file_logs(path) == ["line-00\n", "line-01\n"]
    assert [p.name for p in tmp_path.iterdir()] == ["json.log"]
    assert _file_logs(path) == ["line-04\n"]


def test_oversized_record_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=10, max_files=2) as log:
        log.write("stdout", b"far longer than ten bytes\n", when=WHEN)
        assert _file_logs(path) == ["far longer than ten bytes\n"]
        log.write("stdout", b"next\n", when=WHEN)
    assert _file_logs(path) == ["next\n"]
    assert _file_logs(tmp_path / "json.log.1") == ["far longer than ten bytes\n"]


def test_reopened_log_appends_and_counts_existing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    size = _record_size("line-00")
    with RotatingJsonLog(path, max_bytes=2 * size, max_files=2) as log:
        log.write("stdout", b"line-00\n", when=WHEN)
    with RotatingJsonLog(path, max_bytes=2 * size, max_files=2) as log:
        log.write("stdout", b"line-01\n", when=WHEN)
        assert _file_logs(path) == ["line-00\n", "line-01\n"]
        log.write("stdout", b"line-02\n", when=WHEN)
    assert _file_logs(path) == ["line-02\n"]
    assert _file_logs(tmp_path / "json.log.1") == ["line-00\n", "line-01\n"]


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    log = RotatingJsonLog(tmp_path / "json.log", max_bytes=100, max_files=1)
    log.close()
    log.close()
    with pytest.raises(ValueError):
        log.write("stdout", b"x\n")


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "json.log"
    count = 500

    def pump(log: RotatingJsonLog, stream: str) -> None:
        for i in range(count):
            log.write(stream, f"{stream} {i}".encode())
            log.write(stream, b"\n")

    with RotatingJsonLog(path, max_bytes=4096, max_files=1000) as log:
        threads = [threading.Thread(target=pump, args=(log, s)) for s in ("stdout", "stderr")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    records = read_records(path)
    for stream in ("stdout", "stderr"):
        assert [r["log"] for r in records if r["stream"] == stream] == [
            f"{stream} {i}\n" for i in range(count)
        ]


def _rotated_log(tmp_path: Path) -> Path:
    path = tmp_path / "json.log"
    size = _record_size("line-00")
    with RotatingJsonLog(path, max_bytes=3 * size, max_files=4) as log:
        for i in range(8):
            log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
    return path  # json.log.2: 0-2, json.log.1: 3-5, json.log: 6-7


def test_read_records_order_and_tail(tmp_path: Path) -> None:
    path = _rotated_log(tmp_path)
    every = [f"line-{i:02d}\n" for i in range(8)]
    assert _logs(path) == every
    for tail in (0, 1, 2, 3, 5, 8, 100):
        assert [r["log"] for r in read_records(path, tail=tail)] == every[len(every) - tail :]
    assert [r["log"] for r in read_records(path, include_rotated=False)] == every[6:]
    assert [r["log"] for r in read_records(path, tail=1, include_rotated=False)] == every[7:]
    with pytest.raises(ValueError):
        read_records(path, tail=-1)


def test_read_records_tolerates_missing_and_damaged_files(tmp_path: Path) -> None:
    assert read_records(tmp_path / "absent.log") == []
    assert read_records(tmp_path / "no" / "dir.log") == []
    path = tmp_path / "json.log"
    path.write_text(
        f'{{"time":"{STAMP}","stream":"stdout","log":"a\\n"}}\n'
        "[1, 2]\n"
        f'{{"time":"{STAMP}","stream":"stdout","lo'
    )
    (tmp_path / "json.log.bak").write_text("not a rotated file\n")
    assert _logs(path) == ["a\n"]


# -- bounded memory -------------------------------------------------------------------


def _peak(work: Callable[[], object]) -> int:
    """The most memory Python held at once while *work* ran, above what it held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def test_unfinished_line_is_bounded(tmp_path: Path) -> None:
    """10 MiB without a newline, in small writes: what waits for the newline stays at
    MAX_LINE, the rest goes out as partial records, and memory stays small."""
    path = tmp_path / "json.log"
    chunk = b"x" * 1000
    pending: list[int] = []

    def pump() -> None:
        with RotatingJsonLog(path, max_bytes=64 << 20, max_files=1) as log:
            for _ in range(10 * 1024 * 1024 // len(chunk)):
                log.write("stdout", chunk, when=WHEN)
                pending.append(sum(len(data) for data in log._pending.values()))

    assert _peak(pump) < 1 << 20
    assert max(pending) <= MAX_LINE
    records = read_records(path)
    assert sum(len(r["log"]) for r in records) == 10 * 1024 * 1024 // len(chunk) * len(chunk)
    assert all(r.get("partial") for r in records)


def _big_log(tmp_path: Path, lines: int = 12_000, width: int = 1000) -> tuple[Path, list[str]]:
    """About 12 MiB of records in 1 MiB files (json.log and 12 rotated ones)."""
    path = tmp_path / "json.log"
    text = [f"{i:07d} {'y' * (width - 9)}\n" for i in range(lines)]
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=64) as log:
        for start in range(0, lines, 64):
            log.write("stdout", "".join(text[start : start + 64]).encode(), when=WHEN)
    assert len(list(tmp_path.glob("json.log.*"))) > 10
    return path, text


def test_streaming_read_of_a_large_log_is_bounded(tmp_path: Path) -> None:
    """12 MiB in 13 files, read whole and by tails: every record once, in order, in less
    than 1 MiB (a read used to load every file)."""
    path, text = _big_log(tmp_path)
    for tail in (None, 0, 1, 5_000, 10 * len(text)):
        want = len(text) if tail is None else min(tail, len(text))
        seen = {"count": 0, "next": len(text) - want}

        def read(tail: int | None = tail, seen: dict[str, int] = seen) -> None:
            for record in iter_records(path, tail=tail):
                assert int(record["log"][:7]) == seen["next"]
                seen["next"] += 1
                seen["count"] += 1

        assert _peak(read) < 1 << 20, tail
        assert seen == {"count": want, "next": len(text)}, tail


def _record_line(log: str, time: str = STAMP, **extra: object) -> bytes:
    return json.dumps({"time": time, "stream": "stdout", "log": log, **extra}).encode() + b"\n"


@pytest.mark.parametrize("block", [31, 100, 4096, logs_module._BLOCK])
def test_tail_across_rotated_files_with_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Records across three files with damage among them: torn records, lines that are not
    records, blank lines, a line far longer than any record; small blocks split lines
    everywhere. Every tail is the end of the full read, and the full read every record."""
    monkeypatch.setattr(logs_module, "_BLOCK", block)
    path = tmp_path / "json.log"
    (tmp_path / "json.log.2").write_bytes(
        b"x" * (MAX_RECORD + 5)  # damage longer than a record, no newline before it
        + b"\n"
        + _record_line("a\n")
        + b"\n\n[1, 2]\n"
        + _record_line("b", partial=True)
        + b'{"time": 5, "stream": "stdout", "log": "wrong types"}\n'
        + _record_line("c\n")
    )
    (tmp_path / "json.log.1").write_bytes(
        _record_line("d\n")
        + b"z" * (3 * MAX_RECORD)  # overlong, ended by a newline
        + b"\n"
        + _record_line("\u20ac" * 100 + "\n")
        + _record_line("e\n")[:-9]  # torn by a crash
    )
    path.write_bytes(
        _record_line("f\n")
        + b"{\n"
        + _record_line("g\n")
        + b"[" * 100_000  # too deep for the parser, and too long
        + b"\n"
        + _record_line("h\n")
        + _record_line("i\n")[:-1]  # whole but for its newline: still a record
    )
    every = ["a\n", "b", "c\n", "d\n", "\u20ac" * 100 + "\n", "f\n", "g\n", "h\n", "i\n"]
    assert [r["log"] for r in iter_records(path)] == every
    for tail in range(len(every) + 2):
        want = every[max(0, len(every) - tail) :]
        assert [r["log"] for r in iter_records(path, tail=tail)] == want, tail
    assert [r["log"] for r in iter_records(path, tail=2, include_rotated=False)] == every[-2:]


def test_read_meanwhile_rotated_away_neither_loses_nor_repeats(tmp_path: Path) -> None:
    """A read holds the files it started with: rotations while it goes on (every file moved
    or deleted) change nothing in what it returns."""
    path = tmp_path / "json.log"
    size = _record_size("line-00")
    with RotatingJsonLog(path, max_bytes=2 * size, max_files=3) as log:
        for i in range(6):
            log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
        for tail in (None, 4):
            records = iter_records(path, tail=tail)
            first = next(records)
            for i in range(6, 12):
                log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
            got = [first["log"], *(r["log"] for r in records)]
            start = 0 if tail is None else 2
            assert got == [f"line-{i:02d}\n" for i in range(start, 6)], tail
            # The next round reads what is there now, not what was before.
            for i in range(12, 18):
                log.write("stdout", f"line-{i - 12:02d}\n".encode(), when=WHEN)


# -- failures and recovery ---------------------------------------------------------------


def _block_rotation(directory: Path) -> None:
    """The oldest rotated name taken by a directory with something in it: the rotation
    cannot delete it, as when a file there is immutable or on a broken disk."""
    directory.mkdir()
    (directory / "keep").write_text("x")


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "supervisor.daemon"]


def test_failed_rotation_recovers_and_each_failure_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.daemon")
    path = tmp_path / "json.log"
    oldest = tmp_path / "json.log.2"
    size = _record_size("line-00")
    with RotatingJsonLog(path, max_bytes=2 * size, max_files=3) as log:
        for i in range(4):
            log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
        _block_rotation(oldest)
        for i in (4, 5):
            with pytest.raises(IsADirectoryError):
                log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
        assert _file_logs(path) == ["line-02\n", "line-03\n"]  # nothing lost but 4 and 5
        assert _file_logs(tmp_path / "json.log.1") == ["line-00\n", "line-01\n"]
        assert _messages(caplog) == [(logging.ERROR, f"cannot write {path}: {_eisdir(oldest)}")]

        shutil.rmtree(oldest)  # the cause goes: writing and rotating work again
        for i in (6, 7, 8):
            log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
        assert _file_logs(path) == ["line-08\n"]
        assert _file_logs(tmp_path / "json.log.1") == ["line-06\n", "line-07\n"]
        assert _file_logs(oldest) == ["line-02\n", "line-03\n"]
        assert _messages(caplog)[1:] == [(logging.INFO, f"writing {path} again")]

        # A new failure is a new episode: logged again, once.
        (tmp_path / "json.log.2").unlink()
        _block_rotation(oldest)
        log.write("stdout", b"line-09\n", when=WHEN)
        for i in (10, 11):
            with pytest.raises(IsADirectoryError):
                log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
        assert [level for level, _ in _messages(caplog)] == [
            logging.ERROR,
            logging.INFO,
            logging.ERROR,
        ]


def _eisdir(path: Path) -> OSError:
    return IsADirectoryError(21, "Is a directory", str(path))


def test_rotation_retried_after_a_failed_open_keeps_older_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new file cannot be opened (out of file descriptors) after the current one was
    moved aside: the retries open it, and do not move files again (each retry used to
    push one more file of history out)."""
    path = tmp_path / "json.log"
    size = _record_size("line-00")
    real_open = logs_module._open
    failures = [OSError(24, "Too many open files")] * 2

    def failing_open(target: Path) -> Any:
        if failures:
            raise failures.pop()
        return real_open(target)

    with RotatingJsonLog(path, max_bytes=2 * size, max_files=3) as log:
        log.write("stdout", b"line-00\nline-01\n", when=WHEN)
        monkeypatch.setattr(logs_module, "_open", failing_open)
        for i in (2, 3):
            with pytest.raises(OSError, match="Too many open files"):
                log.write("stdout", f"line-{i:02d}\n".encode(), when=WHEN)
        log.write("stdout", b"line-04\nline-05\nline-06\n", when=WHEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["json.log", "json.log.1", "json.log.2"]
    assert _file_logs(tmp_path / "json.log.2") == ["line-00\n", "line-01\n"]
    assert _file_logs(tmp_path / "json.log.1") == ["line-04\n", "line-05\n"]
    assert _file_logs(path) == ["line-06\n"]


def test_failed_write_leaves_whole_records(tmp_path: Path) -> None:
    """A disk that fills up mid-record (here a file size limit, which fails writes the same
    way): the record that did not fit is cut off, not left torn, so the record written
    once there is room again is not glued to it; and it is not written late either."""
    path = tmp_path / "json.log"
    with RotatingJsonLog(path, max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", b"first\n", when=WHEN)
        size = path.stat().st_size
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
        try:
            with pytest.raises(OSError, match="too large"):
                log.write("stdout", b"lost\n", when=WHEN)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)
        assert path.stat().st_size == size
        log.write("stdout", b"after\n", when=WHEN)
    assert _file_logs(path) == ["first\n", "after\n"]


@pytest.mark.anyio
async def test_copy_logs_logs_each_failure_once_and_the_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A container's output goes on while its log fails, recovers and fails again: each
    failure shows in the daemon's log once, when it starts, and the recovery once (the
    first failure used to be the only line for the rest of the run)."""
    caplog.set_level(logging.INFO, logger="supervisor.daemon")
    path = tmp_path / "c1.log"
    oldest = tmp_path / "c1.log.1"
    size = _record_size("line-00")
    journal = RotatingJsonLog(path, max_bytes=size, max_files=2)
    feed, reader = anyio.create_memory_object_stream[bytes](1)
    live, taken = anyio.create_memory_object_stream[Any](100)
    drained = anyio.Event()

    async def line(i: int) -> None:
        await feed.send(f"line-{i:02d}\n".encode())
        with anyio.fail_after(10):
            _when, _stream, chunk = await taken.receive()  # written, or failed
        assert chunk == f"line-{i:02d}\n".encode()

    with journal, taken:
        async with anyio.create_task_group() as tg:
            tg.start_soon(copy_logs, [("stdout", reader)], journal, {live}, drained)
            await line(0)
            _block_rotation(oldest)
            for i in (1, 2, 3):
                await line(i)  # each needs a rotation, which fails
            shutil.rmtree(oldest)
            for i in (4, 5):
                await line(i)
            oldest.unlink()
            _block_rotation(oldest)
            for i in (6, 7):
                await line(i)
            feed.close()
            with anyio.fail_after(10):
                await drained.wait()
    assert _messages(caplog) == [
        (logging.ERROR, f"cannot write {path}: {_eisdir(oldest)}"),
        (logging.INFO, f"writing {path} again"),
        (logging.ERROR, f"cannot write {path}: {_eisdir(oldest)}"),
    ]
    assert _file_logs(path) == ["line-05\n"]


# -- live followers -------------------------------------------------------------------


def test_follower_is_bounded_by_bytes() -> None:
    chunk = b"x" * 1000
    follower = Follower(limit=3 * (len(chunk) + CHUNK_COST))
    listeners: set[Any] = {follower}
    for _ in range(3):
        publish(listeners, (WHEN, "stdout", chunk))
    assert listeners == {follower} and not follower.dropped
    publish(listeners, (WHEN, "stdout", chunk))
    assert listeners == set() and follower.dropped

    # Tiny chunks count too; what was taken makes room again.
    follower = Follower(limit=10 * (1 + CHUNK_COST))

    async def take_one() -> None:
        assert await follower.__anext__() == (WHEN, "stdout", b"a")

    for _ in range(10):
        follower.send_nowait((WHEN, "stdout", b"a"))
    with pytest.raises(anyio.WouldBlock):
        follower.send_nowait((WHEN, "stdout", b"a"))
    anyio.run(take_one)
    follower.send_nowait((WHEN, "stdout", b"a"))


class _Daemon:
    """What ControlService.logs uses of the daemon."""

    def __init__(self, log_dir: Path, running: bool) -> None:
        self.config = SimpleNamespace(log_dir=log_dir)
        self.definitions = {"c1": None}
        self.output_listeners: dict[str, set[Any]] = {}
        self.running = running

    def is_running(self, cid: str) -> bool:
        return self.running


async def _drain(calls: Any) -> Iterator[pb.LogRecord]:
    return iter([record async for record in calls])


@pytest.mark.anyio
async def test_logs_call_streams_a_large_log(tmp_path: Path) -> None:
    """`logs` of a 12 MiB log in 13 files, without and with --tail: every record once, in
    order, and the call never holds more than a few batches (it used to load the files)."""
    path, text = _big_log(tmp_path)
    path.rename(tmp_path / "c1.log")
    for rotated in tmp_path.glob("json.log.*"):
        rotated.rename(tmp_path / rotated.name.replace("json.log", "c1.log"))
    service = ControlService(_Daemon(tmp_path, running=False))  # type: ignore[arg-type]
    for tail in (None, 7_000):
        request = pb.LogsRequest(id="c1", tail=tail or 0, has_tail=tail is not None)
        numbers: list[int] = []
        tracemalloc.start()
        try:
            async for record in service.logs(request):
                numbers.append(int(record.line[:7]))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        want = len(text) if tail is None else tail
        assert numbers == list(range(len(text) - want, len(text)))
        assert peak < 4 << 20, (tail, peak)


@pytest.mark.anyio
async def test_paused_follower_is_dropped_past_its_bound(tmp_path: Path) -> None:
    """A `logs -f` client that stops reading holds at most FOLLOWER_LIMIT bytes of output;
    past that it is dropped: it gets what was queued, then an error that says why."""
    with RotatingJsonLog(tmp_path / "c1.log", max_bytes=1 << 20, max_files=1) as log:
        log.write("stdout", b"from the file\n", when=WHEN)
    daemon = _Daemon(tmp_path, running=True)
    calls = ControlService(daemon).logs(pb.LogsRequest(id="c1", follow=True))  # type: ignore[arg-type]
    with anyio.fail_after(10):
        first = await calls.__anext__()
    assert first.line == b"from the file\n"
    [listeners] = daemon.output_listeners.values()
    chunk = b"z" * 65536
    sent = 0
    now = datetime.now(UTC)
    while listeners and sent < 4 * FOLLOWER_LIMIT:  # the client is paused meanwhile
        publish(listeners, (now, "stdout", chunk))
        sent += len(chunk)
    assert not listeners, "a paused follower is never dropped"
    assert FOLLOWER_LIMIT - 2 * len(chunk) < sent <= FOLLOWER_LIMIT + len(chunk)
    received = 0
    with anyio.fail_after(10), pytest.raises(GRPCError) as raised:
        async for record in calls:
            received += len(record.line)
    assert received == sent - len(chunk)
    assert raised.value.status is Status.RESOURCE_EXHAUSTED
    assert raised.value.message is not None and "too slow" in raised.value.message
