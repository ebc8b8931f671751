"""Fuzz the control API of a real daemon with its own containerd (issue 9).

Generated requests go to every call but Events and Reload (Logs without
follow, Version only malformed): ids that name nothing, and the same calls on containers
that exist (one that keeps running, for Exec, Stats and Logs; one whose state
the calls change; one that has exited); Run streams with generated
definitions (rootfs, command, env, user, cwd, restart, stop signal and
timeout, memory, cpus, pids, mounts, labels, the reserved label prefix);
Exec streams; Apply on generated definitions directories; and requests whose
bytes are not what their type encodes to (wrong wire types, bad UTF-8).

Every call ends OK or with a status that maps to a typed error: never UNKNOWN
with grpclib's "Internal Server Error" (an exception the daemon did not
expect), never INTERNAL, its message one line. UNKNOWN with containerd's own
words (runc refusing a command, a cwd) is a ContainerdError: typed. The
daemon stays up (its process runs, List answers) and its log holds no traceback.

Left behind is checked after the run, once every container the test made is
removed: no container or task in the namespace (containerd's view and the
daemon's), no shim or container process, no cgroup or runc state, no task
bundle, no FIFO directory under the daemon's fifo dir. The daemon keeps the
JSON log of a removed container (`logs` may still be asked for it): a log file
is allowed only for an id the test created. The containers run on a rootfs of
the test's own, which runc changes (working directories and mount points are
made in it) and the test removes.

Per run (deterministic; see tests/fuzz.py): 200 malformed requests, 300
sequences of 1 to 4 unary calls (about 880 calls), 60 Logs reads, 200 Run
streams (about a quarter start a container), 120 Exec streams and 60 Apply
calls: about 1,500 requests, in about 30 s.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError
from hypothesis import given
from hypothesis import strategies as st

from supervisor import Client
from supervisor._proto.supervisor import v1 as pb
from supervisor.errors import SupervisorError, from_grpc
from supervisor.testing import busybox_rootfs, namespace_leftovers, namespace_processes

from ..fuzz import (
    INT64_MAX,
    PREFIX,
    Counter,
    fuzz_settings,
    ids,
    odd_floats,
    odd_paths,
    restarts,
    signal_strings,
    string_maps,
    texts,
    toml_document,
    users,
)
from ..unit.test_fuzz_parsers import Places, definition_tables
from .conftest import SHIM_EXIT_TIMEOUT
from .daemon_harness import DaemonDirs, dirs

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio

UNARY_SEQUENCES = 300  # of 1 to 4 calls
LOGS = 60
RUNS = 200
EXECS = 120
APPLIES = 60
RAW = 200

#: Bound on one call; the slowest (a Run that starts a container, an Exec) take
#: a fraction of a second.
CALL_TIMEOUT = 30.0

KEEP = "fz-keep"  # runs all along: Exec, Stats, Logs
VICTIM = "fz-victim"  # Start, Stop, Kill, Pause, Resume, Remove... change its state
EXITED = "fz-exited"  # ran `true` and stays exited

#: The victim ends at once on SIGTERM (its stop signal), so a Stop with any
#: timeout returns quickly; SIGHUP and the like end its `sleep` and so the
#: container, which `always` brings back.
VICTIM_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]

_T = TypeVar("_T")


@dataclass
class Fuzz:
    """One daemon under fuzz: its stub, what the test made, what came back."""

    dirs: DaemonDirs
    stub: pb.ControlStub
    channel: Channel
    raw: Channel
    created: set[str] = field(default_factory=set)  # ids to remove at the end
    ever: set[str] = field(default_factory=set)  # every id the test created
    outcomes: Tally[str] = field(default_factory=Tally)
    unknown: set[str] = field(default_factory=set)  # UNKNOWN statuses: containerd's words

    def record(self, method: str, outcome: object) -> None:
        self.outcomes[f"{method} {outcome}"] += 1


def check_status(fz: Fuzz, method: str, exc: GRPCError) -> SupervisorError:
    """A status the client maps to a typed error, with a one-line message;
    not grpclib's answer to an exception the handler did not expect."""
    message = exc.message or ""
    assert exc.status is not Status.INTERNAL, f"{method}: INTERNAL {message}"
    assert not (exc.status is Status.UNKNOWN and message == "Internal Server Error"), (
        f"{method}: an unhandled exception in the daemon:\n{last_traceback(fz)}"
    )
    assert len(message.splitlines()) <= 1, f"{method}: {message!r}"
    error = from_grpc(exc)
    assert isinstance(error, SupervisorError)
    fz.record(method, exc.status.name)
    if exc.status is Status.UNKNOWN:
        fz.unknown.add(f"{method}: {message}")
    return error


def last_traceback(fz: Fuzz) -> str:
    output = fz.dirs.output()
    at = output.rfind("Traceback")
    return output[at : at + 4000] if at >= 0 else "(no traceback in the daemon's log)"


async def unary(fz: Fuzz, method: str, message: Any) -> Any | None:
    """Call ``method``; its reply, or None after checking the error status."""
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            reply = await getattr(fz.stub, method)(message)
    except GRPCError as exc:
        check_status(fz, method, exc)
        return None
    fz.record(method, "OK")
    return reply


def run_in_thread(fz: Fuzz, body: Callable[[Callable[..., Awaitable[_T]]], None]) -> Any:
    """Run hypothesis (synchronous) in a worker thread; ``body`` gets a function
    that runs a coroutine function on the test's event loop and returns its result."""

    def call(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        return anyio.from_thread.run(fn, *args)

    return anyio.to_thread.run_sync(body, call)


async def alive(fz: Fuzz) -> None:
    """The daemon runs and answers; its log shows no traceback."""
    assert all(p.poll() is None for p in fz.dirs.procs), fz.dirs.output()[-3000:]
    with anyio.fail_after(CALL_TIMEOUT):
        await fz.stub.list(pb.ListRequest(all=True))
    assert "Traceback" not in fz.dirs.output(), last_traceback(fz)


# -- strategies ----------------------------------------------------------------------


def target_ids(existing: tuple[str, ...], anything: int) -> st.SearchStrategy[str]:
    """One of the ``existing`` ids (repeat one to weigh it), or one time in
    ``anything`` more, any id at all."""
    # Not one_of: hypothesis does not repeat a value, and prefers the branch
    # with new ones to find: the few existing ids would be rare.
    return st.sampled_from([*existing, *[None] * anything]).flatmap(
        lambda cid: st.just(cid) if cid is not None else ids
    )


int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 1, 2**31 - 1]))
int64s = st.one_of(
    st.integers(-(2**63), INT64_MAX),
    st.sampled_from([0, -1, 1, 4 * 1024 * 1024 - 1, 4 * 1024 * 1024, 64 * 1024 * 1024, INT64_MAX]),
)
uint32s = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 80, 2**32 - 1]))
#: Stop timeouts: odd ones, and none long. The daemon waits as long as it is
#: asked to, and a paused victim cannot act on its stop signal meanwhile.
grace_periods = st.one_of(
    odd_floats.filter(lambda t: not t <= 2.0 or t < 0),
    st.sampled_from([0.0, -0.0, 1e-300, 0.5, 2.0, -1.0, -60.0, math.nan, -math.inf]),
).map(lambda t: t if not t > 2.0 else 2.0)
#: LogsRequest.since_unix_nanos: none, any int64 (before 1970 and after 2262
#: too), an hour ago and the epoch's first nanosecond.
since_nanos = st.one_of(
    st.just(0),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from(
        [
            (datetime.now(UTC) - timedelta(hours=1) - datetime(1970, 1, 1, tzinfo=UTC))
            // timedelta(microseconds=1)
            * 1000,
            1,
        ]
    ),
)

#: Commands that end by themselves (or that cannot start).
commands = st.one_of(
    st.sampled_from(
        [
            ["true"],
            ["sh", "-c", "echo out; echo err >&2; exit 3"],
            ["/nonexistent"],
            ["/etc/passwd"],  # not executable
            ["/bin"],  # a directory
            ["echo", "-n"],
            [],
            [""],
            ["", "x"],
        ]
    ),
    st.lists(texts, min_size=1, max_size=3),
    texts.map(lambda t: ["echo", t]),
)


@st.composite
def definitions(draw: st.DrawFn, places: Places) -> pb.Definition:
    """Mostly a sound definition (busybox, a command that ends) with one to
    three fields at fault; sometimes anything at all."""
    rootfs = st.one_of(
        st.just(str(places.rootfs)),
        st.sampled_from(["", "relative", str(places.file), str(places.data), "/nonexistent"]),
        odd_paths.filter(lambda p: not p.startswith("/") or "\0" in p or len(p) > 255),
    )
    mounts = st.lists(
        st.builds(
            pb.Mount,
            source=st.one_of(
                st.just(str(places.data)),
                st.sampled_from(["", "relative", "/nonexistent", str(places.file)]),
                odd_paths.filter(lambda p: not p.startswith("/") or "\0" in p or len(p) > 255),
            ),
            destination=st.one_of(st.sampled_from(["/data", "/mnt/x", "", "relative"]), odd_paths),
            readonly=st.booleans(),
        ),
        max_size=2,
    )
    fields: dict[str, st.SearchStrategy[Any]] = {
        "id": target_ids((KEEP, VICTIM), anything=8),
        "rootfs": rootfs,
        "command": commands,
        "env": string_maps,
        "user": users,
        "cwd": st.one_of(st.sampled_from(["", "/", "/tmp", "relative", "/nonexistent"]), odd_paths),
        "restart": restarts,
        "stop_signal": signal_strings,
        "stop_timeout": odd_floats,
        "memory": int64s,
        "cpus": odd_floats,
        "pids": int64s,
        "labels": st.one_of(
            string_maps, texts.map(lambda t: {PREFIX + t: "x"}), st.just({"team": "fuzz"})
        ),
        "terminal": st.booleans(),
        "stdin": st.booleans(),
        "mounts": mounts,
    }
    if draw(st.integers(0, 3)) == 0:
        chosen = sorted(fields)
    else:
        chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3))
    values: dict[str, Any] = {
        "id": "",
        "rootfs": str(places.rootfs),
        "command": ["true"],
        "stop_timeout": 1.0,
    }
    for name in chosen:
        values[name] = draw(fields[name])
    return pb.Definition(**values)


@st.composite
def exec_starts(draw: st.DrawFn) -> pb.ExecStart:
    sound = draw(st.integers(0, 2)) > 0
    return pb.ExecStart(
        id=draw(target_ids((KEEP, KEEP, KEEP, KEEP, EXITED, VICTIM), anything=2)),
        command=draw(commands),
        terminal=draw(st.booleans()),
        stdin=draw(st.booleans()),
        env={} if sound else draw(string_maps),
        user="" if sound else draw(st.one_of(users, st.just(""))),
        cwd="" if sound else draw(st.one_of(st.sampled_from(["", "/", "relative"]), odd_paths)),
        size=draw(st.one_of(st.none(), st.builds(pb.Resize, width=uint32s, height=uint32s))),
    )


def unary_requests() -> st.SearchStrategy[tuple[str, Any]]:
    # Calls that change the state of a container take a few hundred ms: fewer of those.
    here = target_ids((VICTIM, EXITED, KEEP), anything=1)
    changing = target_ids((VICTIM, EXITED), anything=6)  # not KEEP: it stays running
    refs = st.builds(pb.ContainerRef, id=here)
    return st.one_of(
        st.tuples(st.just("inspect"), refs),
        st.tuples(st.just("stats"), refs),
        st.tuples(st.just("list"), st.builds(pb.ListRequest, all=st.booleans())),
        st.tuples(st.just("start"), st.builds(pb.ContainerRef, id=changing)),
        st.tuples(st.just("pause"), st.builds(pb.ContainerRef, id=changing)),
        st.tuples(st.just("resume"), st.builds(pb.ContainerRef, id=changing)),
        st.tuples(
            st.just("stop"),
            st.builds(
                pb.StopRequest, id=changing, timeout=grace_periods, has_timeout=st.booleans()
            ),
        ),
        st.tuples(
            st.just("kill"),
            st.builds(
                pb.KillRequest,
                id=changing,
                signal=st.one_of(signal_strings, st.sampled_from(["HUP", "USR1", "0", "CONT"])),
                proxy=st.booleans(),
            ),
        ),
        st.tuples(
            st.just("remove"),
            st.builds(pb.RemoveRequest, id=st.one_of(ids, st.just("")), force=st.booleans()),
        ),
    )


def raw_payloads(message_type: type) -> st.SearchStrategy[bytes]:
    """Bytes a request of ``message_type`` is not: wrong wire types for its
    fields, strings that are not UTF-8, cut or random bytes."""
    fields = [(number, wire) for number in range(1, 18) for wire in (0, 1, 2, 3, 5)]

    def field(number: int, wire: int, body: bytes) -> bytes:
        tag = number << 3 | wire
        key = bytes([tag]) if tag < 0x80 else bytes([tag & 0x7F | 0x80, tag >> 7])
        if wire == 0:
            return key + (body[:1] or b"\x01")
        if wire == 1:
            return key + body[:8].ljust(8, b"\0")
        if wire == 2:
            return key + bytes([len(body[:100])]) + body[:100]
        if wire == 5:
            return key + body[:4].ljust(4, b"\0")
        return key  # a group start, never ended

    one = st.builds(
        lambda f, body: field(*f, body),
        st.sampled_from(fields),
        st.one_of(st.binary(max_size=12), st.sampled_from([b"\xff\xfe", b"\x80", b"\0"])),
    )
    return st.one_of(
        st.lists(one, min_size=1, max_size=3).map(b"".join),
        st.binary(max_size=40),
    )


# -- the calls -----------------------------------------------------------------------


async def run_stream(fz: Fuzz, request: pb.RunRequest, *, detach_early: bool) -> None:
    """One Run; a container it started is removed (rm -f) right after."""
    started: str | None = None
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            async with fz.channel.request(
                "/supervisor.v1.Control/Run", Cardinality.STREAM_STREAM, pb.RunInput, pb.RunOutput
            ) as stream:
                await stream.send_message(pb.RunInput(request=request))
                first = await stream.recv_message()
                if first is not None and first.started is not None:
                    started = first.started.id
                    fz.created.add(started)
                    fz.ever.add(started)
                if started is not None and request.attach and not detach_early:
                    if request.definition is not None and request.definition.stdin:
                        await stream.send_message(pb.RunInput(close_stdin=True))
                    await _end(stream)
                    while (message := await stream.recv_message()) is not None:
                        if message.exit_code is not None:
                            break
                elif started is not None and request.attach:
                    await stream.cancel()  # the client goes away mid-call
                    fz.record("run", "DETACHED")
                    return
                else:
                    await _end(stream)
                await stream.recv_trailing_metadata()
    except GRPCError as exc:
        check_status(fz, "run", exc)
    except StreamTerminatedError:
        # grpclib may see the reset that follows an immediate refusal first.
        fz.record("run", "RESET")
    else:
        fz.record("run", "OK" if started else "NOT STARTED")
    if started is not None:
        await remove(fz, started)


async def _end(stream: Any) -> None:
    """Half-close; the server may have ended the call already."""
    with contextlib.suppress(StreamTerminatedError):
        await stream.end()


async def remove(fz: Fuzz, cid: str) -> None:
    reply = await unary(fz, "remove", pb.RemoveRequest(id=cid, force=True))
    if reply is not None or cid not in await listed(fz):
        fz.created.discard(cid)


async def listed(fz: Fuzz) -> set[str]:
    with anyio.fail_after(CALL_TIMEOUT):
        reply = await fz.stub.list(pb.ListRequest(all=True))
    return {c.id for c in reply.containers}


async def exec_stream(fz: Fuzz, start: pb.ExecStart) -> None:
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            async with fz.channel.request(
                "/supervisor.v1.Control/Exec",
                Cardinality.STREAM_STREAM,
                pb.ExecInput,
                pb.ExecOutput,
            ) as stream:
                await stream.send_message(pb.ExecInput(start=start))
                if start.stdin:
                    await stream.send_message(pb.ExecInput(stdin=b"input\n"))
                    await stream.send_message(pb.ExecInput(close_stdin=True))
                await _end(stream)
                while (message := await stream.recv_message()) is not None:
                    if message.exit_code is not None:
                        break
                await stream.recv_trailing_metadata()
    except GRPCError as exc:
        check_status(fz, "exec", exc)
    except StreamTerminatedError:
        fz.record("exec", "RESET")
    else:
        fz.record("exec", "OK")


class RawCodec(CodecBase):
    """Sends bytes as they are: requests no protobuf encoder would write."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


#: Every method, with the request type its payloads are made from.
METHODS: dict[str, tuple[Cardinality, type]] = {
    "Version": (Cardinality.UNARY_UNARY, pb.VersionRequest),
    "Run": (Cardinality.STREAM_STREAM, pb.RunInput),
    "List": (Cardinality.UNARY_UNARY, pb.ListRequest),
    "Inspect": (Cardinality.UNARY_UNARY, pb.ContainerRef),
    "Start": (Cardinality.UNARY_UNARY, pb.ContainerRef),
    "Stop": (Cardinality.UNARY_UNARY, pb.StopRequest),
    "Kill": (Cardinality.UNARY_UNARY, pb.KillRequest),
    "Remove": (Cardinality.UNARY_UNARY, pb.RemoveRequest),
    "Pause": (Cardinality.UNARY_UNARY, pb.ContainerRef),
    "Resume": (Cardinality.UNARY_UNARY, pb.ContainerRef),
    "Exec": (Cardinality.STREAM_STREAM, pb.ExecInput),
    "Logs": (Cardinality.UNARY_STREAM, pb.LogsRequest),
    "Stats": (Cardinality.UNARY_UNARY, pb.ContainerRef),
    "Apply": (Cardinality.UNARY_UNARY, pb.ApplyRequest),
}


async def raw(fz: Fuzz, method: str, payload: bytes) -> None:
    """One request whose bytes are not what the request type encodes to."""
    cardinality, _ = METHODS[method]
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            async with fz.raw.request(
                f"/supervisor.v1.Control/{method}", cardinality, bytes, bytes
            ) as stream:
                await stream.send_message(payload, end=True)
                while await stream.recv_message() is not None:
                    pass
                await stream.recv_trailing_metadata()
    except GRPCError as exc:
        check_status(fz, f"raw {method}", exc)
    except StreamTerminatedError:
        fz.record(f"raw {method}", "RESET")
    else:
        fz.record(f"raw {method}", "OK")


async def logs(fz: Fuzz, request: pb.LogsRequest) -> None:
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            async for _ in fz.stub.logs(request):
                pass
    except GRPCError as exc:
        check_status(fz, "logs", exc)
    else:
        fz.record("logs", "OK")


async def apply(fz: Fuzz, directory: str) -> None:
    reply = await unary(fz, "apply", pb.ApplyRequest(directory=directory))
    if reply is None:
        return
    for error in reply.errors:
        assert len(error.splitlines()) == 1, error
    fz.record("apply", f"created {len(reply.created)}")
    for cid in [*reply.created, *reply.replaced]:
        fz.created.add(cid)
        fz.ever.add(cid)
        await remove(fz, cid)


# -- set-up and leak check -------------------------------------------------------------


async def make_targets(fz: Fuzz, rootfs: Path) -> None:
    for cid, command, restart in (
        (KEEP, ["sleep", "1000"], "no"),
        (VICTIM, VICTIM_COMMAND, "always"),
        (EXITED, ["true"], "no"),
    ):
        definition = pb.Definition(id=cid, rootfs=str(rootfs), command=command, restart=restart)
        with anyio.fail_after(CALL_TIMEOUT):
            async with fz.channel.request(
                "/supervisor.v1.Control/Run", Cardinality.STREAM_STREAM, pb.RunInput, pb.RunOutput
            ) as stream:
                await stream.send_message(pb.RunInput(request=pb.RunRequest(definition=definition)))
                first = await stream.recv_message()
                assert first is not None and first.started is not None, cid
                await stream.end()
                await stream.recv_trailing_metadata()
        fz.created.add(cid)
        fz.ever.add(cid)


async def leftovers(fz: Fuzz) -> list[str]:
    """What the test left behind, once it removed what it made."""
    dirs = fz.dirs
    found: list[str] = [f"listed by the daemon: {cid}" for cid in sorted(await listed(fz))]
    async with Client(dirs.address, dirs.namespace) as client:
        found += [f"container {c.id}" for c in await client.list_containers()]
        found += [f"task {t.container_id}" for t in await client.list_tasks()]
    with anyio.move_on_after(SHIM_EXIT_TIMEOUT):
        while namespace_processes(dirs.namespace):  # noqa: ASYNC110 (a shim exits after Delete)
            await anyio.sleep(0.05)
    found += [f"process {pid}" for pid in namespace_processes(dirs.namespace)]
    found += [f"cgroup or runc state {p}" for p in namespace_leftovers(dirs.namespace)]
    bundles = dirs.state / "containerd" / "state" / "io.containerd.runtime.v2.task"
    bundles = bundles / dirs.namespace
    if bundles.is_dir():
        found += [f"task bundle {p}" for p in bundles.iterdir()]
    fifo = dirs.state / "fifo"
    if fifo.is_dir():
        found += [f"fifo dir {p}" for p in fifo.iterdir()]
    if dirs.logs.is_dir():
        for path in dirs.logs.iterdir():
            cid = re.sub(r"\.log(\.\d+)?$", "", path.name)
            if cid not in fz.ever:
                found += [f"log file {path} of no container the test made"]
    return found


# -- the test ------------------------------------------------------------------------


async def test_fuzz_control_api(dirs: DaemonDirs, tmp_path: Path) -> None:
    # A rootfs of its own: runc makes the working directories and mount points
    # asked for inside it, some 2,000 levels deep (too deep for shutil.rmtree).
    rootfs = busybox_rootfs(tmp_path / "fuzz-rootfs")
    places = Places(tmp_path / "work", rootfs, tmp_path / "data", tmp_path / "file")
    places.work.mkdir()
    places.data.mkdir()
    places.file.write_text("a file\n")
    dirs.start()
    await dirs.message("READY=1")
    channel = Channel(path=str(dirs.control))
    raw_channel = Channel(path=str(dirs.control), codec=RawCodec())
    fz = Fuzz(dirs, pb.ControlStub(channel), channel, raw_channel)
    started_at = anyio.current_time()
    try:
        await make_targets(fz, rootfs)
        counts = await fuzz_all(fz, places)
        took = anyio.current_time() - started_at
        print(f"\ncontrol fuzz: {sum(counts.values())} requests in {took:.1f}s: {counts}")
        print("outcomes: " + ", ".join(f"{k}: {v}" for k, v in sorted(fz.outcomes.items())))
        print("UNKNOWN statuses:\n  " + "\n  ".join(sorted(fz.unknown)))
        await alive(fz)
        for cid in sorted(fz.created):
            await remove(fz, cid)
        assert not fz.created, f"could not remove {sorted(fz.created)}"
        left = await leftovers(fz)
        assert not left, "left behind: " + ", ".join(left)
        await alive(fz)
    finally:
        channel.close()
        raw_channel.close()
        await anyio.run_process(["rm", "-rf", "--one-file-system", str(rootfs)])
    assert sum(counts.values()) >= 2 * UNARY_SEQUENCES + LOGS + RUNS + EXECS + APPLIES + RAW
    assert fz.outcomes["run OK"] >= RUNS // 20, "too few Runs started a container"
    assert fz.outcomes["exec OK"] >= EXECS // 10, "too few Execs ran"


async def fuzz_all(fz: Fuzz, places: Places) -> dict[str, int]:
    counters = {name: Counter() for name in ("raw", "unary", "logs", "run", "exec", "apply")}

    def unary_phase(call: Callable[..., Any]) -> None:
        # Short sequences: the calls on the victim take it through its states.
        @fuzz_settings(UNARY_SEQUENCES)
        @given(requests=st.lists(unary_requests(), min_size=1, max_size=4))
        def check(requests: list[tuple[str, Any]]) -> None:
            for request in requests:
                counters["unary"]()
                call(unary, fz, *request)

        check()

    def logs_phase(call: Callable[..., Any]) -> None:
        @fuzz_settings(LOGS)
        @given(
            request=st.builds(
                pb.LogsRequest,
                id=target_ids((KEEP, VICTIM, EXITED), anything=1),
                follow=st.just(False),
                tail=int32s,
                has_tail=st.booleans(),
                since_unix_nanos=since_nanos,
            )
        )
        def check(request: pb.LogsRequest) -> None:
            counters["logs"]()
            call(logs, fz, request)

        check()

    def run_phase(call: Callable[..., Any]) -> None:
        @fuzz_settings(RUNS)
        @given(
            request=st.builds(
                pb.RunRequest,
                definition=definitions(places),
                attach=st.booleans(),
                remove=st.booleans(),
            ),
            detach_early=st.booleans(),
        )
        def check(request: pb.RunRequest, detach_early: bool) -> None:
            counters["run"]()
            call(_run_stream, fz, request, detach_early)

        check()

    def exec_phase(call: Callable[..., Any]) -> None:
        @fuzz_settings(EXECS)
        @given(start=exec_starts())
        def check(start: pb.ExecStart) -> None:
            counters["exec"]()
            call(exec_stream, fz, start)

        check()

    def apply_phase(call: Callable[..., Any]) -> None:
        base = places.work / "apply"
        tables = definition_tables(places)

        @fuzz_settings(APPLIES)
        @given(
            files=st.lists(tables.map(toml_document), max_size=2),
            where=st.one_of(
                st.just("generated"),
                st.just("generated"),
                st.sampled_from(
                    ["", "relative", str(places.file), str(base / "missing"), str(base) + "/\0"]
                ),
                odd_paths.map(lambda p: str(base / "nowhere") + p),
            ),
        )
        def check(files: list[str], where: str) -> None:
            counters["apply"]()
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir()
            for index, text in enumerate(files):
                (base / f"fz{index}.toml").write_text(text)
            call(apply, fz, str(base) if where == "generated" else where)

        check()

    def raw_phase(call: Callable[..., Any]) -> None:
        @fuzz_settings(RAW)
        @given(method=st.sampled_from(sorted(METHODS)), data=st.data())
        def check(method: str, data: st.DataObject) -> None:
            counters["raw"]()
            payload = data.draw(raw_payloads(METHODS[method][1]))
            call(raw, fz, method, payload)

        check()

    for phase in (raw_phase, unary_phase, logs_phase, run_phase, exec_phase, apply_phase):
        began = anyio.current_time()
        await run_in_thread(fz, phase)
        fz.record(f"~ {phase.__name__} seconds:", round(anyio.current_time() - began, 1))
        await alive(fz)
        await settle(fz)
    return {name: counter.count for name, counter in counters.items()}


async def _run_stream(fz: Fuzz, request: pb.RunRequest, detach_early: bool) -> None:
    await run_stream(fz, request, detach_early=detach_early)


async def settle(fz: Fuzz) -> None:
    """Between phases: KEEP running and not paused (the victim may be anything)."""
    with contextlib.suppress(GRPCError):
        await fz.stub.resume(pb.ContainerRef(id=VICTIM))
    info = await fz.stub.inspect(pb.ContainerRef(id=KEEP))
    assert info.status == "running", info
