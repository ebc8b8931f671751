"""A scrape's CPU, memory and pids figures read from cgroup files (v1 and v2
layouts), and refused where they are not plain kernel files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.daemon import _cgroups as cgroups
from supervisor.daemon._cgroups import Figures


def _v1(root: Path, path: str, limit: int) -> None:
    files = {
        "cpuacct": {"cpuacct.usage": "10190198\n"},
        "memory": {"memory.usage_in_bytes": "212992\n", "memory.limit_in_bytes": f"{limit}\n"},
        "pids": {"pids.current": "3\n"},
    }
    for controller, entries in files.items():
        base = root / controller / path.lstrip("/")
        base.mkdir(parents=True)
        for name, text in entries.items():
            (base / name).write_text(text)


def test_v1_figures_and_no_limit(tmp_path: Path) -> None:
    _v1(tmp_path, "/ns/a", 9223372036854771712)
    assert cgroups.read("/ns/a", v2=False, root=tmp_path) == Figures(10190198, 212992, None, 3)
    _v1(tmp_path / "limited", "/ns/b", 8 << 20)
    figures = cgroups.read("/ns/b", v2=False, root=tmp_path / "limited")
    assert figures is not None and figures.memory_limit == 8 << 20


def test_v2_figures(tmp_path: Path) -> None:
    base = tmp_path / "ns" / "a"
    base.mkdir(parents=True)
    (base / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (base / "memory.current").write_text("4096\n")
    (base / "memory.max").write_text("max\n")
    (base / "pids.current").write_text("2\n")
    assert cgroups.read("/ns/a", v2=True, root=tmp_path) == Figures(1_500_000, 4096, None, 2)
    (base / "memory.max").write_text("1048576\n")
    figures = cgroups.read("/ns/a", v2=True, root=tmp_path)
    assert figures is not None and figures.memory_limit == 1048576


@pytest.mark.parametrize("path", ["system.slice:ns:a", "ns/a", "/ns/../../etc", "/ns/missing", ""])
def test_what_is_not_a_plain_readable_cgroup_path_gives_none(tmp_path: Path, path: str) -> None:
    _v1(tmp_path, "/ns/a", 1 << 63)
    assert cgroups.read(path, v2=False, root=tmp_path) is None


def test_a_symlinked_file_is_not_followed(tmp_path: Path) -> None:
    _v1(tmp_path, "/ns/a", 1 << 63)
    target = tmp_path / "memory" / "ns" / "a" / "memory.usage_in_bytes"
    os.unlink(target)
    (tmp_path / "elsewhere").write_text("1\n")
    target.symlink_to(tmp_path / "elsewhere")
    assert cgroups.read("/ns/a", v2=False, root=tmp_path) is None


def test_garbage_in_a_file_gives_none(tmp_path: Path) -> None:
    _v1(tmp_path, "/ns/a", 1 << 63)
    (tmp_path / "pids" / "ns" / "a" / "pids.current").write_text("lots\n")
    assert cgroups.read("/ns/a", v2=False, root=tmp_path) is None
