"""A minimal HTTP/2 client for one long-lived gRPC server stream.

The event subscription is the only hot stream: every containerd event goes
through it. grpclib spends ~23 us on each message here (an h2 frame object
and its repr, a flow-control acknowledgement, several awaits), which alone
nearly fills the pipeline's budget. This reader takes frames straight from
the socket, a whole socket read at a time, and hands the pipeline batches of
raw messages: framing costs ~1-2 us an event. Everything else (unary calls,
the sync marker) still goes through grpclib.

It speaks just what one client-side stream needs: the preface and settings,
one request (HEADERS + DATA), then DATA, HEADERS (response headers and
trailers, decoded with hpack so the dynamic table stays right), SETTINGS and
PING (acknowledged), WINDOW_UPDATE (ignored: we send nothing more), GOAWAY
and RST_STREAM (the stream is over).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Self

import anyio
import hpack
from anyio.abc import SocketStream
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ..errors import SupervisorError, Unavailable, from_grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA = 0x0
HEADERS = 0x1
RST_STREAM = 0x3
SETTINGS = 0x4
PING = 0x6
GOAWAY = 0x7
CONTINUATION = 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20

SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_INITIAL_WINDOW_SIZE = 0x4

STREAM = 1
#: Receive window, per stream and for the connection; re-opened at half.
WINDOW = 1 << 24
_READ_SIZE = 1 << 18


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _setting(key: int, value: int) -> bytes:
    return key.to_bytes(2, "big") + value.to_bytes(4, "big")


class ProtocolError(Exception):
    """The server broke the HTTP/2 or gRPC framing."""


class ServerStream:
    """One gRPC server-streaming call over its own connection to a unix socket.

    ::

        async with ServerStream(path, "/pkg.Service/Method", request_bytes,
                                {"containerd-namespace": "ns"}) as stream:
            async for batch in stream:
                for message in batch: ...

    Iteration ends when the server ends the stream with status OK; a
    non-OK status raises the mapped :mod:`supervisor.errors` exception; a
    lost connection, a GOAWAY or a reset raises ``Unavailable``.
    """

    def __init__(
        self,
        path: str,
        method: str,
        request: bytes,
        metadata: dict[str, str] | Sequence[tuple[str, str]] = (),
    ) -> None:
        self.path = path
        self.method = method
        self.request = request
        self.metadata = list(metadata.items()) if isinstance(metadata, dict) else list(metadata)
        self._sock: SocketStream | None = None
        self._decoder = hpack.Decoder()
        self._header_block = b""
        self._header_end_stream = False
        self._partial = bytearray()
        self._unacked = 0
        self._finished = False
        self._failure: Exception | None = None
        self.response_headers: list[tuple[str, str]] = []

    async def __aenter__(self) -> Self:
        try:
            self._sock = await anyio.connect_unix(self.path)
        except OSError as exc:
            raise Unavailable(f"cannot reach containerd: {exc.strerror or exc}") from exc
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", self.method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "containerd-supervisor"),
            *self.metadata,
        ]
        message = b"\x00" + len(self.request).to_bytes(4, "big") + self.request
        hello = b"".join(
            (
                PREFACE,
                frame(
                    SETTINGS,
                    0,
                    0,
                    _setting(SETTINGS_ENABLE_PUSH, 0)
                    + _setting(SETTINGS_INITIAL_WINDOW_SIZE, WINDOW),
                ),
                frame(0x8, 0, 0, (WINDOW - 65535).to_bytes(4, "big")),
                frame(HEADERS, END_HEADERS, STREAM, hpack.Encoder().encode(headers)),
                frame(DATA, END_STREAM, STREAM, message),
            )
        )
        try:
            await self._send(hello)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; the server drops the call."""
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with anyio.CancelScope(shield=True):
                await sock.aclose()

    async def _send(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            await self._sock.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise Unavailable(f"connection to containerd lost ({exc or 'closed'})") from exc

    def __aiter__(self) -> AsyncGenerator[list[bytes]]:
        return self.batches()

    async def batches(self) -> AsyncGenerator[list[bytes]]:
        """Complete gRPC messages, a socket read's worth at a time."""
        sock = self._sock
        assert sock is not None
        buf = b""
        while not self._finished:
            try:
                chunk = await sock.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                raise Unavailable(f"connection to containerd lost ({exc or 'closed'})") from exc
            buf = buf + chunk if buf else chunk
            messages: list[bytes] = []
            replies: list[bytes] = []
            try:
                pos = self._frames(buf, messages, replies)
            except (SupervisorError, ProtocolError) as exc:
                # Deliver what came before the failure, then raise it.
                self._finished = True
                self._failure = exc
                pos = len(buf)
            buf = buf[pos:]
            if self._unacked >= WINDOW // 2:
                increment = self._unacked.to_bytes(4, "big")
                replies.append(frame(0x8, 0, 0, increment) + frame(0x8, 0, STREAM, increment))
                self._unacked = 0
            if replies and not self._finished:
                try:
                    await self._send(b"".join(replies))
                except Unavailable as exc:
                    self._finished = True  # the messages already read still count
                    self._failure = exc
            if messages:
                yield messages
        if self._failure is not None:
            raise self._failure

    def _frames(self, buf: bytes, messages: list[bytes], replies: list[bytes]) -> int:
        """Handle every whole frame in ``buf``; returns where the rest begins."""
        pos = 0
        size = len(buf)
        while size - pos >= 9 and not self._finished:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            end = pos + 9 + length
            if end > size:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            start = pos + 9
            pos = end
            if kind == DATA:
                if stream != STREAM:
                    raise ProtocolError(f"DATA on stream {stream}")
                self._unacked += length
                if flags & PADDED:
                    end -= buf[start]
                    start += 1
                if not self._partial:
                    # Fast path: whole messages in this frame, the usual case.
                    while end - start >= 5:
                        if buf[start]:
                            raise ProtocolError("compressed message (none was negotiated)")
                        mlen = int.from_bytes(buf[start + 1 : start + 5], "big")
                        if end - start - 5 < mlen:
                            break
                        messages.append(buf[start + 5 : start + 5 + mlen])
                        start += 5 + mlen
                    if start < end:
                        self._partial += buf[start:end]
                else:
                    self._partial += buf[start:end]
                    self._split_partial(messages)
                if flags & END_STREAM:
                    self._end(None)
            elif kind in (HEADERS, CONTINUATION):
                if stream != STREAM:
                    raise ProtocolError(f"HEADERS on stream {stream}")
                if kind == HEADERS:
                    if flags & PADDED:
                        end -= buf[start]
                        start += 1
                    if flags & PRIORITY:
                        start += 5
                    self._header_block = b""
                    self._header_end_stream = bool(flags & END_STREAM)
                self._header_block += buf[start:end]
                if flags & END_HEADERS:
                    self._headers()
            elif kind == SETTINGS:
                if not flags & ACK:
                    replies.append(frame(SETTINGS, ACK, 0))
            elif kind == PING:
                if not flags & ACK:
                    replies.append(frame(PING, ACK, 0, buf[start:end]))
            elif kind == GOAWAY:
                code = int.from_bytes(buf[start + 4 : start + 8], "big")
                raise Unavailable(f"containerd is closing the connection (GOAWAY, code {code})")
            elif kind == RST_STREAM and stream == STREAM:
                code = int.from_bytes(buf[start : start + 4], "big")
                raise Unavailable(f"containerd reset the event stream (code {code})")
        return pos

    def _split_partial(self, messages: list[bytes]) -> None:
        data = self._partial
        start = 0
        while len(data) - start >= 5:
            if data[start]:
                raise ProtocolError("compressed message (none was negotiated)")
            mlen = int.from_bytes(data[start + 1 : start + 5], "big")
            if len(data) - start - 5 < mlen:
                break
            messages.append(bytes(data[start + 5 : start + 5 + mlen]))
            start += 5 + mlen
        del data[:start]

    def _headers(self) -> None:
        try:
            headers = [(str(k), str(v)) for k, v in self._decoder.decode(self._header_block)]
        except hpack.HPACKError as exc:
            raise ProtocolError(f"bad header block: {exc}") from exc
        self._header_block = b""
        if not self.response_headers:
            self.response_headers = headers
            status = dict(headers).get(":status")
            if status is not None and status != "200":
                raise Unavailable(f"containerd answered HTTP {status}")
        if self._header_end_stream:
            self._end(headers)

    def _end(self, trailers: list[tuple[str, str]] | None) -> None:
        self._finished = True
        fields = dict(trailers or self.response_headers)
        code = fields.get("grpc-status")
        if code is None:
            raise Unavailable("the event stream ended without a status")
        if code != "0":
            try:
                status = Status(int(code))
            except ValueError:
                status = Status.UNKNOWN
            message = urllib.parse.unquote(fields.get("grpc-message", ""))
            raise from_grpc(GRPCError(status, message))
