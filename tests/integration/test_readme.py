"""README's examples run, and print what their comments say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from supervisor.testing import ContainerdProcess, namespace_leftovers, remove_namespace_dirs

README = Path(__file__).resolve().parents[2] / "README.md"


def _examples() -> list[str]:
    text = README.read_text()
    blocks = []
    for marker in re.finditer(r"<!-- readme-example:", text):
        match = re.compile(r"```python\n(.*?)```", re.S).search(text, marker.end())
        assert match is not None
        blocks.append(match.group(1))
    return blocks


def _run(code: str, containerd: ContainerdProcess, rootfs: Path) -> list[str]:
    env = dict(os.environ, CONTAINERD_ADDRESS=containerd.address, ROOTFS=str(rootfs))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_readme_has_two_examples() -> None:
    assert len(_examples()) == 2


def test_client_example(containerd: ContainerdProcess, rootfs: Path) -> None:
    lines = _run(_examples()[0], containerd, rootfs)
    assert lines[0] == "hello 3"
    assert lines[1].startswith("gone: ")
    assert namespace_leftovers("example") == []
    remove_namespace_dirs("example")


def test_supervisor_example(containerd: ContainerdProcess, rootfs: Path) -> None:
    lines = _run(_examples()[1], containerd, rootfs)
    assert lines[:3] == ["job create", "job start", "job exit"]
    assert re.fullmatch(r"  code 7 at \d\d:\d\d:\d\d", lines[3])
    assert namespace_leftovers("example-events") == []
    remove_namespace_dirs("example-events")
