"""Shim groups without containerd: the definition key, the config's cap, the
run request's field, the cap's bookkeeping and the creates' turns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from supervisor._proto.supervisor import v1 as pb
from supervisor.client import ContainerInfo
from supervisor.daemon._config import ConfigError, DaemonConfig, load_config
from supervisor.daemon._control import _definition
from supervisor.daemon._definitions import ContainerDefinition, DefinitionError, load_definition
from supervisor.daemon._groups import (
    DEFAULT_MAX_MEMBERS,
    GROUP_ANNOTATION,
    MAX_MEMBERS_LIMIT,
    ShimGroups,
    annotation_value,
    group_of_spec,
)
from supervisor.daemon._keeper import Keeper
from supervisor.daemon._labels import SHIM_GROUP, definition_from_labels
from supervisor.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.anyio

BAD_NAMES = ["", "a b", "-a", "a..b", "a/b", "x" * 77, "é"]


def definition_file(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "rootfs").mkdir(exist_ok=True)
    path = tmp_path / "app.toml"
    path.write_text(f'{extra}\nrootfs = "{tmp_path / "rootfs"}"\ncommand = ["/bin/app"]\n')
    return path


def test_definition_key(tmp_path: Path) -> None:
    definition = load_definition(definition_file(tmp_path, 'shim_group = "web.front-1"'))
    assert definition.shim_group == "web.front-1"
    assert load_definition(definition_file(tmp_path, "")).shim_group == ""


def test_a_new_group_replaces_the_container(tmp_path: Path) -> None:
    """The group is in the spec: a changed group is a changed definition."""
    plain = load_definition(definition_file(tmp_path, ""))
    grouped = load_definition(definition_file(tmp_path, 'shim_group = "g"'))
    other = load_definition(definition_file(tmp_path, 'shim_group = "h"'))
    assert len({plain.definition_hash(), grouped.definition_hash(), other.definition_hash()}) == 3


@pytest.mark.parametrize("name", BAD_NAMES)
def test_definition_refuses_bad_names(tmp_path: Path, name: str) -> None:
    path = definition_file(tmp_path, f"shim_group = {name!r}".replace("'", '"'))
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert info.value.key == "shim_group"
    assert "shim group" in str(info.value)


def test_definition_refuses_a_non_string(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as info:
        load_definition(definition_file(tmp_path, "shim_group = 3"))
    assert info.value.key == "shim_group"
    assert "must be a string, not an integer" in str(info.value)


def test_config_default_and_value(tmp_path: Path) -> None:
    assert DaemonConfig().max_shim_group == DEFAULT_MAX_MEMBERS == 16
    path = tmp_path / "c.toml"
    path.write_text("[runtime]\nmax_shim_group = 4\n")
    assert load_config(path).max_shim_group == 4
    path.write_text(f"[runtime]\nmax_shim_group = {MAX_MEMBERS_LIMIT}\n")
    assert load_config(path).max_shim_group == MAX_MEMBERS_LIMIT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "must be from 1 to 64, not 0"),
        ("-1", "must be from 1 to 64, not -1"),
        ("65", "must be from 1 to 64, not 65"),
        ("1000", "must be from 1 to 64, not 1000"),
        ('"16"', "must be an integer, not a string"),
        ("true", "must be an integer, not a boolean"),
        ("1.5", "must be an integer, not a float"),
    ],
)
def test_config_refuses(tmp_path: Path, value: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[runtime]\nmax_shim_group = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "runtime.max_shim_group"
    assert expected in str(info.value)


def test_config_unknown_runtime_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[runtime]\nshim = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "runtime.shim"


def test_run_request_field(tmp_path: Path) -> None:
    d = pb.Definition(id="a", rootfs=str(tmp_path), command=["true"], shim_group="g1")
    assert _definition(d).shim_group == "g1"
    d.shim_group = ""
    assert _definition(d).shim_group == ""


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
def test_run_request_refuses_bad_names(tmp_path: Path, name: str) -> None:
    d = pb.Definition(id="a", rootfs=str(tmp_path), command=["true"], shim_group=name)
    with pytest.raises(InvalidArgument, match="shim group"):
        _definition(d)


def test_annotation_is_namespaced() -> None:
    groups = ShimGroups("prod", 2)
    spec: dict[str, Any] = {"process": {}}
    groups.annotate(spec, "web")
    assert spec["annotations"] == {GROUP_ANNOTATION: "containerd-supervisor/prod/web"}
    assert group_of_spec(spec) == annotation_value("prod", "web")
    assert annotation_value("prod", "web") != annotation_value("test", "web")
    plain: dict[str, Any] = {"annotations": {"other": "x"}}
    groups.annotate(plain, "")
    assert plain == {"annotations": {"other": "x"}}
    assert group_of_spec(plain) == group_of_spec({}) == group_of_spec({"annotations": 1}) == ""


def test_the_cap_counts_members_and_those_being_made() -> None:
    groups = ShimGroups("ns", 3)
    with groups.joining("g", "c", {"a"}), groups.joining("g", "d", {"a"}):
        full = pytest.raises(FailedPrecondition, match="shim group g is full: it has 3")
        with full, groups.joining("g", "e", {"a"}):
            pass
        with groups.joining("other", "e", {"a"}):  # another group has room
            pass
    assert groups._joining == {}
    with groups.joining("g", "a", {"a", "b", "c"}):  # a member made again: not counted twice
        pass
    with pytest.raises(FailedPrecondition), groups.joining("g", "d", {"a", "b", "c"}):
        pass
    assert groups._joining == {}
    with groups.joining("", "x", {str(n) for n in range(100)}):  # no group, no cap
        pass


def test_a_failed_make_gives_its_place_back() -> None:
    groups = ShimGroups("ns", 1)
    with pytest.raises(RuntimeError), groups.joining("g", "a", set()):
        raise RuntimeError("create failed")
    with groups.joining("g", "b", set()):
        pass


async def test_a_full_group_refuses_before_anything_is_made(tmp_path: Path) -> None:
    """The 17th: FailedPrecondition, and neither a network record nor a call
    to containerd (this keeper has no client: any call would fail otherwise)."""
    keeper = Keeper(DaemonConfig(state_dir=tmp_path, max_shim_group=2))

    def member(cid: str, group: str = "g") -> ContainerDefinition:
        return ContainerDefinition(
            id=cid, rootfs=tmp_path, command=("true",), shim_group=group, source=Path("<api>")
        )

    keeper.definitions = {"a": member("a"), "b": member("b"), "c": member("c", "h")}
    assert keeper.group_members("g") == {"a", "b"}
    with pytest.raises(FailedPrecondition, match="shim group g is full"):
        await keeper.make(member("d"), {}, None)
    assert keeper.net.attachments == {} and keeper.groups._joining == {}


async def test_creates_and_deletes_of_a_group_take_turns() -> None:
    groups = ShimGroups("ns")
    inside: list[str] = []
    most = 0

    async def create(annotation: str, name: str) -> None:
        nonlocal most
        async with groups.turn(annotation):
            inside.append(name)
            most = max(most, sum(1 for n in inside if n.startswith(annotation or "none")))
            await anyio.sleep(0.01)
            inside.remove(name)

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(create, "g", f"g{n}")
    assert most == 1
    async with anyio.create_task_group() as tg:  # other groups, and no group, do not wait
        for n in range(5):
            tg.start_soon(create, "", f"none{n}")
    assert most == 5
    assert groups._locks == {}


def test_labels_give_the_group_back_after_a_restart() -> None:
    labels = {SHIM_GROUP: "web", "io.containerd-supervisor/command": '["sleep", "1"]'}
    info = ContainerInfo("a", labels, "io.containerd.runc.v2", {"root": {"path": "/r"}}, "", None,
                         None)  # fmt: skip
    assert definition_from_labels(info).shim_group == "web"
