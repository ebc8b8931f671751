from pathlib import Path

import pytest

from supervisor.daemon._config import ConfigError, DaemonConfig, load_config, parse_size
from supervisor.errors import InvalidArgument, SupervisorError

MIB = 1024 * 1024


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "supervisor.toml"
    path.write_text(text)
    return path


def fails(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")
    return info.value


def test_defaults_without_a_file() -> None:
    config = load_config(None)
    assert config == DaemonConfig()
    assert config.containerd_address is None
    assert config.managed is True
    assert config.namespace == "supervisor"
    assert config.state_dir == Path("/var/lib/containerd-supervisor")
    assert config.log_dir == Path("/var/log/containerd-supervisor")
    assert config.definitions_dir == Path("/etc/containerd-supervisor/containers")
    assert config.control_socket == Path("/run/containerd-supervisor/control.sock")
    assert config.control_group is None
    assert config.log_level == "info"
    assert config.log_max_bytes == 10 * MIB
    assert config.log_max_files == 5
    assert config.stop_containers_on_exit is False
    assert config.containerd_binary == "containerd"
    assert config.fifo_dir == Path("/var/lib/containerd-supervisor/fifo")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == DaemonConfig()


def test_empty_tables_give_defaults(tmp_path: Path) -> None:
    text = "[containerd]\n[control]\n[logs]\n"
    assert load_config(write(tmp_path, text)) == DaemonConfig()


def test_every_key(tmp_path: Path) -> None:
    text = """
namespace = "prod"
state_dir = "/srv/state"
log_dir = "/srv/logs"
definitions_dir = "/srv/defs"
log_level = "debug"
stop_containers_on_exit = true

[containerd]
address = "/run/containerd/containerd.sock"
binary = "/opt/bin/containerd"

[control]
socket = "/run/sup.sock"
group = "wheel"

[logs]
max_size = "512k"
max_files = 3
"""
    config = load_config(write(tmp_path, text))
    assert config == DaemonConfig(
        containerd_address="/run/containerd/containerd.sock",
        namespace="prod",
        state_dir=Path("/srv/state"),
        log_dir=Path("/srv/logs"),
        definitions_dir=Path("/srv/defs"),
        control_socket=Path("/run/sup.sock"),
        control_group="wheel",
        log_level="debug",
        log_max_bytes=512 * 1024,
        log_max_files=3,
        stop_containers_on_exit=True,
        containerd_binary="/opt/bin/containerd",
    )
    assert config.managed is False
    assert config.fifo_dir == Path("/srv/state/fifo")


def test_partial_tables_keep_other_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[containerd]\nbinary = "containerd-2"\n'))
    assert config.managed is True
    assert config.containerd_binary == "containerd-2"
    config = load_config(write(tmp_path, "[logs]\nmax_files = 1\n"))
    assert config.log_max_files == 1
    assert config.log_max_bytes == 10 * MIB


def test_address_accepts_unix_scheme(tmp_path: Path) -> None:
    text = '[containerd]\naddress = "unix:///run/c.sock"\n'
    assert load_config(write(tmp_path, text)).containerd_address == "/run/c.sock"


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'log_level = "WARNING"\n')).log_level == "warning"


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_each_log_level(tmp_path: Path, level: str) -> None:
    assert load_config(write(tmp_path, f'log_level = "{level}"\n')).log_level == level


def test_max_size_as_integer(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[logs]\nmax_size = 4096\n")).log_max_bytes == 4096


def test_config_is_frozen() -> None:
    config = DaemonConfig()
    with pytest.raises(AttributeError):
        config.namespace = "x"  # type: ignore[misc]


def test_error_classes() -> None:
    error = ConfigError(Path("/etc/x.toml"), "logs.max_size", "bad")
    assert isinstance(error, SupervisorError)
    assert isinstance(error, ValueError)
    assert (error.path, error.key, error.message) == (Path("/etc/x.toml"), "logs.max_size", "bad")
    assert str(error) == "/etc/x.toml: logs.max_size: bad"
    assert str(ConfigError(Path("/etc/x.toml"), "", "cannot read")) == "/etc/x.toml: cannot read"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1\n", "colour"),
        ("[containerd]\nsocket = '/x'\n", "containerd.socket"),
        ("[control]\nmode = 1\n", "control.mode"),
        ("[logs]\nmax_bytes = 1\n", "logs.max_bytes"),
        ("[extra]\n", "extra"),
        ("containerd_address = '/x'\n", "containerd_address"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, key: str) -> None:
    error = fails(tmp_path, text)
    assert error.key == key
    assert str(error).endswith(f": {key}: unknown key")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("namespace = 1\n", "namespace", "a string, not an integer"),
        ("state_dir = true\n", "state_dir", "a string, not a boolean"),
        ("log_dir = ['/x']\n", "log_dir", "a string, not an array"),
        ("definitions_dir = 1.5\n", "definitions_dir", "a string, not a float"),
        ("log_level = 10\n", "log_level", "a string, not an integer"),
        ("stop_containers_on_exit = 'yes'\n", "stop_containers_on_exit", "a boolean, not a string"),
        ("stop_containers_on_exit = 1\n", "stop_containers_on_exit", "a boolean, not an integer"),
        ("containerd = '/run/c.sock'\n", "containerd", "a table, not a string"),
        ("control = 1\n", "control", "a table, not an integer"),
        ("logs = []\n", "logs", "a table, not an array"),
        ("[containerd]\naddress = 1\n", "containerd.address", "a string, not an integer"),
        ("[containerd]\nbinary = ['x']\n", "containerd.binary", "a string, not an array"),
        ("[control]\nsocket = {a = 1}\n", "control.socket", "a string, not a table"),
        ("[control]\ngroup = 0\n", "control.group", "a string, not an integer"),
        ("[logs]\nmax_size = 1.5\n", "logs.max_size", "not a float"),
        ("[logs]\nmax_size = true\n", "logs.max_size", "not a boolean"),
        ("[logs]\nmax_files = '5'\n", "logs.max_files", "an integer, not a string"),
        ("[logs]\nmax_files = 5.0\n", "logs.max_files", "an integer, not a float"),
        ("[logs]\nmax_files = true\n", "logs.max_files", "an integer, not a boolean"),
        ("state_dir = 1979-05-27\n", "state_dir", "a string, not a date"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, key: str, expected: str) -> None:
    error = fails(tmp_path, text)
    assert error.key == key
    assert str(error).startswith(f"{error.path}: {key}: must be ")
    assert expected in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("state_dir = 'var/lib/x'\n", "state_dir"),
        ("log_dir = './logs'\n", "log_dir"),
        ("definitions_dir = ''\n", "definitions_dir"),
        ("[control]\nsocket = 'control.sock'\n", "control.socket"),
        ("[containerd]\naddress = 'run/containerd.sock'\n", "containerd.address"),
        ("[containerd]\naddress = 'unix://run/containerd.sock'\n", "containerd.address"),
        ("[containerd]\naddress = ''\n", "containerd.address"),
    ],
)
def test_relative_paths(tmp_path: Path, text: str, key: str) -> None:
    error = fails(tmp_path, text)
    assert error.key == key
    assert "must be an absolute" in str(error)


@pytest.mark.parametrize("binary", ["", "bin/containerd", "./containerd"])
def test_bad_binary(tmp_path: Path, binary: str) -> None:
    error = fails(tmp_path, f"[containerd]\nbinary = '{binary}'\n")
    assert error.key == "containerd.binary"
    assert "command name or an absolute path" in str(error)


@pytest.mark.parametrize(
    ("namespace", "expected"),
    [("", "must not be empty"), ("a b", "is invalid"), ("-x", "is invalid"), ("x" * 77, "76")],
)
def test_bad_namespace(tmp_path: Path, namespace: str, expected: str) -> None:
    error = fails(tmp_path, f"namespace = '{namespace}'\n")
    assert error.key == "namespace"
    assert str(error).startswith(f"{error.path}: namespace: namespace ")
    assert expected in str(error)


@pytest.mark.parametrize("level", ["verbose", "", "critical", "warn"])
def test_bad_log_level(tmp_path: Path, level: str) -> None:
    error = fails(tmp_path, f"log_level = '{level}'\n")
    assert error.key == "log_level"
    assert f"{level!r} is not one of debug, info, warning, error" in str(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'10x'", "'10x' is not a number of bytes"),
        ("''", "is not a number of bytes"),
        ("'m'", "is not a number of bytes"),
        ("'-1k'", "is not a number of bytes"),
        ("'0'", "must be positive"),
        ("'0k'", "must be positive"),
        ("0", "must be positive"),
        ("-1", "must be positive"),
        ("'1.5b'", "not a whole number of bytes"),
    ],
)
def test_bad_max_size(tmp_path: Path, value: str, expected: str) -> None:
    error = fails(tmp_path, f"[logs]\nmax_size = {value}\n")
    assert error.key == "logs.max_size"
    assert str(error).startswith(f"{error.path}: logs.max_size: ")
    assert expected in str(error)


@pytest.mark.parametrize("count", [0, -1])
def test_bad_max_files(tmp_path: Path, count: int) -> None:
    error = fails(tmp_path, f"[logs]\nmax_files = {count}\n")
    assert error.key == "logs.max_files"
    assert f"must be at least 1, not {count}" in str(error)


def test_empty_group(tmp_path: Path) -> None:
    error = fails(tmp_path, "[control]\ngroup = ''\n")
    assert error.key == "control.group"
    assert "must not be empty" in str(error)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    error = fails(tmp_path, 'namespace = "prod"\n\nlog_level = \n')
    assert error.key == ""
    assert str(error).startswith(f"{error.path}: invalid TOML: ")
    assert "line 3" in str(error)
    assert isinstance(error.__cause__, ValueError)


def test_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    error = fails(tmp_path, "namespace = 'a'\nnamespace = 'b'\n")
    assert "invalid TOML" in str(error) and "line 2" in str(error)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == ""
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"namespace = '\xe9'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not UTF-8 text")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1, 1),
        (4096, 4096),
        ("1", 1),
        ("4096", 4096),
        ("512b", 512),
        ("512B", 512),
        ("1k", 1024),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("10m", 10 * MIB),
        ("10M", 10 * MIB),
        ("10mb", 10 * MIB),
        ("10MiB", 10 * MIB),
        ("10 MiB", 10 * MIB),
        (" 10m ", 10 * MIB),
        ("1g", 1024 * MIB),
        ("1G", 1024 * MIB),
        ("1gib", 1024 * MIB),
        ("1.5g", 1536 * MIB),
        ("0.5k", 512),
        ("2t", 2 * 1024**4),
    ],
)
def test_parse_size(value: int | str, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10x", "is not a number of bytes"),
        ("10kk", "is not a number of bytes"),
        ("10ib", "is not a number of bytes"),
        ("k", "is not a number of bytes"),
        ("", "is not a number of bytes"),
        ("1e6", "is not a number of bytes"),
        ("-1", "is not a number of bytes"),
        ("+1", "is not a number of bytes"),
        ("1_000", "is not a number of bytes"),
        ("1,5m", "is not a number of bytes"),
        ("0.3b", "not a whole number of bytes"),
        (0, "must be positive"),
        (-1, "must be positive"),
        ("0", "must be positive"),
        ("0.0m", "must be positive"),
        (True, "not a boolean"),
        (1.5, "not a float"),
    ],
)
def test_parse_size_rejects(value: int | str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:9323", ("127.0.0.1", 9323)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("0.0.0.0:9323", ("0.0.0.0", 9323)),
        ("unix:/run/supervisor/metrics.sock", Path("/run/supervisor/metrics.sock")),
        ("unix:///run/m.sock", Path("/run/m.sock")),
        ("/run/m.sock", Path("/run/m.sock")),
    ],
)
def test_metrics_address(tmp_path: Path, value: str, address: object) -> None:
    config = load_config(write(tmp_path, f'[metrics]\naddress = "{value}"\n'))
    assert config.metrics_address == address
    assert load_config(write(tmp_path, "")).metrics_address is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9323", "not HOST:PORT"),
        (":9323", "not HOST:PORT"),
        ("host:", "not HOST:PORT"),
        ("host:http", "not HOST:PORT"),
        ("host:0", "between 1 and 65535"),
        ("host:70000", "between 1 and 65535"),
        ("host:-1", "not HOST:PORT"),
        ("a b:80", "not HOST:PORT"),
        ("unix:relative.sock", "not HOST:PORT"),
        ("::1:80", "not HOST:PORT"),
    ],
)
def test_bad_metrics_address(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(write(tmp_path, f'[metrics]\naddress = "{value}"\n'))
    assert caught.value.key == "metrics.address"


def test_network_and_images_tables(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, (
        '[network]\ndefault = "none"\nsubnet = "10.50.0.0/16"\npool = "10.51.0.0/16"\n'
        'cni_path = ["/opt/cni"]\n[images]\ninsecure_registries = ["reg.lan:5000"]\n'
    )))  # fmt: skip
    assert (config.default_network, config.network_subnet, config.network_pool) == (
        "none",
        "10.50.0.0/16",
        "10.51.0.0/16",
    )
    assert config.cni_path == (Path("/opt/cni"),)
    assert config.insecure_registries == ("reg.lan:5000",)
    assert DaemonConfig().default_network == "bridge"


@pytest.mark.parametrize(
    ("text", "key", "why"),
    [
        ('[network]\ndefault = "container:x"\n', "network.default", "must be bridge, none"),
        ('[network]\ndefault = "-bad"\n', "network.default", "network name"),
        ('[network]\nsubnet = "10.0.0.1/8"\n', "network.subnet", "host bits set"),
        ('[network]\npool = "fd00::/64"\n', "network.pool", "only IPv4"),
        ('[network]\ncni_path = ["rel"]\n', "network.cni_path", "absolute"),
        ('[images]\ninsecure_registries = ["a b"]\n', "images.insecure_registries[0]", "host"),
    ],
)
def test_bad_network_and_images_keys(tmp_path: Path, text: str, key: str, why: str) -> None:
    error = fails(tmp_path, text)
    assert error.key == key and why in str(error), str(error)
