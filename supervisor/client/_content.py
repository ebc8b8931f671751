"""containerd's content store: blobs by digest, written through its Write stream."""

from __future__ import annotations

import contextlib
import hashlib
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any

import anyio
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import StreamTerminatedError

from .._proto.containerd.services.content import v1 as content_pb
from .._proto.google.protobuf import FieldMask
from ..errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidArgument,
    Unavailable,
    from_status,
    map_errors,
)
from ._store_types import ContentInfo

#: Bound on a unary call to the content store.
CALL_TIMEOUT = 30.0
#: Bound on one message of a Read or Write stream (a reply, or room to send).
STREAM_STEP_TIMEOUT = 60.0
#: Size of a WRITE message (containerd's Go client sends 1 MiB; its limit is 16 MiB).
WRITE_CHUNK = 1 << 20
#: WRITE messages sent before their replies are read; replies that nobody
#: reads would fill the stream's window and stall containerd.
WRITE_WINDOW = 8
#: How long a write waits for another writer of the same ref ("ref locked").
LOCKED_TIMEOUT = 120.0
LOCKED_BACKOFF_FIRST = 0.05
LOCKED_BACKOFF_MAX = 2.0

_SERVICE = "/containerd.services.content.v1.Content"


def _check_digest(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256" or len(hexpart) != 64 or hexpart.strip("0123456789abcdef"):
        raise InvalidArgument(f"digest {digest!r} is not a sha256 digest")
    return digest


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _write_message(offset: int, length: int) -> tuple[bytearray, int]:
    """A gRPC message (prefix included) of a WriteContentRequest with action
    WRITE, ``offset``, and ``length`` bytes of data still to fill in; and
    where the data starts. Encoded by hand: the data goes straight into it.
    """
    head = b"\x08\x01"  # field 1 (action) = WRITE
    if offset:
        head += b"\x28" + _varint(offset)  # field 5 (offset)
    head += b"\x32" + _varint(length)  # field 6 (data), its length
    body = len(head) + length
    message = bytearray(5 + body)
    message[1:5] = body.to_bytes(4, "big")  # not compressed, length
    message[5 : 5 + len(head)] = head
    return message, 5 + len(head)


async def _send_encoded(stream: Any, message: bytearray) -> None:
    """What grpclib's ``send_message`` does, with a message encoded by us."""
    with stream._wrapper:
        await stream._stream.send_data(message, end_stream=False)
        stream._send_message_done = True
        stream._messages_sent += 1
        stream._stream.connection.messages_sent += 1


class ContentStore:
    """The content store of one namespace (and lease, if the metadata names one)."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str]) -> None:
        self._channel = channel
        self._metadata = dict(metadata)
        self._stub = content_pb.ContentStub(channel, metadata=self._metadata)

    async def info(self, digest: str) -> ContentInfo:
        """The blob's size and labels; ``NotFound`` if it is not in the store."""
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"get content {digest}"):
            reply = await self._stub.info(content_pb.InfoRequest(digest=_check_digest(digest)))
        assert reply.info is not None
        return ContentInfo.from_wire(reply.info)

    async def update(
        self, digest: str, labels: Mapping[str, str], *, remove: Iterable[str] = ()
    ) -> ContentInfo:
        """Set ``labels`` on the blob and drop the keys in ``remove``."""
        removed = [key for key in remove if key not in labels]
        paths = [f"labels.{key}" for key in [*labels, *removed]]
        request = content_pb.UpdateRequest(
            info=content_pb.Info(digest=_check_digest(digest), labels=dict(labels)),
            update_mask=FieldMask(paths=paths),
        )
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"update content {digest}"):
            reply = await self._stub.update(request)
        assert reply.info is not None
        return ContentInfo.from_wire(reply.info)

    async def list(self, *filters: str) -> list[ContentInfo]:
        """Blobs matching any of containerd's ``filters`` (all without)."""
        out: list[ContentInfo] = []
        request = content_pb.ListContentRequest(filters=list(filters))
        with anyio.fail_after(CALL_TIMEOUT), map_errors("list content"):
            async for reply in self._stub.list(request):
                out += [ContentInfo.from_wire(info) for info in reply.info]
        return out

    async def delete(self, digest: str) -> None:
        """Remove the blob now; ``NotFound`` if it is not there."""
        with anyio.fail_after(CALL_TIMEOUT), map_errors(f"delete content {digest}"):
            await self._stub.delete(content_pb.DeleteContentRequest(digest=_check_digest(digest)))

    async def read(self, digest: str, *, offset: int = 0, size: int = 0) -> AsyncGenerator[bytes]:
        """The blob's bytes from ``offset`` (``size`` of them, 0 for all), in
        the pieces containerd sends. Close it with ``aclosing`` if not drained."""
        request = content_pb.ReadContentRequest(
            digest=_check_digest(digest), offset=offset, size=size
        )
        with map_errors(f"read content {digest}"):
            async with self._channel.request(
                f"{_SERVICE}/Read",
                Cardinality.UNARY_STREAM,
                content_pb.ReadContentRequest,
                content_pb.ReadContentResponse,
                metadata=self._metadata,
            ) as stream:
                with anyio.fail_after(STREAM_STEP_TIMEOUT):
                    await stream.send_message(request, end=True)
                while True:
                    with anyio.fail_after(STREAM_STEP_TIMEOUT):
                        reply = await stream.recv_message()
                    if reply is None:
                        return
                    yield reply.data

    async def read_all(self, digest: str, *, limit: int) -> bytes:
        """The whole blob, if it is at most ``limit`` bytes (manifests, configs)."""
        info = await self.info(digest)
        if info.size > limit:
            raise InvalidArgument(f"blob {digest} is {info.size} bytes, more than {limit}")
        parts = []
        async for part in self.read(digest):
            parts.append(part)
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != digest.removeprefix("sha256:"):
            raise DigestMismatch(f"content {digest} in containerd does not match its digest")
        return data

    async def exists(self, digest: str) -> bool:
        """Whether the blob is in the store (of this namespace)."""
        from ..errors import NotFound

        try:
            await self.info(digest)
        except NotFound:
            return False
        return True

    async def hold(self, digest: str, size: int) -> bool:
        """Whether the blob is in the store. One that is is then held by the
        lease of this store's context too, so that garbage collection cannot
        take it before what will refer to it is written: containerd leases a
        blob that exists to a writer that expects it (Info and Update do not).
        Nothing is written."""

        async def nothing() -> AsyncIterator[bytes]:
            raise _Absent()  # reached only when containerd wants the bytes
            yield b""  # pragma: no cover

        try:
            return not await self.write(f"hold-{digest}", nothing(), digest=digest, size=size)
        except _Absent:
            return False

    async def write(
        self,
        ref: str,
        source: AsyncIterable[bytes],
        *,
        digest: str,
        size: int,
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Stream ``source`` into the store as blob ``digest`` of ``size`` bytes.

        containerd hashes the bytes as they arrive and commits them only under
        the digest they have: a blob that does not match its digest or size
        raises :class:`~supervisor.errors.DigestMismatch`. Returns
        False (and reads nothing) if the blob is already there. Another writer
        of ``ref`` is waited for. Nothing of a failed write stays in the store.
        """
        _check_digest(digest)
        if size < 0:
            raise InvalidArgument(f"blob {digest}: negative size {size}")
        delay = LOCKED_BACKOFF_FIRST
        with anyio.fail_after(LOCKED_TIMEOUT):
            while True:
                try:
                    return await self._write_once(ref, source, digest, size, labels or {})
                except _Locked:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, LOCKED_BACKOFF_MAX)

    async def write_bytes(
        self, ref: str, data: bytes, *, digest: str, labels: Mapping[str, str] | None = None
    ) -> bool:
        """:meth:`write` of a blob held in memory (a manifest, a config)."""

        async def source() -> AsyncIterator[bytes]:
            yield data

        return await self.write(ref, source(), digest=digest, size=len(data), labels=labels)

    async def _write_once(
        self,
        ref: str,
        source: AsyncIterable[bytes],
        digest: str,
        size: int,
        labels: Mapping[str, str],
    ) -> bool:
        what = f"write content {digest}"
        started = False
        try:
            with map_errors(what):
                async with self._channel.request(
                    f"{_SERVICE}/Write",
                    Cardinality.STREAM_STREAM,
                    content_pb.WriteContentRequest,
                    content_pb.WriteContentResponse,
                    metadata=self._metadata,
                ) as stream:
                    await stream.send_request()
                    _batch_frames(stream)
                    stat = content_pb.WriteContentRequest(
                        action=content_pb.WriteAction.STAT, ref=ref, total=size, expected=digest
                    )
                    try:
                        with anyio.fail_after(STREAM_STEP_TIMEOUT), _replies(stream, what):
                            await stream.send_message(stat)
                            await stream.recv_message()
                    except Unavailable as exc:
                        if "locked" in str(exc):
                            raise _Locked() from exc
                        raise
                    started = True
                    with _replies(stream, what):
                        await self._send_blob(stream, source, digest, size, labels)
            return True
        except AlreadyExists:
            return False
        except BaseException:
            if started:
                with anyio.CancelScope(shield=True), anyio.move_on_after(CALL_TIMEOUT):
                    await self._abort(ref)
            raise

    async def _send_blob(
        self,
        stream: Any,
        source: AsyncIterable[bytes],
        digest: str,
        size: int,
        labels: Mapping[str, str],
    ) -> None:
        # The data is copied once, from what arrives into the WRITE message
        # of WRITE_CHUNK bytes it goes out in, encoded around it beforehand
        # (betterproto and grpclib copied a message three times).
        offset = 0
        pending = 0
        message: bytearray | None = None
        view = memoryview(b"")
        filled = start = 0
        async for data in source:
            data_view = memoryview(data)
            pos, end = 0, len(data)
            while pos < end:
                if message is None:
                    if offset >= size:
                        raise DigestMismatch(f"blob {digest} is longer than its {size} bytes")
                    message, filled = _write_message(offset, min(WRITE_CHUNK, size - offset))
                    view = memoryview(message)
                    start = filled
                take = min(end - pos, len(message) - filled)
                view[filled : filled + take] = data_view[pos : pos + take]
                pos += take
                filled += take
                if filled < len(message):
                    continue
                view.release()
                offset += filled - start
                with anyio.fail_after(STREAM_STEP_TIMEOUT):
                    await _send_encoded(stream, message)
                    pending += 1
                    if pending >= WRITE_WINDOW:
                        await stream.recv_message()
                        pending -= 1
                message = None
        if message is not None:
            offset += filled - start
        if offset != size:
            raise DigestMismatch(f"blob {digest} is {offset} bytes, not {size}")
        commit = content_pb.WriteContentRequest(
            action=content_pb.WriteAction.COMMIT,
            total=size,
            expected=digest,
            offset=offset,
            labels=dict(labels),
        )
        with anyio.fail_after(STREAM_STEP_TIMEOUT):
            await stream.send_message(commit, end=True)
            for _ in range(pending + 1):
                await stream.recv_message()

    async def _abort(self, ref: str) -> None:
        from ..errors import SupervisorError

        try:
            with map_errors(f"abort content write {ref}"):
                await self._stub.abort(content_pb.AbortRequest(ref=ref))
        except SupervisorError:
            pass  # nothing was written under the ref, or containerd is gone


class _Locked(Exception):
    pass


class _Absent(Exception):
    pass


def _batch_frames(stream: Any) -> None:
    """Make this stream send its DATA frames a flow-control window at a time.

    grpclib hands h2 one 16 KiB frame at a time and writes each to the socket
    on its own; h2's per-frame bookkeeping and the system calls were over a
    third of a pull's CPU (3,300 frames for 50 MB). Within a window the frames
    are framed here and written at once, and h2's windows are charged for
    them; the frame that ends the stream still goes through h2 (its state).
    """
    h2_stream = stream._stream

    async def send_data(data: bytes, end_stream: bool = False) -> None:
        h2 = h2_stream._h2_connection
        sid = h2_stream.id
        if sid not in h2.streams:
            raise StreamTerminatedError(f"stream {sid} is closed")
        header_tail = b"\x00\x00" + sid.to_bytes(4, "big")  # type DATA, no flags
        view = memoryview(data)
        pos, total = 0, len(data)
        while True:
            await h2_stream.connection.write_ready.wait()
            window = h2.local_flow_control_window(sid)
            if window <= 0:
                h2_stream.window_updated.clear()
                await h2_stream.window_updated.wait()
                continue
            limit = min(total, pos + window)
            start = pos
            pieces: list[bytes | memoryview] = [h2.data_to_send()]
            framed = 0
            while pos < limit:
                size = min(h2.max_outbound_frame_size, limit - pos)
                if end_stream and pos + size == total:
                    break
                pieces += [size.to_bytes(3, "big") + header_tail, view[pos : pos + size]]
                pos += size
                framed += size
            h2.outbound_flow_control_window -= framed
            h2.streams[sid].outbound_flow_control_window -= framed
            if pos < limit:
                h2.send_data(sid, view[pos:limit], end_stream=True)
                pos = limit
                pieces.append(h2.data_to_send())
            h2_stream._transport.write(b"".join(pieces))
            h2_stream.data_sent += pos - start
            h2_stream.connection.data_sent += pos - start
            h2_stream.connection.data_send_process()
            if pos == total:
                return

    h2_stream.send_data = send_data


@contextlib.contextmanager
def _replies(stream: Any, what: str) -> Iterator[None]:
    """:func:`map_errors`, and containerd's own error when grpclib hides it.

    containerd ends a Write stream that fails with a trailers-only reply and
    then resets the stream (we have not half-closed it); grpclib, seeing both
    at once, raises the reset and drops the reply. The reply's headers are
    still on its stream object: their status is the real error.
    """
    with map_errors(what):
        try:
            yield
        except StreamTerminatedError:
            headers = dict(getattr(getattr(stream, "_stream", None), "headers", None) or ())
            code = headers.get("grpc-status")
            if code is None or code == "0" or not code.isdigit():
                raise
            message = urllib.parse.unquote(headers.get("grpc-message", ""))
            raise from_status(int(code), message) from None
