"""README's embedding example runs, and prints what its comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from supervisor.testing import ContainerdProcess, namespace_leftovers, remove_namespace_dirs

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    text = README.read_text()
    marker = text.index("<!-- readme-example:")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, marker)
    assert match is not None
    return match.group(1)


def test_readme_example_runs(containerd: ContainerdProcess, rootfs: Path) -> None:
    env = dict(os.environ, CONTAINERD_ADDRESS=containerd.address, ROOTFS=str(rootfs))
    done = subprocess.run(
        [sys.executable, "-c", _example()], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "hello 3"
    assert lines[1].startswith("gone: ")
    assert namespace_leftovers("example") == []
    remove_namespace_dirs("example")
