"""A sync that times out says so: READY waits for every first sync, and a
restart once took 60 s to READY with nothing in the log."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from supervisor.daemon import _daemon
from supervisor.daemon._config import DaemonConfig
from supervisor.daemon._daemon import Daemon

pytestmark = pytest.mark.anyio


class _HungSync(Daemon):
    async def sync(self, cid: str, **_: Any) -> float | None:
        await anyio.sleep(10)  # a Create containerd does not answer
        return None


async def test_a_sync_that_times_out_is_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_daemon, "OPERATION_TIMEOUT", 0.05)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)  # restored after: the daemon unsets them
    daemon = _HungSync(DaemonConfig())
    with caplog.at_level(logging.WARNING, logger="supervisor.daemon"):
        why = await daemon._sync_and_report("c1", first=True)
    assert why is not None and why.startswith("c1: timed out after 0.")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("sync of c1 timed out after 0.")
    assert "c1" in daemon.scheduler._due  # retried
