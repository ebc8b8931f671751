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


async def test_list_reply_is_what_betterproto_would_send(tmp_path: Path) -> None:
    """ps's reply is encoded by the CLI's codec; it must decode to what the
    generated encoder would have sent."""
    from supervisor.client import ContainerInfo, ProcessState, TaskStatus
    from supervisor.daemon._control import StrictCodec

    prefix = "io.containerd-supervisor/"
    labels = {
        prefix + "managed": "true", prefix + "restart-count": "2", prefix + "exit-code": "3",
        prefix + "command": '["sleep", "1"]', prefix + "started-at": "1764470000.5",
        prefix + "rootfs": "/srv/r", "team": "a ü",
    }  # fmt: skip
    infos = [ContainerInfo(f"c{i}", labels, "r", {}, "", None, None) for i in range(3)]
    running = ProcessState("c0", None, 42, TaskStatus.RUNNING, None, False, "", "", "")

    class Listing(Keeper):
        @property
        def client(self) -> Any:
            class Fake:
                async def list_containers(self, *filters: str) -> list[ContainerInfo]:
                    return infos

                async def list_tasks(self) -> list[ProcessState]:
                    return [running]

            return Fake()

    keeper = Listing(DaemonConfig(state_dir=tmp_path))
    keeper.definitions.update({f"c{i}": None for i in range(3)})  # type: ignore[misc]
    keeper.problems = {"c1": "left as it is"}  # type: ignore[attr-defined]
    service = ControlService(keeper)  # type: ignore[arg-type]
    reply = await service.list(pb.ListRequest(all=True))
    data = StrictCodec().encode(reply, pb.ListResponse)
    expected = pb.ListResponse(
        containers=[service._info_of(i.id, labels, running if i.id == "c0" else None)
                    for i in infos]
    )  # fmt: skip
    assert pb.ListResponse.parse(data) == expected
    assert [c.status for c in expected.containers] == ["running", "stopped", "stopped"]
    assert expected.containers[1].problem == "left as it is"
