from pathlib import Path

import pytest

from supervisor.client import DEFAULT_CAPABILITIES, Mount, oci_spec, process_spec
from supervisor.errors import InvalidArgument


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    return tmp_path


def test_defaults_are_docker_like(root: Path) -> None:
    spec = oci_spec(root, ["sh", "-c", "true"], hostname="box")
    process = spec["process"]
    assert process["args"] == ["sh", "-c", "true"]
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["cwd"] == "/"
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False
    assert process["env"][0].startswith("PATH=/usr/local/sbin")
    assert process["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert len(DEFAULT_CAPABILITIES) == 14 and "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES
    assert {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024} in process["rlimits"]
    assert spec["root"] == {"path": str(root), "readonly": False}
    assert spec["hostname"] == "box"
    linux = spec["linux"]
    assert [n["type"] for n in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]
    assert "cgroupsPath" not in linux
    targets = [m["destination"] for m in spec["mounts"]]
    for target in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/dev/mqueue"):
        assert target in targets
    assert "memory" not in linux["resources"]


def test_limits_and_options(root: Path, tmp_path: Path) -> None:
    spec = oci_spec(
        root,
        ["app"],
        env={"A": "1", "PATH": "/bin"},
        cwd="/srv",
        user="app:staff",
        terminal=True,
        readonly_rootfs=True,
        memory_limit=64 << 20,
        cpus=1.5,
        pids_limit=100,
        mounts=[Mount(str(tmp_path), "/data", options=("rbind", "ro"))],
        cgroups_path="/ns/c1",
        host_network=True,
        nofile=4096,
    )
    res = spec["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20}
    assert res["cpu"] == {"period": 100000, "quota": 150000}
    assert res["pids"] == {"limit": 100}
    assert spec["process"]["env"] == ["A=1", "PATH=/bin"]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 50}
    assert spec["process"]["terminal"] is True
    assert spec["root"]["readonly"] is True
    assert spec["mounts"][-1] == {
        "destination": "/data",
        "type": "bind",
        "source": str(tmp_path),
        "options": ["rbind", "ro"],
    }
    assert spec["linux"]["cgroupsPath"] == "/ns/c1"
    assert "network" not in [n["type"] for n in spec["linux"]["namespaces"]]
    assert {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096} in spec["process"]["rlimits"]


def test_netns_path_joins_namespace(root: Path) -> None:
    spec = oci_spec(root, ["x"], netns_path="/var/run/netns/n1")
    assert {"type": "network", "path": "/var/run/netns/n1"} in spec["linux"]["namespaces"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"args": []}, "non-empty"),
        ({"args": "sh -c true"}, "not one string"),
        ({"env": ["NOEQUALS"]}, "NAME=VALUE"),
        ({"cwd": "relative"}, "absolute"),
        ({"user": "ghost"}, "ghost"),
        ({"user": "0:nogroup"}, "nogroup"),
        ({"memory_limit": 1024}, "4 MiB"),
        ({"cpus": 0}, "more than 0"),
        ({"cpus": 1e308}, "at most 8192"),
        ({"pids_limit": -1}, "positive"),
        ({"mounts": [Mount("/definitely/not/here", "/x")]}, "does not exist"),
        ({"mounts": [Mount("/tmp", "x")]}, "absolute"),
        ({"nofile": 0}, "positive"),
    ],
)
def test_unsound_input_is_refused(root: Path, kwargs: dict[str, object], message: str) -> None:
    args = kwargs.pop("args", ["true"])
    with pytest.raises(InvalidArgument, match=message):
        oci_spec(root, args, **kwargs)  # type: ignore[arg-type]


def test_rootfs_must_be_absolute_dir(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        oci_spec("rel", ["true"])
    with pytest.raises(InvalidArgument, match="not a directory"):
        oci_spec(tmp_path / "missing", ["true"])


def test_process_spec_for_exec() -> None:
    process = process_spec(["ls"], user="7:8", terminal=True)
    assert process["user"] == {"uid": 7, "gid": 8}
    assert process["terminal"] is True
    with pytest.raises(InvalidArgument, match="numeric"):
        process_spec(["ls"], user="named")
