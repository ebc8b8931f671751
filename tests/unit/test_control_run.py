"""A run that fails leaves nothing in the daemon's memory: no output listener, no exit waiter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor._proto.supervisor import v1 as pb
from supervisor.daemon._config import DaemonConfig
from supervisor.daemon._control import ControlService, _definition
from supervisor.daemon._keeper import Keeper
from supervisor.errors import InvalidArgument

pytestmark = pytest.mark.anyio


class FailingRuns(Keeper):
    async def run_container(self, definition: Any, *, remove: bool, stdin: bool) -> Any:
        raise InvalidArgument("exec: no such command")


@pytest.mark.parametrize("attach", [True, False])
async def test_a_failed_run_leaves_no_listener_or_waiter(tmp_path: Path, attach: bool) -> None:
    keeper = FailingRuns(DaemonConfig(state_dir=tmp_path))
    service = ControlService(keeper)  # type: ignore[arg-type]
    d = pb.Definition(id="job", rootfs=str(tmp_path), command=["true"])
    with pytest.raises(InvalidArgument):
        await service._create_for_run(_definition(d), pb.RunRequest(definition=d, attach=attach))
    assert keeper.output_listeners == {} and keeper._exits == {}
