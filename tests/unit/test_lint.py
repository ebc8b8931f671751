"""The house bar: mypy strict and ruff clean on supervisor/ (and ruff on tests/)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return found


def test_mypy_strict() -> None:
    done = subprocess.run([_tool("mypy")], cwd=TOP, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    for args in (["check", "supervisor", "tests", "bench"], ["format", "--check", "supervisor"]):
        done = subprocess.run(
            [_tool("ruff"), *args], cwd=TOP, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
