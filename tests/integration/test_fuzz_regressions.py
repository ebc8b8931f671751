"""What the fuzz suite (issue 9) found in the control API of a running daemon,
checked on one daemon: each of these answered UNKNOWN "Internal Server Error"
(a traceback in the daemon's log), left something behind, or answered a
message of several lines, before it was fixed."""

from __future__ import annotations

import math
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import anyio
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from supervisor._proto.supervisor import v1 as pb

from .daemon_harness import DaemonDirs, dirs

__all__ = ("dirs",)

pytestmark = pytest.mark.anyio

WAIT = 30.0


async def _run(channel: Channel, definition: pb.Definition) -> None:
    async with channel.request(
        "/supervisor.v1.Control/Run", Cardinality.STREAM_STREAM, pb.RunInput, pb.RunOutput
    ) as stream:
        await stream.send_message(pb.RunInput(request=pb.RunRequest(definition=definition)))
        first = await stream.recv_message()
        assert first is not None and first.started is not None
        await stream.end()
        await stream.recv_trailing_metadata()


async def _exec(channel: Channel, start: pb.ExecStart) -> None:
    async with channel.request(
        "/supervisor.v1.Control/Exec", Cardinality.STREAM_STREAM, pb.ExecInput, pb.ExecOutput
    ) as stream:
        await stream.send_message(pb.ExecInput(start=start), end=True)
        while await stream.recv_message() is not None:
            pass
        await stream.recv_trailing_metadata()


class _Raw(CodecBase):
    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        assert isinstance(message, bytes)
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


async def _raw_call(channel: Channel, method: str, payload: bytes) -> None:
    async with channel.request(
        f"/supervisor.v1.Control/{method}", Cardinality.UNARY_UNARY, bytes, bytes
    ) as stream:
        await stream.send_message(payload, end=True)
        await stream.recv_message()


async def _status(call: Awaitable[Any]) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await call
    return info.value


async def test_control_api_regressions(dirs: DaemonDirs, tmp_path: Path) -> None:
    dirs.start()
    await dirs.message("READY=1")
    channel = Channel(path=str(dirs.control))
    stub = pb.ControlStub(channel)
    rootfs = str(dirs.rootfs)
    try:
        with anyio.fail_after(WAIT):
            await _run(channel, pb.Definition(id="c1", rootfs=rootfs, command=["sleep", "1000"]))

            # Stop: a NaN or negative timeout was a ValueError or an instant TimeoutError.
            for timeout in (math.nan, -60.0):
                request = pb.StopRequest(id="c1", timeout=timeout, has_timeout=True)
                error = await _status(stub.stop(request))
                assert error.status is Status.INVALID_ARGUMENT, error

            # Apply: a path too long for the kernel was an OSError.
            long = str(tmp_path / ("y" * 300))
            error = await _status(stub.apply(pb.ApplyRequest(directory=long)))
            assert error.status is Status.INVALID_ARGUMENT
            assert "File name too long" in (error.message or "")

            # Exec refused (a user the rootfs does not have, a cwd runc refuses):
            # its FIFO directory stayed behind.
            fifo = dirs.state / "fifo"
            before = set(fifo.iterdir())
            for start in (
                pb.ExecStart(id="c1", command=["true"], user="nosuchuser"),
                pb.ExecStart(id="c1", command=["true"], cwd="relative"),
            ):
                error = await _status(_exec(channel, start))
                assert error.status in (Status.INVALID_ARGUMENT, Status.UNKNOWN), error
                assert error.message != "Internal Server Error"
            assert set(fifo.iterdir()) == before

            # runc's error quotes the cwd as it is: the status was two lines.
            definition = pb.Definition(id="c2", rootfs=rootfs, command=["true"], cwd="/a\nb\0")
            error = await _status(_run(channel, definition))
            assert "mkdir /a\\nb\\x00: invalid argument" in (error.message or ""), error

            # Pause twice, resume a running one: UNKNOWN from containerd, now preconditions.
            await stub.pause(pb.ContainerRef(id="c1"))
            error = await _status(stub.pause(pb.ContainerRef(id="c1")))
            assert error.status is Status.FAILED_PRECONDITION, error
            await stub.resume(pb.ContainerRef(id="c1"))
            error = await _status(stub.resume(pb.ContainerRef(id="c1")))
            assert error.status is Status.FAILED_PRECONDITION, error

            # A field of the wrong wire type reached the handler as an int.
            raw = Channel(path=str(dirs.control), codec=_Raw())
            try:
                error = await _status(_raw_call(raw, "Apply", b"\x08\x01"))
            finally:
                raw.close()
            assert error.status is Status.INVALID_ARGUMENT, error

            # A CLI argument that is not UTF-8 (bytes from the shell): a traceback
            # when the request was encoded.
            done = await anyio.to_thread.run_sync(lambda: dirs.cli("inspect", "c1\udcff"))
            assert (done.code, done.err) == (125, "supervisor: 'c1\\udcff' is not UTF-8 text\n")

            for cid in ("c1", "c2"):
                try:
                    await stub.remove(pb.RemoveRequest(id=cid, force=True))
                except GRPCError as exc:
                    assert exc.status is Status.NOT_FOUND
    finally:
        channel.close()
    assert "Traceback" not in dirs.output()
