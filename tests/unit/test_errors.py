import errno

import anyio
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from supervisor.errors import (
    AlreadyExists,
    ContainerdError,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SupervisorError,
    Unavailable,
    Unimplemented,
    map_errors,
)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (Status.NOT_FOUND, NotFound),
        (Status.ALREADY_EXISTS, AlreadyExists),
        (Status.FAILED_PRECONDITION, FailedPrecondition),
        (Status.INVALID_ARGUMENT, InvalidArgument),
        (Status.UNAVAILABLE, Unavailable),
        (Status.UNIMPLEMENTED, Unimplemented),
        (Status.INTERNAL, ContainerdError),
        (Status.UNKNOWN, ContainerdError),
    ],
)
def test_grpc_status_maps_to_class(status: Status, cls: type[SupervisorError]) -> None:
    with pytest.raises(cls, match="boom") as info, map_errors("op"):
        raise GRPCError(status, "boom")
    assert isinstance(info.value.__cause__, GRPCError)


def test_unknown_status_with_known_message() -> None:
    with pytest.raises(FailedPrecondition), map_errors():
        raise GRPCError(Status.UNKNOWN, "failed to delete task: cannot delete a running process")


@pytest.mark.parametrize(
    "message",
    [
        "unexpected commit digest sha256:aa, expected sha256:bb: failed precondition",
        "unexpected commit size 3, expected 4: failed precondition",
    ],
)
def test_content_store_mismatch_is_a_digest_error(message: str) -> None:
    with pytest.raises(DigestMismatch, match="unexpected commit"), map_errors():
        raise GRPCError(Status.FAILED_PRECONDITION, message)


def test_containerd_error_keeps_status() -> None:
    with pytest.raises(ContainerdError) as info, map_errors():
        raise GRPCError(Status.INTERNAL, "x")
    assert info.value.status is Status.INTERNAL


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        ConnectionResetError(errno.ECONNRESET, "reset"),
        StreamTerminatedError("Connection lost"),
    ],
)
def test_connection_failures_are_unavailable(exc: Exception) -> None:
    with pytest.raises(Unavailable, match="create task c1"), map_errors("create task c1"):
        raise exc


def test_other_errors_pass_through() -> None:
    with pytest.raises(PermissionError), map_errors():
        raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(KeyError), map_errors():
        raise KeyError("x")


@pytest.mark.anyio
async def test_cancellation_and_timeouts_pass_through() -> None:
    with anyio.move_on_after(0.01) as scope, map_errors():
        await anyio.sleep(5)
    assert scope.cancelled_caught
    with pytest.raises(TimeoutError), anyio.fail_after(0.01), map_errors():
        await anyio.sleep(5)
    with pytest.raises(TimeoutError), map_errors():
        raise TimeoutError  # an OSError, but never a connection failure
