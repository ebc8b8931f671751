import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from supervisor.daemon._logs import MAX_LINE, RotatingJsonLog, read_records

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
