"""What the fuzz suite (issue 9) found, one focused test each: every one of
these raised an untyped exception, wrote more than one line, or accepted a
value the kernel or the runtime refuses later, before it was fixed."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from supervisor import cli
from supervisor._proto.supervisor import v1 as pb
from supervisor.client._spec import oci_spec, parse_user
from supervisor.daemon import _keeper
from supervisor.daemon._config import ConfigError, DaemonConfig, load_config, parse_size
from supervisor.daemon._control import StrictCodec, _definition, _signal
from supervisor.daemon._definitions import ContainerDefinition, DefinitionError, load_definition
from supervisor.daemon._keeper import Keeper
from supervisor.errors import (
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    from_grpc,
    to_grpc,
)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return root


def definition(tmp_path: Path, rootfs: Path, extra: str, name: str = "app.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'rootfs = "{rootfs}"\ncommand = ["/bin/app"]\n{extra}\n')
    return path


def fails(path: Path) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    assert len(str(info.value).splitlines()) == 1
    return info.value


# -- the definition and config parsers ------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        # was OverflowError:
        ("stop_timeout = " + "9" * 400, "stop_timeout", "must be a positive number"),
        ("cpus = 1e308", "cpus", "must be from 0.01 to 8192"),  # was OverflowError in the spec
        ("cpus = 0.001", "cpus", "must be from 0.01 to 8192"),  # was loaded: the kernel refuses it
        ("pids = 9223372036854775808", "pids", "out of range"),  # was loaded: not an int64
        ("pids = 5000000", "pids", "at most 4194304"),  # was loaded: the kernel refuses it
        ('memory = "9999999999999t"', "memory", "too large"),  # was loaded: not an int64
        ('env = {"A\\u0000B" = "x"}', "env.A\x00B", "without '=' or NUL"),  # runc refused it
    ],
)
def test_out_of_range_numbers_name_their_key(
    tmp_path: Path, rootfs: Path, extra: str, key: str, expected: str
) -> None:
    error = fails(definition(tmp_path, rootfs, extra))
    assert error.key == key
    assert expected in str(error)


def test_integer_past_pythons_digit_limit_is_invalid_toml(tmp_path: Path, rootfs: Path) -> None:
    # tomllib raises ValueError (not TOMLDecodeError) for over 4300 digits.
    error = fails(definition(tmp_path, rootfs, "pids = " + "9" * 5000))
    assert "invalid TOML" in str(error)
    config = tmp_path / "config.toml"
    config.write_text("[logs]\nmax_files = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(config)


def test_rootfs_name_too_long(tmp_path: Path, rootfs: Path) -> None:
    path = tmp_path / "app.toml"
    path.write_text(f'rootfs = "/{"x" * 300}"\ncommand = ["/bin/app"]\n')  # was OSError
    error = fails(path)
    assert error.key == "rootfs"
    assert "File name too long" in str(error)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("a\nb.toml", ""),  # an id from a file name with a newline
        ("app.toml", '"x\\ny" = 1'),  # an unknown key with a newline
        ("app.toml", 'labels = {"a\\nb" = 1}'),
    ],
)
def test_errors_are_one_line(tmp_path: Path, rootfs: Path, name: str, extra: str) -> None:
    error = fails(definition(tmp_path, rootfs, extra, name))
    assert "\\n" in str(error)


def test_empty_unknown_key_is_named(tmp_path: Path, rootfs: Path) -> None:
    error = fails(definition(tmp_path, rootfs, '"" = 1'))
    assert str(error).endswith(': "": unknown key')


def test_parse_size_has_a_maximum() -> None:
    assert parse_size(str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(InvalidArgument, match="too large"):
        parse_size(2**63)
    with pytest.raises(InvalidArgument, match=r"\.\.\.\(5002 characters\) must be positive"):
        parse_size("0" * 5000)


# -- the CLI ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _sigpipe() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGPIPE)
    yield
    signal.signal(signal.SIGPIPE, previous)  # main() sets SIG_DFL, as the CLI wants


@pytest.fixture
def no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "missing.sock")
    monkeypatch.setenv("SUPERVISOR_SOCKET", path)
    return path


def test_since_too_long_ago(no_daemon: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Was OverflowError: "date value out of range", with a traceback.
    assert cli.main(["--socket", no_daemon, "logs", "--since", "739950d", "c1"]) == 125
    assert capsys.readouterr().err == "supervisor logs: --since '739950d' is too long ago\n"


def test_socket_path_too_long(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was OSError: "AF_UNIX path too long", with a traceback.
    path = str(tmp_path / ("x" * 120))
    assert cli.main(["--socket", path, "ps"]) == 125
    err = capsys.readouterr().err
    assert err.startswith("supervisor ps: AF_UNIX path too long") and err.count("\n") == 1


def test_usage_error_is_one_line(no_daemon: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--socket", no_daemon, "ps", "a\nb"])
    assert info.value.code == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a\\nb" in err


# -- the control API, without a daemon -------------------------------------------------


@pytest.mark.parametrize("text", ["²", "٣", "99999999999999999999", "0", "65"])
def test_signal_numbers_are_checked(text: str) -> None:
    # "²".isdigit() is True but int("²") raised ValueError; big numbers went to containerd.
    with pytest.raises(InvalidArgument, match="signal"):
        _signal(text)
    assert _signal("9") == signal.SIGKILL and _signal("hup") == signal.SIGHUP


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"id": "a/b"}, "container id 'a/b' is invalid"),
        ({"stop_timeout": math.nan}, "stop timeout"),  # was ValueError from the hash's JSON
        ({"stop_timeout": -1.0}, "stop timeout"),
        ({"stop_timeout": math.inf}, "stop timeout"),
        ({"cpus": math.inf}, "cpus must be from"),  # was OverflowError in the spec
        ({"cpus": 1e300}, "cpus must be from"),
        ({"pids": 2**40}, "pids must be at most"),  # the kernel refused it at start
        ({"env": {"A\0": "x"}}, "environment variable name"),
        ({"env": {"A=B": "x"}}, "environment variable name"),
        ({"rootfs": "/" + "x" * 300}, "File name too long"),  # was OSError
    ],
)
def test_run_definition_is_checked(rootfs: Path, fields: dict[str, object], expected: str) -> None:
    values: dict[str, object] = {"id": "c1", "rootfs": str(rootfs), "command": ["/bin/app"]}
    with pytest.raises(InvalidArgument, match=expected.replace("(", r"\(")):
        _definition(pb.Definition(**{**values, **fields}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message_type", "expected"),
    [
        (b"\x08\x01", pb.ContainerRef, "id is not of type string"),  # was ContainerRef(id=1)
        (b"\x0b", pb.ContainerRef, "id is not of type string"),  # was ContainerRef(id=None)
        (b"\x08\x01", pb.RunInput, "request is not of type message"),  # was request=1
        (b"\x12\x03abc", pb.LogsRequest, "follow is not of type bool"),  # was a list
        (b"\n\x02\xff\xfe", pb.ContainerRef, "can't decode byte 0xff"),  # UnicodeDecodeError
        (b"\n\x06\n\x04\x22\x02\x08\x01", pb.RunInput, "request.definition.env"),
    ],
)
def test_malformed_requests_are_refused(data: bytes, message_type: type, expected: str) -> None:
    with pytest.raises(GRPCError) as info:
        StrictCodec().decode(data, message_type)
    assert info.value.status is Status.INVALID_ARGUMENT
    assert expected in (info.value.message or "")


def test_well_formed_requests_decode() -> None:
    message = pb.RunInput(
        request=pb.RunRequest(
            definition=pb.Definition(
                id="c1", command=["sh"], env={"A": "b"}, mounts=[pb.Mount(source="/x")]
            )
        )
    )
    assert StrictCodec().decode(bytes(message), pb.RunInput) == message


def test_statuses_are_one_line() -> None:
    error = ContainerdError("runc: mkdir /a\nb: invalid argument", Status.UNKNOWN)
    assert to_grpc(error).message == "runc: mkdir /a\\nb: invalid argument"


@pytest.mark.parametrize(
    "message", ["cannot pause a paused container: unknown", "cannot resume a running process"]
)
def test_pause_and_resume_in_the_wrong_state_are_preconditions(message: str) -> None:
    assert isinstance(from_grpc(GRPCError(Status.UNKNOWN, message)), FailedPrecondition)


# -- found, not fixed here: supervisor/client/_spec.py is being changed elsewhere -------


def test_user_with_a_non_ascii_digit() -> None:
    with pytest.raises(InvalidArgument):
        parse_user("²")


def test_user_id_past_uint32() -> None:
    with pytest.raises(InvalidArgument):
        parse_user("4294967296")


def test_oci_spec_huge_cpus(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument):
        oci_spec(rootfs, ["/bin/app"], cpus=1e308)


def test_oci_spec_rootfs_name_too_long() -> None:
    with pytest.raises(InvalidArgument):
        oci_spec("/" + "x" * 300, ["/bin/app"])


# -- a stop's bound (found reading the code the fuzz reached) ----------------------------


class _SlowStop(Keeper):
    """A keeper whose stop takes as long as its container's stop timeout, as
    one that ignores its stop signal does (signal, the timeout, SIGKILL)."""

    async def _stop_locked(self, cid: str, **_: Any) -> None:
        await anyio.sleep(self.definitions[cid].stop_timeout)  # the grace, as it elapses


@pytest.mark.anyio
async def test_stop_waits_for_the_containers_own_stop_timeout(
    rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound was 2 x 30 s whatever the stop timeout: a container given
    # stop_timeout = 100 that ignored SIGTERM was not stopped, and `stop` failed
    # with a TimeoutError (UNKNOWN). Scaled down here: 2 x 0.05 s, a 0.3 s timeout.
    monkeypatch.setattr(_keeper, "OPERATION_TIMEOUT", 0.05)
    keeper = _SlowStop(DaemonConfig())
    keeper.definitions["c1"] = ContainerDefinition(
        id="c1", rootfs=rootfs, command=("/bin/app",), stop_timeout=0.3, source=rootfs
    )
    await keeper.stop_container("c1")
    with pytest.raises(TimeoutError):  # an explicit grace still bounds it
        await keeper.stop_container("c1", grace=0.0)
