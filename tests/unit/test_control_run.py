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


@pytest.mark.parametrize("count", [3, 40])  # stale ones read one by one / in one listing
async def test_list_reply_is_what_betterproto_would_send(tmp_path: Path, count: int) -> None:
    """ps's reply is encoded by the CLI's codec; it must decode to what the
    generated encoder would have sent, read from containerd or from the view."""
    from supervisor.client import ContainerInfo, ProcessState, TaskStatus
    from supervisor.daemon._control import StrictCodec
    from supervisor.errors import NotFound

    prefix = "io.containerd-supervisor/"
    labels = {
        prefix + "managed": "true", prefix + "restart-count": "2", prefix + "exit-code": "3",
        prefix + "command": '["sleep", "1"]', prefix + "started-at": "1764470000.5",
        prefix + "rootfs": "/srv/r", "team": "a \u00fc",
    }  # fmt: skip
    ids = [f"c{i:02d}" for i in range(count)]
    infos = {cid: ContainerInfo(cid, labels, "r", {}, "", None, None) for cid in ids}
    running = ProcessState("c00", None, 42, TaskStatus.RUNNING, None, False, "", "", "")
    calls: list[str] = []

    class Fake:
        async def list_containers(self, *filters: str) -> list[ContainerInfo]:
            calls.append("list_containers")
            return list(infos.values())

        async def list_tasks(self) -> list[ProcessState]:
            calls.append("list_tasks")
            return [running]

        async def load_container(self, cid: str) -> Any:
            calls.append("load_container")
            return type("C", (), {"info": infos[cid]})

        async def process_state(self, cid: str) -> ProcessState:
            calls.append("process_state")
            if cid != "c00":
                raise NotFound(cid)
            return running

    class Listing(Keeper):
        @property
        def client(self) -> Any:
            return Fake()

    keeper = Listing(DaemonConfig(state_dir=tmp_path))
    keeper.definitions.update({cid: None for cid in ids})  # type: ignore[misc]
    keeper.problems = {"c01": "left as it is"}  # type: ignore[attr-defined]
    service = ControlService(keeper)  # type: ignore[arg-type]
    expected = pb.ListResponse(
        containers=[service._info_of(cid, labels, running if cid == "c00" else None)
                    for cid in ids]
    )  # fmt: skip
    for _ in range(2):  # read from containerd, then from the view
        reply = await service.list(pb.ListRequest(all=True))
        data = StrictCodec().encode(reply, pb.ListResponse)
        assert pb.ListResponse.parse(data) == expected
    assert calls == (["list_containers", "list_tasks"] if count > 16 else
                     ["load_container", "process_state"] * count)  # fmt: skip
    assert [c.status for c in expected.containers[:3]] == ["running", "stopped", "stopped"]
    assert expected.containers[1].problem == "left as it is"
    running_only = await service.list(pb.ListRequest(all=False))
    parsed = pb.ListResponse.parse(StrictCodec().encode(running_only, pb.ListResponse))
    assert [c.id for c in parsed.containers] == ["c00"]
    keeper.problems = {}  # type: ignore[attr-defined]
    keeper.view.touch("c00")  # an event: read again, one by one
    calls.clear()
    again = pb.ListResponse.parse(
        StrictCodec().encode(await service.list(pb.ListRequest(all=True)), pb.ListResponse)
    )
    assert calls == ["load_container", "process_state"]
    assert again.containers[1].problem == ""  # what the daemon adds is not kept stale


async def test_list_keeps_a_container_touched_while_others_are_read(tmp_path: Path) -> None:
    """A container fresh when `ps` began and touched (an event, an operation's
    lock) while `ps` read the stale ones was left out of the reply, and out of
    the metrics' scrape: it is shown as the call found it."""
    from supervisor.client import ContainerInfo, ProcessState, TaskStatus

    labels = {"io.containerd-supervisor/managed": "true"}
    infos = {cid: ContainerInfo(cid, labels, "r", {}, "", None, None) for cid in ("a", "b")}
    keeper: Keeper

    class Fake:
        async def load_container(self, cid: str) -> Any:
            keeper.view.touch("a")  # meanwhile: an exit event for a
            return type("C", (), {"info": infos[cid]})

        async def process_state(self, cid: str) -> ProcessState:
            return ProcessState(cid, None, 7, TaskStatus.RUNNING, None, False, "", "", "")

    class Listing(Keeper):
        @property
        def client(self) -> Any:
            return Fake()

    keeper = Listing(DaemonConfig(state_dir=tmp_path))
    keeper.definitions.update({"a": None, "b": None})  # type: ignore[dict-item]
    keeper.problems = {}  # type: ignore[attr-defined]
    service = ControlService(keeper)  # type: ignore[arg-type]
    for through in ("list", "current"):
        keeper.view.store("a", keeper.view.generation("a"), infos["a"], None)  # fresh
        keeper.view.touch("b")  # stale: read again, and a is touched meanwhile
        if through == "current":  # the metrics' scrape
            assert sorted(await keeper.current()) == ["a", "b"]
        else:
            reply = await service.list(pb.ListRequest(all=True))
            parsed = pb.ListResponse.parse(reply.data)
            assert [c.id for c in parsed.containers] == ["a", "b"]
