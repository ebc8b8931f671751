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
and RST_STREAM (the stream is over, or will be: see :meth:`ServerStream._goaway`).

What a server sends is bounded before it is buffered: a frame by the HTTP/2
default maximum, a gRPC message by containerd's own default maximum (checked
at its 5-byte prefix), a header block in bytes and in frames. A connection
that goes quiet is probed with PING (:meth:`ServerStream.keepalive`), so a
hung containerd cannot leave the subscription open and deaf.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Self

import anyio
import hpack
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
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

NO_ERROR = 0x0

STREAM = 1
#: Receive window, per stream and for the connection; re-opened at half. We
#: read eagerly and re-open it after every socket read, so it never holds more
#: than half plus one read unacknowledged: it paces the server, it is not a buffer.
WINDOW = 1 << 24
_READ_SIZE = 1 << 18

#: The largest frame payload: the HTTP/2 default, which we never raise (grpc-go
#: sends at most this much a frame anyway). Checked at the 9-byte frame header.
MAX_FRAME = 1 << 14
#: The largest gRPC message: containerd's own default for what it receives and
#: sends. Checked at the message's 5-byte prefix, before any of it is buffered.
MAX_MESSAGE = 16 << 20
#: The largest header block, compressed (HEADERS and its CONTINUATIONs) and
#: decoded (hpack's header list size, which we also advertise): gRPC trailers
#: are a status and a message, a few hundred bytes.
MAX_HEADER_BLOCK = 64 << 10
#: How many frames one header block may take: a block under the size cap fits
#: in 4 full frames; this leaves room for finer splitting, not for a flood of
#: empty CONTINUATIONs.
MAX_HEADER_FRAMES = 16

#: How long the reader waits on a silent connection before it sends a PING.
#: containerd's gRPC server keeps grpc-go's default keepalive policy: while it
#: has sent nothing, a ping less than 5 minutes after the previous one is a
#: strike, and the third strike ends the connection with GOAWAY
#: ENHANCE_YOUR_CALM ("too_many_pings"). So an idle subscription is pinged a
#: little more than 5 minutes apart.
KEEPALIVE_INTERVAL = 310.0
#: How long after a PING the connection may stay silent before it is taken
#: for dead (grpc-go's default keepalive timeout).
KEEPALIVE_TIMEOUT = 20.0
_PING_DATA = b"keepaliv"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _setting(key: int, value: int) -> bytes:
    return key.to_bytes(2, "big") + value.to_bytes(4, "big")


class _Connection(asyncio.Protocol):
    """The socket's bytes as they arrive; reading pauses while ``_READ_SIZE``
    of them wait for the reader, so the server is paced as before.

    asyncio's transport keeps the socket registered with the loop and hands
    over what arrived; an anyio socket stream's ``receive`` adds a checkpoint,
    a failing ``recv`` and two epoll registrations to every wake-up. On the
    bench's replayed stream this reader alone costs ~1.3 us of CPU a message
    less so (~50 us a wake-up). The project runs anyio on asyncio only.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._gone = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= _READ_SIZE and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        if not self._gone.done():
            self._gone.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> bytes:
        """What arrived since the last call; waits for something."""
        while not self._chunks:
            if self._error is not None:
                raise anyio.BrokenResourceError from self._error
            if self._transport is None:
                raise anyio.ClosedResourceError
            if self._eof:
                raise anyio.EndOfStream
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    def send(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            raise anyio.ClosedResourceError
        if self._error is not None or transport.is_closing():
            raise anyio.BrokenResourceError from self._error
        transport.write(data)

    async def aclose(self) -> None:
        """Drop the connection (unsent bytes too) and wait until the socket is closed."""
        transport, self._transport = self._transport, None
        self._wake()
        if transport is not None:
            transport.abort()
            await self._gone


class ProtocolError(Exception):
    """The server broke the HTTP/2 or gRPC framing."""


class LimitExceeded(ProtocolError):
    """The server sent a gRPC message or a header block over our caps."""


class KeepaliveTimeout(Unavailable):
    """The connection went silent and stayed so after a PING: taken for dead."""


class ServerStream:
    """One gRPC server-streaming call over its own connection to a unix socket.

    ::

        async with ServerStream(path, "/pkg.Service/Method", request_bytes,
                                {"containerd-namespace": "ns"}) as stream:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.keepalive)
                async for batch in stream:
                    for message in batch: ...
                tg.cancel_scope.cancel()

    Iteration ends when the server ends the stream with status OK, or says
    GOAWAY with NO_ERROR (see :meth:`_goaway`); a non-OK status raises the
    mapped :mod:`supervisor.errors` exception; a lost connection, a GOAWAY
    with an error, a reset or a silent connection (:class:`KeepaliveTimeout`)
    raises ``Unavailable``; broken or oversized framing raises
    :class:`ProtocolError` (:class:`LimitExceeded`).
    """

    def __init__(
        self,
        path: str,
        method: str,
        request: bytes,
        metadata: dict[str, str] | Sequence[tuple[str, str]] = (),
        *,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.path = path
        self.method = method
        self.request = request
        self.metadata = list(metadata.items()) if isinstance(metadata, dict) else list(metadata)
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self._sock: _Connection | None = None
        self._send_lock = anyio.Lock()
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self._header_block = b""
        self._header_frames = 0
        self._header_end_stream = False
        self._partial = bytearray()
        self._unacked = 0
        self._finished = False
        self._going_away = False
        self._failure: Exception | None = None
        self._dead: KeepaliveTimeout | None = None
        #: When the reader began waiting on the server (None while its consumer
        #: holds a batch): what :meth:`keepalive` measures silence from.
        self._waiting_since: float | None = None
        self.response_headers: list[tuple[str, str]] = []

    async def __aenter__(self) -> Self:
        try:
            _, self._sock = await asyncio.get_running_loop().create_unix_connection(
                _Connection, self.path
            )
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
                    + _setting(SETTINGS_INITIAL_WINDOW_SIZE, WINDOW)
                    + _setting(SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK),
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

    def _lost(self, exc: BaseException) -> Exception:
        """What a failed read or write of the socket means."""
        return self._dead or Unavailable(f"connection to containerd lost ({str(exc) or 'closed'})")

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:  # the reader's replies and keepalive's pings
            if self._sock is None:
                raise self._lost(anyio.ClosedResourceError())
            try:
                self._sock.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise self._lost(exc) from exc
            await anyio.lowlevel.checkpoint()

    async def keepalive(self) -> None:
        """Probe a silent connection; close it when the server stays silent.

        Run it beside the iteration, in a task group that ends with it. Once
        the reader has waited ``keepalive_interval`` for the server, this sends
        a PING; if nothing at all arrives within ``keepalive_timeout`` after it,
        the connection is closed and the reader raises :class:`KeepaliveTimeout`.
        Time the consumer spends on a batch is not silence: the server's bytes
        may be waiting unread, and a healthy connection must not be dropped
        for a slow backend. Pings go at least ``max(interval, timeout)``
        apart. On a unix socket a dead containerd closes the connection; this
        catches one that is alive but no longer serving.
        """
        interval, timeout = self.keepalive_interval, self.keepalive_timeout
        while self._sock is not None and not self._finished:
            since = self._waiting_since
            if since is None:
                await anyio.sleep(min(interval, timeout))  # the consumer has a batch
                continue
            now = time.monotonic()
            if now - since < interval:
                await anyio.sleep(since + interval - now)
                continue
            pinged_at = now
            with anyio.move_on_after(timeout):
                try:
                    await self._send(frame(PING, 0, 0, _PING_DATA))
                except Unavailable:
                    return  # broken: the reader finds out itself
                await anyio.sleep_forever()
            since = self._waiting_since
            if since is not None and since <= pinged_at and self._sock is not None:
                self._dead = KeepaliveTimeout(
                    f"containerd did not answer a keepalive ping within {timeout:g}s"
                )
                await self.aclose()

    def __aiter__(self) -> AsyncGenerator[list[bytes]]:
        return self.batches()

    async def batches(self) -> AsyncGenerator[list[bytes]]:
        """Complete gRPC messages, a socket read's worth at a time."""
        sock = self._sock
        assert sock is not None
        buf = b""
        while not self._finished:
            self._waiting_since = time.monotonic()
            try:
                chunk = await sock.receive()
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ) as exc:
                if self._going_away and isinstance(exc, anyio.EndOfStream) and not self._dead:
                    return  # the server said it would go, and went
                raise self._lost(exc) from exc
            self._waiting_since = None
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
                self._waiting_since = time.monotonic()  # a server that does not read is silent too
                try:
                    await self._send(b"".join(replies))
                except Unavailable as exc:
                    self._finished = True  # the messages already read still count
                    self._failure = None if self._going_away and not self._dead else exc
                self._waiting_since = None
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
            if length > MAX_FRAME:
                raise ProtocolError(f"a frame of {length} bytes (the limit is {MAX_FRAME})")
            end = pos + 9 + length
            if end > size:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            start = pos + 9
            pos = end
            if self._header_frames and kind != CONTINUATION:
                raise ProtocolError("a header block was interrupted")
            if kind == DATA:
                if stream != STREAM:
                    raise ProtocolError(f"DATA on stream {stream}")
                self._unacked += length
                if flags & PADDED:
                    if not length or buf[start] >= length:
                        raise ProtocolError("DATA padding longer than the frame")
                    end -= buf[start]
                    start += 1
                if not self._partial:
                    # Fast path: whole messages in this frame, the usual case.
                    while end - start >= 5:
                        if buf[start]:
                            raise ProtocolError("compressed message (none was negotiated)")
                        mlen = int.from_bytes(buf[start + 1 : start + 5], "big")
                        if end - start - 5 < mlen:
                            _check_size(mlen)
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
                        if not length:
                            raise ProtocolError("HEADERS padding longer than the frame")
                        end -= buf[start]
                        start += 1
                    if flags & PRIORITY:
                        start += 5
                    if start > end:
                        raise ProtocolError("HEADERS padding longer than the frame")
                    self._header_block = b""
                    self._header_end_stream = bool(flags & END_STREAM)
                elif not self._header_frames:
                    raise ProtocolError("CONTINUATION outside a header block")
                self._header_frames += 1
                self._header_block += buf[start:end]
                if len(self._header_block) > MAX_HEADER_BLOCK:
                    raise LimitExceeded(f"a header block over {MAX_HEADER_BLOCK >> 10} KiB")
                if self._header_frames > MAX_HEADER_FRAMES:
                    raise LimitExceeded(f"a header block in over {MAX_HEADER_FRAMES} frames")
                if flags & END_HEADERS:
                    self._header_frames = 0
                    self._headers()
            elif kind == SETTINGS:
                if not flags & ACK:
                    replies.append(frame(SETTINGS, ACK, 0))
            elif kind == PING:
                if length != 8:
                    raise ProtocolError(f"a PING of {length} bytes")
                if not flags & ACK:
                    replies.append(frame(PING, ACK, 0, buf[start:end]))
            elif kind == GOAWAY:
                if length < 8:
                    raise ProtocolError(f"a GOAWAY of {length} bytes")
                self._goaway(buf[start:end])
            elif kind == RST_STREAM and stream == STREAM:
                if length != 4:
                    raise ProtocolError(f"a RST_STREAM of {length} bytes")
                code = int.from_bytes(buf[start : start + 4], "big")
                raise Unavailable(f"containerd reset the event stream (code {code})")
        return pos

    def _goaway(self, payload: bytes) -> None:
        """The server is closing the connection.

        With an error code the stream is lost (``Unavailable``). With NO_ERROR
        it is a clean end, as RFC 9113 6.8 has it: if our stream is above the
        last stream id the server will process, it never will, and the stream
        ends now; otherwise the server may still finish it, so reading goes on
        until its trailers, a reset, or the connection closing, which then
        also counts as the end rather than a loss. (grpc-go drains this way:
        a first GOAWAY naming every stream, a second naming the last one.)
        """
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        if code != NO_ERROR:
            debug = payload[8:72].decode("ascii", "replace")
            detail = f", {debug}" if debug else ""
            raise Unavailable(f"containerd is closing the connection (GOAWAY, code {code}{detail})")
        if last < STREAM:
            self._finished = True
        else:
            self._going_away = True

    def _split_partial(self, messages: list[bytes]) -> None:
        data = self._partial
        start = 0
        while len(data) - start >= 5:
            if data[start]:
                raise ProtocolError("compressed message (none was negotiated)")
            mlen = int.from_bytes(data[start + 1 : start + 5], "big")
            if len(data) - start - 5 < mlen:
                _check_size(mlen)
                break
            messages.append(bytes(data[start + 5 : start + 5 + mlen]))
            start += 5 + mlen
        del data[:start]

    def _headers(self) -> None:
        try:
            headers = [(str(k), str(v)) for k, v in self._decoder.decode(self._header_block)]
        except hpack.OversizedHeaderListError as exc:
            raise LimitExceeded(f"a header list over {MAX_HEADER_BLOCK >> 10} KiB") from exc
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


def _check_size(mlen: int) -> None:
    """Refuse an incomplete message at its prefix if it could never be taken whole."""
    if mlen > MAX_MESSAGE:
        raise LimitExceeded(f"a message of {mlen} bytes (the limit is {MAX_MESSAGE >> 20} MiB)")
