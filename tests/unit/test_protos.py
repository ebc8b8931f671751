"""The committed supervisor/_proto must be exactly what scripts/gen-protos makes."""

import filecmp
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]


def _diff(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [f"only in committed: {n}" for n in cmp.left_only]
    out += [f"only in fresh: {n}" for n in cmp.right_only]
    out += [f"differs: {n}" for n in cmp.diff_files]
    for name, sub in cmp.subdirs.items():
        out += [f"{name}/{line}" for line in _diff(a / name, b / name)] if sub else []
    return out


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = tmp_path / "proto"
    subprocess.run(
        [str(TOP / "scripts" / "gen-protos"), str(fresh)],
        check=True,
        capture_output=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert _diff(TOP / "supervisor" / "_proto", fresh) == []
