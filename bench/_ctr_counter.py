"""Run `ctr events` (the Go reference subscriber) and print, as JSON, the wall
time at which it had seen each tenth of N task-exit events and the CPU time
`ctr events` itself used from the first of them to the last, then exit.

    python bench/_ctr_counter.py SOCKET N
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    socket, n = sys.argv[1], int(sys.argv[2])
    ctr = shutil.which("ctr") or "ctr"
    proc = subprocess.Popen([ctr, "-a", socket, "events"], stdout=subprocess.PIPE, bufsize=1 << 20)
    assert proc.stdout is not None
    print("ready", flush=True)
    marks: list[float] = []
    seen = 0
    step = max(n // 10, 1)
    cpu_first = cpu_last = 0.0
    for line in proc.stdout:
        if b"/tasks/exit" in line and b"bench-" in line:
            seen += 1
            if seen == 1:
                cpu_first = cpu_seconds(proc.pid)
            if seen % step == 0:
                marks.append(time.time())
            if seen >= n:
                cpu_last = cpu_seconds(proc.pid)
                break
    proc.terminate()
    proc.wait()
    cpu = {"cpu_seconds": cpu_last - cpu_first}
    print(json.dumps({"seen": seen, "marks": marks, **cpu}), flush=True)


if __name__ == "__main__":
    main()
