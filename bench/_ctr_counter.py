"""Run `ctr events` (the Go reference subscriber) and print, as JSON, the wall
time at which it had seen each tenth of N task-exit events, then exit.

    python bench/_ctr_counter.py SOCKET N
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time


def main() -> None:
    socket, n = sys.argv[1], int(sys.argv[2])
    ctr = shutil.which("ctr") or "ctr"
    proc = subprocess.Popen([ctr, "-a", socket, "events"], stdout=subprocess.PIPE, bufsize=1 << 20)
    assert proc.stdout is not None
    print("ready", flush=True)
    marks: list[float] = []
    seen = 0
    step = max(n // 10, 1)
    for line in proc.stdout:
        if b"/tasks/exit" in line and b"bench-" in line:
            seen += 1
            if seen % step == 0:
                marks.append(time.time())
            if seen >= n:
                break
    proc.terminate()
    proc.wait()
    print(json.dumps({"seen": seen, "marks": marks}), flush=True)


if __name__ == "__main__":
    main()
