import dataclasses
import signal
from pathlib import Path

import pytest

from supervisor.client import Mount
from supervisor.daemon._definitions import (
    ContainerDefinition,
    DefinitionError,
    load_definition,
    load_definitions,
)
from supervisor.daemon._policy import RestartPolicy
from supervisor.errors import SupervisorError
from supervisor.net import PortMapping

MIB = 1024 * 1024


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    path = tmp_path / "containers"
    path.mkdir()
    return path


def minimal(rootfs: Path) -> str:
    return f'rootfs = "{rootfs}"\ncommand = ["/bin/app"]\n'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def fails(path: Path) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    return info.value


def full(rootfs: Path, data: Path) -> str:
    return f"""
id = "web-1"
rootfs = "{rootfs}"
command = ["/bin/httpd", "-f", "-p", "80"]
user = "app:staff"
cwd = "/srv"
restart = "on-failure:5"
stop_signal = "SIGQUIT"
stop_timeout = 30
memory = "256m"
cpus = 1.5
pids = 200
terminal = true

[env]
LANG = "C.UTF-8"
MODE = "production"

[labels]
team = "web"
"io.example/tier" = "front"

[[mounts]]
source = "{data}"
destination = "/data"
readonly = true

[[mounts]]
source = "{data}"
destination = "/scratch"

[[mounts]]
source = "tmpfs"
destination = "/tmp"
type = "tmpfs"
options = ["nosuid", "size=64m"]
"""


def test_full_definition(defs: Path, rootfs: Path, data: Path) -> None:
    path = write(defs, "web.toml", full(rootfs, data))
    definition = load_definition(path)
    assert definition == ContainerDefinition(
        id="web-1",
        rootfs=rootfs,
        command=("/bin/httpd", "-f", "-p", "80"),
        env={"LANG": "C.UTF-8", "MODE": "production"},
        user="app:staff",
        cwd="/srv",
        restart=RestartPolicy.parse("on-failure:5"),
        stop_signal=signal.SIGQUIT,
        stop_timeout=30.0,
        memory=256 * MIB,
        cpus=1.5,
        pids=200,
        mounts=(
            Mount(str(data), "/data", "bind", ("rbind", "ro")),
            Mount(str(data), "/scratch", "bind", ("rbind", "rw")),
            Mount("tmpfs", "/tmp", "tmpfs", ("nosuid", "size=64m")),
        ),
        labels={"team": "web", "io.example/tier": "front"},
        terminal=True,
        source=path,
    )
    assert str(definition.restart) == "on-failure:5"
    assert isinstance(definition.stop_timeout, float)


def test_full_definition_spec(defs: Path, rootfs: Path, data: Path) -> None:
    spec = load_definition(write(defs, "web.toml", full(rootfs, data))).spec()
    assert spec["hostname"] == "web-1"
    assert spec["root"] == {"path": str(rootfs), "readonly": False}
    process = spec["process"]
    assert process["args"] == ["/bin/httpd", "-f", "-p", "80"]
    assert process["user"] == {"uid": 1000, "gid": 50}
    assert process["cwd"] == "/srv"
    assert process["terminal"] is True
    assert "LANG=C.UTF-8" in process["env"] and "MODE=production" in process["env"]
    assert any(item.startswith("PATH=") for item in process["env"])
    resources = spec["linux"]["resources"]
    assert resources["memory"] == {"limit": 256 * MIB}
    assert resources["cpu"] == {"period": 100_000, "quota": 150_000}
    assert resources["pids"] == {"limit": 200}
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/data"] == {
        "destination": "/data",
        "type": "bind",
        "source": str(data),
        "options": ["rbind", "ro"],
    }
    assert mounts["/scratch"]["options"] == ["rbind", "rw"]
    assert mounts["/tmp"] == {
        "destination": "/tmp",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "size=64m"],
    }


def test_minimal_definition_defaults(defs: Path, rootfs: Path) -> None:
    path = write(defs, "app.toml", minimal(rootfs))
    definition = load_definition(path)
    assert definition == ContainerDefinition(
        id="app", rootfs=rootfs, command=("/bin/app",), source=path
    )
    assert definition.id == "app"
    assert definition.env == {}
    assert definition.user == "0:0"
    assert definition.cwd == "/"
    assert str(definition.restart) == "no"
    assert definition.stop_signal == signal.SIGTERM
    assert definition.stop_timeout == 10.0
    assert definition.memory is None and definition.cpus is None and definition.pids is None
    assert definition.mounts == ()
    assert definition.labels == {}
    assert definition.terminal is False
    assert definition.source == path
    spec = definition.spec()
    assert spec["hostname"] == "app"
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}
    assert "memory" not in spec["linux"]["resources"]
    assert "cpu" not in spec["linux"]["resources"]
    assert "pids" not in spec["linux"]["resources"]


def test_id_defaults_to_file_stem(defs: Path, rootfs: Path) -> None:
    assert load_definition(write(defs, "db.main-1.toml", minimal(rootfs))).id == "db.main-1"


def test_explicit_id_overrides_stem(defs: Path, rootfs: Path) -> None:
    path = write(defs, "whatever.toml", 'id = "cache"\n' + minimal(rootfs))
    assert load_definition(path).id == "cache"


def test_invalid_stem_is_an_id_error(defs: Path, rootfs: Path) -> None:
    error = fails(write(defs, "my app.toml", minimal(rootfs)))
    assert error.key == "id"
    assert "'my app' is invalid" in str(error)
    assert "file name" in str(error)


def test_invalid_stem_with_explicit_id_is_fine(defs: Path, rootfs: Path) -> None:
    path = write(defs, "my app.toml", 'id = "my-app"\n' + minimal(rootfs))
    assert load_definition(path).id == "my-app"


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ('"SIGTERM"', signal.SIGTERM),
        ('"TERM"', signal.SIGTERM),
        ('"term"', signal.SIGTERM),
        ('"SIGKILL"', signal.SIGKILL),
        ('"INT"', signal.SIGINT),
        ('"SIGUSR1"', signal.SIGUSR1),
        ("15", 15),
        ("9", 9),
        ("3", 3),
    ],
)
def test_stop_signal_forms(defs: Path, rootfs: Path, value: str, number: int) -> None:
    path = write(defs, "app.toml", minimal(rootfs) + f"stop_signal = {value}\n")
    definition = load_definition(path)
    assert definition.stop_signal == number
    assert type(definition.stop_signal) is int


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ('restart = "no"', "no"),
        ('restart = "always"', "always"),
        ('restart = "unless-stopped"', "unless-stopped"),
        ('restart = "on-failure"', "on-failure"),
        ('restart = "on-failure:3"', "on-failure:3"),
    ],
)
def test_restart_policies(defs: Path, rootfs: Path, text: str, policy: str) -> None:
    definition = load_definition(write(defs, "app.toml", minimal(rootfs) + text + "\n"))
    assert str(definition.restart) == policy


@pytest.mark.parametrize(
    ("text", "memory"), [("memory = 67108864", 64 * MIB), ('memory = "1g"', 1024 * MIB)]
)
def test_memory_forms(defs: Path, rootfs: Path, text: str, memory: int) -> None:
    assert load_definition(write(defs, "app.toml", minimal(rootfs) + text + "\n")).memory == memory


def test_cpus_integer_becomes_float(defs: Path, rootfs: Path) -> None:
    definition = load_definition(write(defs, "app.toml", minimal(rootfs) + "cpus = 2\n"))
    assert definition.cpus == 2.0 and isinstance(definition.cpus, float)


def test_mount_options_with_readonly(defs: Path, rootfs: Path, data: Path) -> None:
    text = minimal(rootfs) + (
        f'[[mounts]]\nsource = "{data}"\ndestination = "/a"\noptions = ["bind"]\nreadonly = true\n'
        f'[[mounts]]\nsource = "{data}"\ndestination = "/b"\nreadonly = false\n'
        f'[[mounts]]\nsource = "{data}"\ndestination = "/c"\noptions = ["rw", "rbind"]\n'
        "readonly = true\n"
    )
    mounts = load_definition(write(defs, "app.toml", text)).mounts
    assert [m.options for m in mounts] == [("bind", "ro"), ("rbind", "rw"), ("ro", "rbind")]


def test_definition_is_frozen_and_hashable(defs: Path, rootfs: Path) -> None:
    definition = load_definition(write(defs, "app.toml", minimal(rootfs) + "[env]\nA = '1'\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        definition.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        definition.env["A"] = "2"  # type: ignore[index]
    assert hash(definition) == hash(dataclasses.replace(definition))


def test_error_class() -> None:
    error = DefinitionError(Path("/d/web.toml"), "memory", "bad")
    assert isinstance(error, SupervisorError) and isinstance(error, ValueError)
    assert (error.path, error.key, error.message) == (Path("/d/web.toml"), "memory", "bad")
    assert str(error) == "/d/web.toml: memory: bad"
    assert str(DefinitionError(Path("/d/web.toml"), "", "bad")) == "/d/web.toml: bad"


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("colour = 1", "colour", "unknown key"),
        ('id = ""', "id", "must not be empty"),
        ('id = "a/b"', "id", "is invalid"),
        ("id = 1", "id", "must be a string, not an integer"),
        ('user = ""', "user", "is not uid[:gid]"),
        ('user = ":0"', "user", "is not uid[:gid]"),
        ('user = "0:"', "user", "is not uid[:gid]"),
        ('user = "0:0:0"', "user", "is not uid[:gid]"),
        ("user = 0", "user", "must be a string, not an integer"),
        ('cwd = "srv"', "cwd", "must be an absolute path"),
        ("cwd = 1", "cwd", "must be a string"),
        ('restart = "sometimes"', "restart", "invalid restart policy 'sometimes'"),
        ('restart = "always:3"', "restart", "invalid restart policy"),
        ('restart = "on-failure:-1"', "restart", "invalid restart policy"),
        ("restart = true", "restart", "must be a string, not a boolean"),
        ('stop_signal = "SIGNOPE"', "stop_signal", "'SIGNOPE' is not a signal name"),
        ('stop_signal = ""', "stop_signal", "is not a signal name"),
        ("stop_signal = 0", "stop_signal", "0 is not a signal number"),
        ("stop_signal = -9", "stop_signal", "is not a signal number"),
        ("stop_signal = 1000", "stop_signal", "is not a signal number"),
        ("stop_signal = 9.0", "stop_signal", "must be a signal name or number, not a float"),
        ("stop_signal = true", "stop_signal", "not a boolean"),
        ("stop_timeout = 0", "stop_timeout", "must be a positive number"),
        ("stop_timeout = -1.5", "stop_timeout", "must be a positive number"),
        ("stop_timeout = inf", "stop_timeout", "must be a positive number"),
        ("stop_timeout = nan", "stop_timeout", "must be a positive number"),
        ('stop_timeout = "10s"', "stop_timeout", "must be a number, not a string"),
        ('memory = "10x"', "memory", "'10x' is not a number of bytes"),
        ("memory = 0", "memory", "must be positive"),
        ("memory = -1", "memory", "must be positive"),
        ("memory = 1.5", "memory", "not a float"),
        ("cpus = 0", "cpus", "must be a positive number"),
        ("cpus = -0.5", "cpus", "must be a positive number"),
        ('cpus = "2"', "cpus", "must be a number, not a string"),
        ("pids = 0", "pids", "must be positive, not 0"),
        ("pids = -5", "pids", "must be positive"),
        ("pids = 1.5", "pids", "must be an integer, not a float"),
        ("terminal = 1", "terminal", "must be a boolean, not an integer"),
        ('env = "A=1"', "env", "must be a table of strings, not a string"),
        ("env = {A = 1}", "env.A", "must be a string, not an integer"),
        ('env = {"" = "x"}', "env.", "environment variable name"),
        ('env = {"A=B" = "x"}', "env.A=B", "environment variable name"),
        ("labels = []", "labels", "must be a table of strings, not an array"),
        ("labels = {a = true}", "labels.a", "must be a string, not a boolean"),
        ("mounts = {}", "mounts", "must be an array of tables, not a table"),
        ('mounts = ["/x:/y"]', "mounts[0]", "must be a table, not a string"),
        ("mounts = [{destination = '/d'}]", "mounts[0].source", "is required"),
        ("mounts = [{source = '/'}]", "mounts[0].destination", "is required"),
        ("mounts = [{source = '/', destination = 'd'}]", "mounts[0].destination", "absolute"),
        ("mounts = [{source = 'x', destination = '/d'}]", "mounts[0].source", "absolute"),
        ("mounts = [{source = '', destination = '/d'}]", "mounts[0].source", "must not be empty"),
        ("mounts = [{source = '/', destination = '/d', type = ''}]", "mounts[0].type", "empty"),
        ("mounts = [{source = '/', destination = '/d', type = 1}]", "mounts[0].type", "string"),
        (
            "mounts = [{source = '/', destination = '/d', options = 'ro'}]",
            "mounts[0].options",
            "must be an array of strings, not a string",
        ),
        (
            "mounts = [{source = '/', destination = '/d', options = ['ro', 1]}]",
            "mounts[0].options[1]",
            "must be a string, not an integer",
        ),
        (
            "mounts = [{source = '/', destination = '/d', readonly = 'yes'}]",
            "mounts[0].readonly",
            "must be a boolean",
        ),
        (
            "mounts = [{source = '/', destination = '/d'},\n"
            "  {source = '/', destination = '/e', x = 1}]",
            "mounts[1].x",
            "unknown key",
        ),
    ],
)
def test_invalid_fields(defs: Path, rootfs: Path, extra: str, key: str, expected: str) -> None:
    # Top-level keys must precede any table header.
    error = fails(write(defs, "app.toml", extra + "\n" + minimal(rootfs)))
    assert error.key == key
    assert str(error).startswith(f"{error.path}: {key}: ")
    assert expected in str(error)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("[]", "must be a non-empty array of strings"),
        ('[""]', "must be a non-empty array of strings"),
        ('"/bin/app"', "must be an array of strings, not a string"),
        ('["/bin/app", 1]', "must be a string, not an integer"),
    ],
)
def test_invalid_command(defs: Path, rootfs: Path, command: str, expected: str) -> None:
    error = fails(write(defs, "app.toml", f'rootfs = "{rootfs}"\ncommand = {command}\n'))
    assert error.key.startswith("command")
    assert expected in str(error)


def test_command_is_required(defs: Path, rootfs: Path) -> None:
    error = fails(write(defs, "app.toml", f'rootfs = "{rootfs}"\n'))
    assert str(error) == f"{error.path}: command: is required"


def test_rootfs_is_required(defs: Path) -> None:
    error = fails(write(defs, "app.toml", 'command = ["/bin/app"]\n'))
    assert str(error) == f"{error.path}: rootfs: is required (or an image)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"rootfs"', "must be an absolute path"),
        ('""', "must be an absolute path"),
        ('"/nonexistent/rootfs"', "is not a directory"),
        ("1", "must be a string, not an integer"),
    ],
)
def test_invalid_rootfs(defs: Path, value: str, expected: str) -> None:
    error = fails(write(defs, "app.toml", f'rootfs = {value}\ncommand = ["/bin/app"]\n'))
    assert error.key == "rootfs"
    assert expected in str(error)


def test_rootfs_that_is_a_file(defs: Path, tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    error = fails(write(defs, "app.toml", f'rootfs = "{file}"\ncommand = ["/bin/app"]\n'))
    assert error.key == "rootfs" and "is not a directory" in str(error)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('memory = "1m"', "below the 4 MiB minimum"),
        ('user = "nobody"', "'nobody' is not in"),
        ('user = "app:wheel"', "'wheel' is not in"),
        ("mounts = [{source = '/nonexistent/data', destination = '/d'}]", "does not exist"),
    ],
)
def test_spec_errors_are_caught_at_load(
    defs: Path, rootfs: Path, extra: str, expected: str
) -> None:
    error = fails(write(defs, "app.toml", extra + "\n" + minimal(rootfs)))
    assert error.key == ""
    assert expected in str(error)
    assert error.__cause__ is not None


def test_toml_syntax_error(defs: Path, rootfs: Path) -> None:
    error = fails(write(defs, "app.toml", minimal(rootfs) + "cpus = \n"))
    assert error.key == ""
    assert str(error).startswith(f"{error.path}: invalid TOML: ")
    assert "line 3" in str(error)


def test_unreadable_definition(defs: Path) -> None:
    error = fails(defs / "missing.toml")
    assert str(error) == f"{defs / 'missing.toml'}: cannot read: No such file or directory"


def test_load_definitions_skips_bad_and_reports_it(defs: Path, rootfs: Path) -> None:
    write(defs, "b-good.toml", minimal(rootfs))
    bad = write(defs, "a-bad.toml", minimal(rootfs) + "pids = 0\n")
    write(defs, "c-good.toml", minimal(rootfs))
    definitions, errors = load_definitions(defs)
    assert [d.id for d in definitions] == ["b-good", "c-good"]
    assert [d.source for d in definitions] == [defs / "b-good.toml", defs / "c-good.toml"]
    assert len(errors) == 1
    assert errors[0].path == bad
    assert str(errors[0]) == f"{bad}: pids: must be positive, not 0"


def test_load_definitions_sorted_by_name(defs: Path, rootfs: Path) -> None:
    for name in ("zeta", "alpha", "Mid", "beta-2", "beta-10"):
        write(defs, f"{name}.toml", minimal(rootfs))
    definitions, errors = load_definitions(defs)
    assert errors == []
    assert [d.id for d in definitions] == ["Mid", "alpha", "beta-10", "beta-2", "zeta"]


def test_load_definitions_ignores_other_files(defs: Path, rootfs: Path) -> None:
    write(defs, "app.toml", minimal(rootfs))
    write(defs, "README", "not toml")
    write(defs, "app.toml.bak", "broken = [")
    write(defs, "app.toml~", "broken = [")
    write(defs, ".hidden.toml", "broken = [")
    (defs / "dir.toml").mkdir()
    definitions, errors = load_definitions(defs)
    assert [d.id for d in definitions] == ["app"]
    assert errors == []


def test_duplicate_ids(defs: Path, rootfs: Path) -> None:
    first = write(defs, "a.toml", 'id = "web"\n' + minimal(rootfs))
    second = write(defs, "web.toml", minimal(rootfs))
    definitions, errors = load_definitions(defs)
    assert [d.source for d in definitions] == [first]
    assert len(errors) == 1
    assert errors[0].path == second
    assert errors[0].key == "id"
    assert str(errors[0]) == f"{second}: id: id 'web' is already defined by {first}"


def test_missing_directory(tmp_path: Path) -> None:
    assert load_definitions(tmp_path / "nope") == ([], [])


def test_empty_directory(defs: Path) -> None:
    assert load_definitions(defs) == ([], [])


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "file", "")
    definitions, errors = load_definitions(path)
    assert definitions == []
    assert len(errors) == 1 and errors[0].path == path and "cannot list" in str(errors[0])


def test_hash_is_stable_under_reformatting(defs: Path, rootfs: Path, data: Path) -> None:
    original = load_definition(write(defs, "web.toml", full(rootfs, data)))
    reformatted = f"""
# the same container, written differently
terminal=true
pids=200
cpus=1.5
memory=268435456
stop_timeout=30.0
stop_signal=3
restart='on-failure:5'
cwd='/srv'
user='app:staff'
command=[
  '/bin/httpd',
  '-f', '-p', '80',
]
rootfs='{rootfs}/'
id='web-1'
env = {{ MODE = "production", LANG = "C.UTF-8" }}
labels.'io.example/tier' = "front"
labels.team = "web"
mounts = [
  {{ destination = "/data", source = "{data}", readonly = true, type = "bind" }},
  {{ destination = "/scratch", source = "{data}", options = ["rbind", "rw"] }},
  {{ options = ["nosuid", "size=64m"], type = "tmpfs", destination = "/tmp", source = "tmpfs" }},
]
"""
    other = load_definition(write(defs, "other.toml", reformatted))
    assert other == dataclasses.replace(original, source=other.source)
    assert other.definition_hash() == original.definition_hash()


def test_hash_ignores_explicit_defaults(defs: Path, rootfs: Path) -> None:
    plain = load_definition(write(defs, "app.toml", minimal(rootfs)))
    explicit = minimal(rootfs) + (
        'id = "app"\nuser = "0:0"\ncwd = "/"\nrestart = "no"\nstop_signal = "TERM"\n'
        "stop_timeout = 10\nterminal = false\nmounts = []\n[env]\n[labels]\n"
    )
    spelled = load_definition(write(defs, "app2.toml", explicit))
    assert spelled.definition_hash() == plain.definition_hash()


def test_hash_is_sha256_hex(defs: Path, rootfs: Path) -> None:
    digest = load_definition(write(defs, "app.toml", minimal(rootfs))).definition_hash()
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_hash_changes_with_any_value(defs: Path, rootfs: Path, data: Path, tmp_path: Path) -> None:
    base = load_definition(write(defs, "web.toml", full(rootfs, data)))
    other_root = tmp_path / "other-rootfs"
    other_root.mkdir()
    changes: dict[str, object] = {
        "id": "web-2",
        "rootfs": other_root,
        "command": ("/bin/httpd", "-f", "-p", "81"),
        "env": {"LANG": "C.UTF-8", "MODE": "staging"},
        "user": "app:root",
        "cwd": "/",
        "restart": RestartPolicy.parse("always"),
        "stop_signal": int(signal.SIGTERM),
        "stop_timeout": 31.0,
        "memory": 257 * MIB,
        "cpus": 2.0,
        "pids": 201,
        "mounts": base.mounts[1:],
        "labels": {"team": "api", "io.example/tier": "front"},
        "terminal": False,
        "network": "host",
        "ports": (PortMapping(8080, 80),),
        "image": "docker.io/library/busybox:1.36",
        "pull": "always",
        "entrypoint": ("/bin/sh",),
        "shim_group": "web",
    }
    names = {f.name for f in dataclasses.fields(ContainerDefinition)} - {"source", "explicit"}
    assert set(changes) == names
    digests = {base.definition_hash()}
    for name, value in changes.items():
        changed = dataclasses.replace(base, **{name: value})  # type: ignore[arg-type]
        digests.add(changed.definition_hash())
    assert len(digests) == len(changes) + 1
    assert dataclasses.replace(base, source=Path("/x.toml")).definition_hash() in digests


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ('["/bin/a", "x"]', '["x", "/bin/a"]'),
        ('["/bin/a", "x y"]', '["/bin/a", "x", "y"]'),
    ],
)
def test_hash_sees_command_order(defs: Path, rootfs: Path, before: str, after: str) -> None:
    one = load_definition(write(defs, "a.toml", f'rootfs = "{rootfs}"\ncommand = {before}\n'))
    two = load_definition(write(defs, "b.toml", f'rootfs = "{rootfs}"\ncommand = {after}\n'))
    one, two = dataclasses.replace(one, id="x"), dataclasses.replace(two, id="x")
    assert one.definition_hash() != two.definition_hash()


def test_hash_sees_mount_order_and_options(defs: Path, rootfs: Path, data: Path) -> None:
    base = load_definition(write(defs, "web.toml", full(rootfs, data)))
    swapped = dataclasses.replace(base, mounts=(base.mounts[1], base.mounts[0], base.mounts[2]))
    readonly = dataclasses.replace(
        base, mounts=(base.mounts[0], dataclasses.replace(base.mounts[1], options=("rbind", "ro")))
    )
    digests = {d.definition_hash() for d in (base, swapped, readonly)}
    assert len(digests) == 3
