"""The CLI's verbs over its own client (issue 12): what each verb imports, and
verbs against a fake control service (grpclib and the generated betterproto2
classes, as the daemon serves them) in a thread of this process."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from supervisor import _commands, cli
from supervisor._proto.supervisor import v1 as pb

from .test_h2client import ServerThread

TOP = Path(__file__).resolve().parents[2]

#: What no verb but an attached run and exec may load: the async stack, the
#: generated betterproto2 module, the daemon and the library.
HEAVY = (
    "asyncio",
    "anyio",
    "grpclib.client",
    "grpclib.server",
    "h2",
    "hpack",
    "betterproto2",
    "supervisor._proto.supervisor.v1",
    "supervisor._proto.google.protobuf",
    "dateutil",
    "supervisor.client",
    "supervisor.daemon",
    "supervisor._attached",
    "typing",
    "shutil",
)

_PROBE = """
import sys
from supervisor.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = %r
print("LOADED=" + " ".join(sorted(
    m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in heavy)
)))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["ps"],
        ["ps", "--json", "-a"],
        ["run", "-d", "--rootfs", "/srv/r", "--memory", "64m", "sh", "-c", "true"],
        ["rm", "-f", "a", "b"],
        ["stop", "-t", "3", "a"],
        ["start", "a"],
        ["kill", "a"],
        ["pause", "a"],
        ["unpause", "a"],
        ["inspect", "a", "b"],
        ["logs", "-t", "--since", "10m", "a"],
        ["events", "--json"],
        ["stats", "--json"],
        ["apply", "/tmp"],
        ["reload"],
        ["version"],
        ["ps", "--help"],
    ],
)
def test_verbs_import_only_what_they_need(tmp_path: Path, argv: list[str]) -> None:
    probe = _PROBE % (HEAVY,)
    done = subprocess.run(
        [sys.executable, "-c", probe, "--socket", str(tmp_path / "none.sock"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=TOP,
    )
    assert _loaded(done.stdout) == [], f"{argv}: {done.stderr}"


def _loaded(stdout: str) -> list[str]:
    line = next(x for x in stdout.splitlines() if x.startswith("LOADED="))
    return line[len("LOADED=") :].split()


def test_attached_run_still_uses_grpclib(tmp_path: Path) -> None:
    probe = _PROBE % (("grpclib.client", "anyio"),)
    argv = ["--socket", str(tmp_path / "none.sock"), "run", "--rootfs", "/srv/r", "true"]
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                          text=True, timeout=60, cwd=TOP)  # fmt: skip
    assert {"anyio", "grpclib.client"} <= set(_loaded(done.stdout))
    assert "cannot reach the daemon" in done.stderr


# -- against a fake control service --------------------------------------------------------


@pytest.fixture(autouse=True)
def _sigpipe() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGPIPE)
    yield
    signal.signal(signal.SIGPIPE, previous)  # main() sets SIG_DFL, as the CLI wants


class FakeControl:
    """The methods the tests call, answering as the daemon would."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.requests: list[Any] = []
        self.containers: list[pb.ContainerInfo] = []
        self.records: list[pb.LogRecord] = []

    async def _each(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        self.requests.append(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(random.random() * 0.03)
            if request.id.startswith("missing"):
                raise GRPCError(Status.NOT_FOUND, f"no container {request.id!r}\nreally")
            if request.id.startswith("broken"):
                raise GRPCError(Status.UNKNOWN, f'exec: "{request.id}": executable file not found')
        finally:
            self.in_flight -= 1
        await stream.send_message(
            pb.RemoveResponse() if isinstance(request, pb.RemoveRequest) else pb.ContainerInfo()
        )

    async def _list(self, stream: Stream[Any, Any]) -> None:
        self.requests.append(await stream.recv_message())
        await stream.send_message(pb.ListResponse(containers=self.containers))

    async def _logs(self, stream: Stream[Any, Any]) -> None:
        self.requests.append(await stream.recv_message())
        for record in self.records:
            await stream.send_message(record)

    async def _run(self, stream: Stream[Any, Any]) -> None:
        first = await stream.recv_message()
        self.requests.append(first)
        definition = first.request.definition
        if definition.id == "taken":
            raise GRPCError(Status.ALREADY_EXISTS, "container taken already exists")
        if definition.command == ["nosuchcmd"]:
            raise GRPCError(Status.UNKNOWN, 'exec: "nosuchcmd": executable file not found in $PATH')
        await stream.send_message(
            pb.RunOutput(started=pb.ContainerInfo(id=definition.id or "made_up"))
        )

    def __mapping__(self) -> dict[str, Handler]:
        unary = Cardinality.UNARY_UNARY
        path = "/supervisor.v1.Control/"
        return {
            path + "Remove": Handler(self._each, unary, pb.RemoveRequest, pb.RemoveResponse),
            path + "Stop": Handler(self._each, unary, pb.StopRequest, pb.ContainerInfo),
            path + "Kill": Handler(self._each, unary, pb.KillRequest, pb.ContainerInfo),
            path + "Inspect": Handler(self._each, unary, pb.ContainerRef, pb.ContainerInfo),
            path + "List": Handler(self._list, unary, pb.ListRequest, pb.ListResponse),
            path + "Logs": Handler(
                self._logs, Cardinality.UNARY_STREAM, pb.LogsRequest, pb.LogRecord
            ),
            path + "Run": Handler(self._run, Cardinality.STREAM_STREAM, pb.RunInput, pb.RunOutput),
        }


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeControl, str]]:
    service = FakeControl()
    path = tmp_path / "control.sock"
    with ServerThread(path, service, ProtoCodec()):
        yield service, str(path)


def test_rm_of_many_ids_runs_concurrently_one_line_each_in_order(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    service, path = fake
    ids = [f"missing{i}" if i % 5 == 2 else f"c{i}" for i in range(40)]
    began = time.monotonic()
    code = cli.main(["--socket", path, "rm", "-f", *ids])
    took = time.monotonic() - began
    out, err = capsys.readouterr()
    assert code == 125
    assert out.splitlines() == [i for i in ids if not i.startswith("missing")]
    assert err.splitlines() == [
        f"supervisor rm: no container '{i}'\\nreally" for i in ids if i.startswith("missing")
    ]
    assert [r.id for r in service.requests] == ids and all(r.force for r in service.requests)
    assert 1 < service.most_in_flight <= _commands.IN_FLIGHT
    assert took < 40 * 0.03  # not one after the other


def test_stop_and_kill_each(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    service, path = fake
    assert cli.main(["--socket", path, "stop", "-t", "2.5", "a", "b"]) == 0
    assert capsys.readouterr().out == "a\nb\n"
    assert [(r.id, r.timeout, r.has_timeout) for r in service.requests] == [
        ("a", 2.5, True),
        ("b", 2.5, True),
    ]
    service.requests.clear()
    assert cli.main(["--socket", path, "kill", "-s", "HUP", "a"]) == 0
    assert [(r.id, r.signal, r.proxy) for r in service.requests] == [("a", "HUP", False)]


def test_inspect_fails_on_the_first_error(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = fake
    assert cli.main(["--socket", path, "inspect", "a", "missing1", "b"]) == 125
    out, err = capsys.readouterr()
    assert out == "" and err == "supervisor inspect: no container 'missing1'\\nreally\n"


def test_ps_json_times(fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]) -> None:
    service, path = fake
    started = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    nanos = (started - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000 + 999
    service.containers = [
        pb.ContainerInfo(id="a", status="running", pid=42, started_at_unix_nanos=nanos,
                         command=["sleep", "1"], labels={"k": "v"}, network="bridge",
                         address="10.213.0.2", ports=["127.0.0.1:8080:80/tcp", "53:53/udp"],
                         image="docker.io/library/busybox:1.36"),
        pb.ContainerInfo(id="b", status="exited", exited=True, exit_code=3, problem="gone"),
    ]  # fmt: skip
    assert cli.main(["--socket", path, "ps", "-a", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got[0]["started_at"] == "2026-01-02T03:04:05.678901+00:00"
    assert got[0]["finished_at"] is None and got[0]["labels"] == {"k": "v"}
    assert got[0]["exit_code"] is None and got[1]["exit_code"] == 3
    assert got[1]["problem"] == "gone" and service.requests[-1].all
    assert got[0]["address"] == "10.213.0.2" and got[1]["address"] is None
    assert got[0]["ports"] == ["127.0.0.1:8080:80/tcp", "53:53/udp"]
    assert cli.main(["--socket", path, "ps"]) == 0
    out, err = capsys.readouterr()
    header, first, second = out.splitlines()
    assert header.split() == [
        "ID", "STATUS", "PID", "RESTART", "RESTARTS", "ADDRESS", "PORTS", "IMAGE", "COMMAND"
    ]  # fmt: skip
    # (restart: "")
    assert first.split() == [
        "a", "running", "42", "0", "10.213.0.2", "127.0.0.1:8080->80/tcp,",
        "0.0.0.0:53->53/udp", "busybox:1.36", "sleep", "1",
    ]  # fmt: skip
    assert second.split() == ["b", "exited", "(3)", "(!)", "-", "0", "-", "-", "-"]
    assert got[0]["image"] == "docker.io/library/busybox:1.36" and got[1]["image"] is None
    assert err == "(!) b: gone\n"


def test_logs_since_and_timestamps(
    fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]
) -> None:
    service, path = fake
    when = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    nanos = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    service.records = [
        pb.LogRecord(time_unix_nanos=nanos, stream="stdout", line=b"out\n"),
        pb.LogRecord(time_unix_nanos=nanos + 1000, stream="stderr", line=b"err\n"),
    ]
    before = time.time_ns()
    assert cli.main(["--socket", path, "logs", "-t", "--since", "10s", "c1"]) == 0
    request = service.requests[-1]
    assert request.id == "c1" and not request.has_tail
    assert before - 11 * 10**9 < request.since_unix_nanos <= time.time_ns() - 10 * 10**9
    assert cli.main(["--socket", path, "logs", "--since", "1960-01-01T00:00:00Z", "c1"]) == 0
    assert service.requests[-1].since_unix_nanos == 0  # before 1970: all of them
    assert cli.main(["--socket", path, "logs", "--since", "9999-12-31T00:00:00Z", "c1"]) == 0
    assert service.requests[-1].since_unix_nanos == 2**63 - 1


def test_run_detached(fake: tuple[FakeControl, str], capsys: pytest.CaptureFixture[str]) -> None:
    service, path = fake
    argv = ["--socket", path, "run", "-d", "--rootfs", "rel/root", "-e", "A=1", "--memory", "1k",
            "--name", "web", "--", "sh", "-c", "x"]  # fmt: skip
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == "web\n"
    request = service.requests[-1].request
    assert not request.attach and request.definition.command == ["sh", "-c", "x"]
    assert request.definition.rootfs == str(Path("rel/root").absolute())
    assert request.definition.env == {"A": "1"} and request.definition.memory == 1024
    assert cli.main(["--socket", path, "run", "-d", "--rootfs", "/r", "true"]) == 0
    assert capsys.readouterr().out == "made_up\n"
    assert (
        cli.main(["--socket", path, "run", "-d", "--name", "taken", "--rootfs", "/r", "x"]) == 125
    )
    assert capsys.readouterr().err == "supervisor run: container taken already exists\n"
    assert cli.main(["--socket", path, "run", "-d", "--rootfs", "/r", "nosuchcmd"]) == 127
