"""Errors raised by containerd-supervisor.

Every failure that crosses the client boundary is one of these; gRPC and
connection errors are translated in exactly one place, :func:`map_errors`.
Cancellation and timeouts (``TimeoutError`` from ``anyio.fail_after``) are
never translated.

::

    SupervisorError
    ├── InvalidArgument        bad id, spec or option; nothing was created
    ├── NotFound               no such container, task or process
    ├── AlreadyExists          the id is taken
    ├── FailedPrecondition     wrong state: a task still exists, not started...
    ├── Unavailable            containerd is not serving (socket gone, refused, stream dropped)
    ├── Unimplemented          containerd or the runtime does not support the call
    ├── ContainerdError        any other status containerd returned (carries it)
    └── ImageError             pulling, importing or reading an image failed
        ├── DigestMismatch     a blob's bytes do not match its digest (or size)
        ├── PlatformNotFound   the image has no manifest for the platform asked for
        ├── RegistryAuthError  the registry refused our credentials or token
        └── RegistryError      the registry failed a request, or cannot be reached
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

# grpclib (and typing, which it imports) load only where a status or a grpclib
# exception is at hand: the CLI imports this module on every call, and talks
# to the daemon without grpclib (supervisor/_h2client.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

__all__ = (
    "AlreadyExists",
    "ContainerdError",
    "DigestMismatch",
    "FailedPrecondition",
    "ImageError",
    "InvalidArgument",
    "NotFound",
    "PlatformNotFound",
    "RegistryAuthError",
    "RegistryError",
    "SupervisorError",
    "Unavailable",
    "Unimplemented",
    "from_grpc",
    "from_status",
    "map_errors",
    "one_line",
    "to_grpc",
)


class SupervisorError(Exception):
    """Base class of every error this package raises."""


class InvalidArgument(SupervisorError, ValueError):
    """An argument was rejected (by us before any call, or by containerd)."""


class NotFound(SupervisorError, LookupError):
    """The container, task or process does not exist."""


class AlreadyExists(SupervisorError):
    """An object with this id already exists."""


class FailedPrecondition(SupervisorError):
    """The object is not in a state that allows the operation."""


class Unavailable(SupervisorError, ConnectionError):
    """containerd is not reachable or stopped serving during the call."""


class Unimplemented(SupervisorError, NotImplementedError):
    """The operation is not supported by containerd or the runtime."""


class ContainerdError(SupervisorError):
    """containerd failed the call with a status we do not map to a class."""

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.status = status


class ImageError(SupervisorError):
    """An image could not be pulled, imported, unpacked or read."""


class DigestMismatch(ImageError):
    """A blob's bytes (or size) do not match the digest that names it."""


class PlatformNotFound(ImageError, LookupError):
    """The image has no manifest for the requested platform."""


class RegistryAuthError(ImageError, PermissionError):
    """The registry (or its token server) refused us."""


class RegistryError(ImageError):
    """The registry failed a request or could not be reached; ``status`` is
    its HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str) -> str:
    """``text`` with its line breaks and other unprintable characters escaped
    (``\\n``, ``\\x00``): a message that quotes what someone typed stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


#: By gRPC status code: NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
#: INVALID_ARGUMENT, UNAVAILABLE, UNIMPLEMENTED.
_BY_STATUS: dict[int, type[SupervisorError]] = {
    5: NotFound,
    6: AlreadyExists,
    9: FailedPrecondition,
    3: InvalidArgument,
    14: Unavailable,
    12: Unimplemented,
}

# A blob that does not match its digest is a FAILED_PRECONDITION for
# containerd's content store (content/local/writer.go); it is ours to name.
_PRECONDITION_BY_MESSAGE: tuple[tuple[str, type[SupervisorError]], ...] = (
    ("unexpected commit digest", DigestMismatch),
    ("unexpected commit size", DigestMismatch),
)

# containerd 1.6 returns some state errors as UNKNOWN; these messages say
# what they are.
_UNKNOWN_BY_MESSAGE: tuple[tuple[str, type[SupervisorError]], ...] = (
    ("cannot delete a running process", FailedPrecondition),
    ("cannot pause a paused container", FailedPrecondition),
    ("cannot resume a running process", FailedPrecondition),
)

_CONNECTION_ERRNOS = {errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE}


def from_grpc(exc: GRPCError) -> SupervisorError:
    """Translate a grpclib status error into our hierarchy."""
    return from_status(exc.status.value, exc.message or "")


def from_status(code: int, message: str) -> SupervisorError:
    """A gRPC status code and its message, as a call's trailers carry them (an
    unknown code is UNKNOWN): as :func:`from_grpc`, which comes here; the CLI's
    own client, which does not use grpclib, calls this."""
    cls = _BY_STATUS.get(code)
    if cls is FailedPrecondition:
        cls = next((c for text, c in _PRECONDITION_BY_MESSAGE if text in message), cls)
    if cls is not None and message:
        return cls(message)
    from grpclib.const import Status

    try:
        status = Status(code)
    except ValueError:
        status = Status.UNKNOWN
    message = message or status.name.lower().replace("_", " ")
    if cls is None and status is Status.UNKNOWN:
        cls = next((c for text, c in _UNKNOWN_BY_MESSAGE if text in message), None)
    if cls is None:
        return ContainerdError(message, status)
    return cls(message)


def to_grpc(exc: SupervisorError) -> GRPCError:
    """The other direction, for our own gRPC server: an error as a status
    (its message one line: runc's may quote a path with a newline in it)."""
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    message = one_line(str(exc))
    if isinstance(exc, ContainerdError) and exc.status is not None:
        return GRPCError(exc.status, message)
    for code, cls in _BY_STATUS.items():
        if type(exc) is cls:
            return GRPCError(Status(code), message)
    for code, cls in _BY_STATUS.items():
        if isinstance(exc, cls):
            return GRPCError(Status(code), message)
    return GRPCError(Status.UNKNOWN, message)


@contextmanager
def map_errors(what: str = "") -> Iterator[None]:
    """Translate wire and connection errors raised inside the block.

    ``what`` (e.g. ``"create task c1"``) prefixes connection-level messages so
    the caller knows which operation lost the daemon.
    """
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

    prefix = f"{what}: " if what else ""
    try:
        yield
    except TimeoutError:
        raise
    except GRPCError as exc:
        raise from_grpc(exc) from exc
    except (StreamTerminatedError, ProtocolError) as exc:
        raise Unavailable(f"{prefix}connection to containerd lost ({exc})") from exc
    except AttributeError as exc:
        # grpclib 0.4 opens a stream on a connection that is being torn down
        # (containerd just died) with "'Connection' object has no attribute
        # '_transport'": the same fault as a refused connection.
        if "_transport" not in str(exc):
            raise
        raise Unavailable(f"{prefix}connection to containerd lost") from exc
    except OSError as exc:
        if isinstance(exc, ConnectionError) or exc.errno in _CONNECTION_ERRNOS:
            raise Unavailable(f"{prefix}cannot reach containerd: {exc.strerror or exc}") from exc
        raise
