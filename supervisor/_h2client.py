"""A small synchronous gRPC client for the CLI: HTTP/2 over the daemon's unix socket.

grpclib's client needs asyncio, h2 and grpclib itself: several times what
Python takes to start, on every CLI call. This client uses only the standard
library (and its own HPACK, ``_hpack``), and speaks what the CLI's calls need, on one connection:

* the preface and SETTINGS (push off, a 16 MiB receive window per stream and
  for the connection, re-opened as it is read, so a large reply, ``ps`` of
  thousands of containers, is never throttled), SETTINGS and PING acknowledged;
* calls with one request message (HEADERS, then DATA with the gRPC
  length-prefixed message and END_STREAM, within the server's flow-control
  windows): unary calls, several at once (:meth:`Channel.unary_many`, results
  in order), and server streams (:meth:`Channel.stream`);
* replies: response headers, DATA (gRPC messages, at most ``max_message``
  bytes each, refused at their 5-byte prefix), trailers with grpc-status and
  the percent-decoded grpc-message;
* GOAWAY and RST_STREAM, and a connection that closes, as typed errors.

Every read is bounded: the socket has a timeout, a call may have a deadline
(``TimeoutError`` when it passes), and a daemon that stays silent is sent a
PING; if nothing at all comes back within ``liveness`` seconds the call fails
with :class:`Unavailable` (a daemon that is stopped or hung; a handler that
merely takes long, with the daemon's loop alive, answers the PING).

Errors: a non-OK status raises (or, from :meth:`Channel.unary_many`, yields)
its :mod:`supervisor.errors` class, as :func:`~supervisor.errors.from_grpc`
maps it; a lost or reset connection raises :class:`ConnectionLost`
(``Unavailable``); broken framing raises :class:`ProtocolError`. Failing to
connect raises the ``OSError`` of ``connect()`` as it is.
"""

from __future__ import annotations

import _socket  # socket's C core: the socket module's enums and selectors cost more than this
import contextlib
import time
from collections import deque
from collections.abc import Iterable, Iterator

from . import _hpack
from .errors import SupervisorError, Unavailable, from_status

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA = 0x0
HEADERS = 0x1
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

NO_ERROR = 0x0
CANCEL = 0x8

#: Our receive window, per stream and for the connection; re-opened once half is read.
WINDOW = 1 << 24
#: The largest frame payload: the HTTP/2 default, which we never raise (for what
#: we receive) and never exceed (for what we send).
MAX_FRAME = 1 << 14
#: The largest gRPC message we take, checked at its 5-byte prefix.
MAX_MESSAGE = 64 << 20
#: The largest header block, compressed and decoded (trailers are a status and
#: a message); and how many frames it may take.
MAX_HEADER_BLOCK = 64 << 10
MAX_HEADER_FRAMES = 16
#: Seconds of silence from the daemon after which it is sent a PING.
IDLE = 5.0
#: Seconds after a PING within which something must come back.
LIVENESS = 30.0
_READ = 1 << 18
_DEFAULT_WINDOW = 65535


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _setting(key: int, value: int) -> bytes:
    return key.to_bytes(2, "big") + value.to_bytes(4, "big")


class ProtocolError(SupervisorError):
    """The daemon broke the HTTP/2 or gRPC framing, or sent more than our caps."""


class ConnectionLost(Unavailable):
    """The connection closed, or the daemon reset the call or went away (GOAWAY)."""


_HEX = frozenset(b"0123456789abcdefABCDEF")


def percent_decode(raw: bytes) -> str:
    """A grpc-message as the gRPC spec encodes it: percent-encoded UTF-8 (a
    malformed escape is kept as it is, bad UTF-8 replaced)."""
    if b"%" not in raw:
        return raw.decode("utf-8", "replace")
    parts = raw.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(int(part[:2], 16))
            out += part[2:]
        else:
            out += b"%" + part
    return out.decode("utf-8", "replace")


class _Call:
    """One stream: what is left to send, and what came back."""

    __slots__ = ("done", "error", "headers", "id", "messages", "partial", "send_window",
                 "status", "to_send", "unacked")  # fmt: skip

    def __init__(self, stream_id: int, to_send: bytes, send_window: int) -> None:
        self.id = stream_id
        self.to_send = to_send  # DATA payload not sent yet (END_STREAM goes with its end)
        self.send_window = send_window
        self.headers: dict[str, bytes] | None = None
        self.messages: deque[bytes] = deque()
        self.partial = bytearray()
        self.unacked = 0
        self.done = False
        #: The call's outcome once done: None for status OK.
        self.error: SupervisorError | None = None
        self.status: int | None = None


class Channel:
    """A connection to a gRPC server on a unix socket, made on first use.

    ::

        with Channel("/run/x.sock") as channel:
            reply = channel.unary("/pkg.Service/Method", request_bytes)
            for message in channel.stream("/pkg.Service/Watch", request_bytes): ...
    """

    def __init__(
        self,
        path: str,
        *,
        idle: float = IDLE,
        liveness: float = LIVENESS,
        max_message: int = MAX_MESSAGE,
        user_agent: str = "supervisor-cli",
    ) -> None:
        self.path = path
        self.idle = idle
        self.liveness = liveness
        self.max_message = max_message
        self.user_agent = user_agent
        self._sock: _socket.socket | None = None
        self._decoder = _hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._buf = b""
        self._conn_window = _DEFAULT_WINDOW  # what we may still send
        self._peer_window = _DEFAULT_WINDOW  # the server's initial stream window
        self._peer_streams = 1 << 31  # its MAX_CONCURRENT_STREAMS
        self._unacked = 0  # connection-level bytes received, not yet re-opened
        self._header_block = b""
        self._header_stream = 0
        self._header_frames = 0
        self._header_end_stream = False
        self._heard = 0.0
        self._pinged: float | None = None
        self._last_stream = (1 << 31) - 1  # from a GOAWAY: streams above it are not served
        self._closed: ConnectionLost | None = None

    # -- the connection ----------------------------------------------------------------

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()

    def _connect(self) -> _socket.socket:
        if self._sock is not None:
            return self._sock
        if self._closed is not None:
            raise self._closed
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.liveness)
            sock.connect(self.path)
            self._sock = sock
            self._send(
                PREFACE
                + frame(
                    SETTINGS,
                    0,
                    0,
                    _setting(SETTINGS_ENABLE_PUSH, 0)
                    + _setting(SETTINGS_INITIAL_WINDOW_SIZE, WINDOW)
                    + _setting(SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK),
                )
                + frame(WINDOW_UPDATE, 0, 0, (WINDOW - _DEFAULT_WINDOW).to_bytes(4, "big"))
            )
        except BaseException:
            self._sock = None
            sock.close()
            raise
        self._heard = time.monotonic()
        return sock

    def _lost(self, why: str) -> ConnectionLost:
        self._closed = self._closed or ConnectionLost(f"connection to the daemon lost ({why})")
        self.close()
        return self._closed

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise self._closed or self._lost("closed")
        try:
            sock.settimeout(self.liveness)
            sock.sendall(data, _socket.MSG_NOSIGNAL)  # EPIPE, not SIGPIPE (the CLI's default)
        except TimeoutError:
            raise self._lost(f"the daemon did not read for {self.liveness:g}s") from None
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None

    # -- calls -------------------------------------------------------------------------

    def _start(self, method: str, request: bytes) -> _Call:
        stream_id = self._next_id
        if stream_id > self._last_stream:
            raise ConnectionLost("the daemon is closing the connection (GOAWAY)")
        self._connect()
        if self._closed is not None:
            raise self._closed
        self._next_id += 2
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", self.user_agent),
        ]
        block = _hpack.encode(headers)
        call = _Call(stream_id, b"\x00" + len(request).to_bytes(4, "big") + request,
                     self._peer_window)  # fmt: skip
        self._calls[stream_id] = call
        out = [frame(HEADERS, END_HEADERS, stream_id, block)]  # a few dozen bytes: one frame
        self._send(b"".join(out + self._data_frames(call)))
        return call

    def _data_frames(self, call: _Call) -> list[bytes]:
        """The DATA frames of ``call`` that the flow-control windows allow now."""
        out = []
        while call.to_send:
            size = min(len(call.to_send), call.send_window, self._conn_window, MAX_FRAME)
            if size <= 0:
                break
            chunk, call.to_send = call.to_send[:size], call.to_send[size:]
            call.send_window -= size
            self._conn_window -= size
            out.append(frame(DATA, 0 if call.to_send else END_STREAM, call.id, chunk))
        return out

    def _finish(self, call: _Call) -> None:
        """Forget a call; a server still sending on it is told to stop."""
        self._calls.pop(call.id, None)
        if not call.done:
            call.done = True
            if self._sock is not None and self._closed is None:
                with contextlib.suppress(ConnectionLost):
                    self._send(frame(RST_STREAM, 0, call.id, CANCEL.to_bytes(4, "big")))

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    def unary(self, method: str, request: bytes, *, timeout: float | None = None) -> bytes:
        """One request, one reply message."""
        deadline = self._deadline(timeout)
        call = self._start(method, request)
        try:
            while not call.done:
                self._pump(deadline)
        finally:
            self._finish(call)
        return self._reply(call)

    def unary_many(
        self,
        method: str,
        requests: Iterable[bytes],
        *,
        in_flight: int = 8,
        timeout: float | None = None,
    ) -> Iterator[bytes | SupervisorError]:
        """The same method on each request, up to ``in_flight`` at once on this
        connection; the replies in the order of the requests, a call's status
        error in place of its reply. ``timeout`` bounds each call. A lost
        connection raises."""
        pending = iter(requests)
        calls: deque[tuple[_Call, float | None]] = deque()
        try:
            while True:
                limit = max(1, min(in_flight, self._peer_streams))
                while len(calls) < limit:
                    request = next(pending, None)
                    if request is None:
                        break
                    calls.append((self._start(method, request), self._deadline(timeout)))
                if not calls:
                    return
                call, deadline = calls[0]
                if not call.done:
                    self._pump(deadline)
                    continue
                calls.popleft()
                self._finish(call)
                try:
                    yield self._reply(call)
                except (ConnectionLost, ProtocolError):
                    raise
                except SupervisorError as exc:
                    yield exc
        finally:
            for call, _ in calls:
                self._finish(call)

    def stream(
        self, method: str, request: bytes, *, timeout: float | None = None
    ) -> Iterator[bytes]:
        """One request; the reply messages as they come, until the status."""
        deadline = self._deadline(timeout)
        call = self._start(method, request)
        try:
            while True:
                while call.messages:
                    yield call.messages.popleft()
                if call.done:
                    break
                self._pump(deadline)
        finally:
            self._finish(call)
        self._check(call)

    def _check(self, call: _Call) -> None:
        if call.error is not None:
            raise call.error

    def _reply(self, call: _Call) -> bytes:
        self._check(call)
        if len(call.messages) != 1:
            raise ProtocolError(f"{len(call.messages)} messages in reply to a unary call")
        return call.messages[0]

    # -- reading -----------------------------------------------------------------------

    def _pump(self, deadline: float | None) -> None:
        """Wait for the daemon (up to the deadline, probing its silence), then
        handle every whole frame read."""
        sock = self._sock
        if sock is None:
            raise self._closed or self._lost("closed")
        now = time.monotonic()
        wait = self.idle
        if self._pinged is not None:
            wait = min(wait, max(self._pinged + self.liveness - now, 0.001))
        if deadline is not None:
            if now >= deadline:
                raise TimeoutError("the daemon did not answer in time")
            wait = min(wait, deadline - now)
        sock.settimeout(wait)
        try:
            chunk = sock.recv(_READ)
        except TimeoutError:
            self._silence(deadline)
            return
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        if not chunk:
            raise self._lost("the daemon closed it")
        self._heard = time.monotonic()
        self._pinged = None
        buf = self._buf + chunk if self._buf else chunk
        replies: list[bytes] = []
        try:
            pos = self._frames(buf, replies)
        except ProtocolError:
            self._lost("protocol error")
            raise
        self._buf = buf[pos:]
        if self._unacked >= WINDOW // 2:
            replies.append(frame(WINDOW_UPDATE, 0, 0, self._unacked.to_bytes(4, "big")))
            self._unacked = 0
        for call in self._calls.values():
            if call.unacked >= WINDOW // 2 and not call.done:
                replies.append(frame(WINDOW_UPDATE, 0, call.id, call.unacked.to_bytes(4, "big")))
                call.unacked = 0
            if call.to_send:
                replies += self._data_frames(call)
        if replies:
            # A server that has answered may be gone already: what was read
            # still counts; a call still waiting finds the loss at its next read.
            with contextlib.suppress(ConnectionLost):
                self._send(b"".join(replies))

    def _silence(self, deadline: float | None) -> None:
        now = time.monotonic()
        if self._pinged is not None and now - self._pinged >= self.liveness:
            raise self._lost(f"the daemon did not answer for {now - self._heard:.0f}s")
        if deadline is not None and now >= deadline:
            raise TimeoutError("the daemon did not answer in time")
        if self._pinged is None and now - self._heard >= self.idle:
            self._pinged = now
            self._send(frame(PING, 0, 0, b"cli-ping"))

    def _frames(self, buf: bytes, replies: list[bytes]) -> int:
        """Handle every whole frame in ``buf``; returns where the rest begins."""
        pos = 0
        size = len(buf)
        while size - pos >= 9:
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
                self._data(stream, flags, buf, start, end)
            elif kind in (HEADERS, CONTINUATION):
                self._header_frame(kind, stream, flags, buf, start, end)
            elif kind == SETTINGS:
                if stream:
                    raise ProtocolError("SETTINGS on a stream")
                if not flags & ACK:
                    self._settings(buf[start:end])
                    replies.append(frame(SETTINGS, ACK, 0))
            elif kind == PING:
                if length != 8:
                    raise ProtocolError(f"a PING of {length} bytes")
                if not flags & ACK:
                    replies.append(frame(PING, ACK, 0, buf[start:end]))
            elif kind == WINDOW_UPDATE:
                if length != 4:
                    raise ProtocolError(f"a WINDOW_UPDATE of {length} bytes")
                increment = int.from_bytes(buf[start:end], "big") & 0x7FFFFFFF
                if not stream:
                    self._conn_window += increment
                elif stream in self._calls:
                    self._calls[stream].send_window += increment
            elif kind == RST_STREAM:
                if length != 4:
                    raise ProtocolError(f"a RST_STREAM of {length} bytes")
                call = self._calls.get(stream)
                if call is not None and not call.done:
                    code = int.from_bytes(buf[start:end], "big")
                    call.done = True
                    call.error = ConnectionLost(f"the daemon reset the call (HTTP/2 error {code})")
            elif kind == GOAWAY:
                if length < 8:
                    raise ProtocolError(f"a GOAWAY of {length} bytes")
                self._goaway(buf[start:end])
            elif kind == PUSH_PROMISE:
                raise ProtocolError("PUSH_PROMISE (push is off)")
            # other frame types are ignored, as HTTP/2 has it
        return pos

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolError(f"SETTINGS of {len(payload)} bytes")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > 0x7FFFFFFF:
                    raise ProtocolError(f"an initial window of {value}")
                delta = value - self._peer_window
                self._peer_window = value
                for call in self._calls.values():
                    call.send_window += delta
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_streams = value

    def _goaway(self, payload: bytes) -> None:
        """The daemon is closing the connection. Calls it will not serve (above
        the last stream id it names), or every call when it says so with an
        error, fail; the others may still finish."""
        last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        self._last_stream = min(self._last_stream, last)
        detail = payload[8:72].decode("ascii", "replace")
        why = f"GOAWAY, code {code}" + (f", {detail}" if detail else "")
        for call in self._calls.values():
            if not call.done and (code != NO_ERROR or call.id > last):
                call.done = True
                call.error = ConnectionLost(f"the daemon is closing the connection ({why})")

    def _data(self, stream: int, flags: int, buf: bytes, start: int, end: int) -> None:
        length = end - start
        self._unacked += length
        call = self._calls.get(stream)
        if call is None or call.done:
            return  # a call we gave up on: still counted for the connection's window
        call.unacked += length
        if flags & PADDED:
            if not length or buf[start] >= length:
                raise ProtocolError("DATA padding longer than the frame")
            end -= buf[start]
            start += 1
        if call.headers is None:
            raise ProtocolError("DATA before the response headers")
        data = call.partial
        data += buf[start:end]
        taken = 0
        while len(data) - taken >= 5:
            if data[taken]:
                raise ProtocolError("a compressed message (none was asked for)")
            mlen = int.from_bytes(data[taken + 1 : taken + 5], "big")
            if mlen > self.max_message:
                raise ProtocolError(
                    f"a message of {mlen} bytes (the limit is {self.max_message >> 20} MiB)"
                )
            if len(data) - taken - 5 < mlen:
                break
            call.messages.append(bytes(data[taken + 5 : taken + 5 + mlen]))
            taken += 5 + mlen
        del data[:taken]
        if flags & END_STREAM:
            self._end(call, None)

    def _header_frame(
        self, kind: int, stream: int, flags: int, buf: bytes, start: int, end: int
    ) -> None:
        if kind == HEADERS:
            if not stream:
                raise ProtocolError("HEADERS on stream 0")
            if flags & PADDED:
                if not end - start:
                    raise ProtocolError("HEADERS padding longer than the frame")
                end -= buf[start]
                start += 1
            if flags & PRIORITY:
                start += 5
            if start > end:
                raise ProtocolError("HEADERS padding longer than the frame")
            self._header_block = b""
            self._header_stream = stream
            self._header_end_stream = bool(flags & END_STREAM)
        elif not self._header_frames or stream != self._header_stream:
            raise ProtocolError("CONTINUATION outside a header block")
        self._header_frames += 1
        self._header_block += buf[start:end]
        if len(self._header_block) > MAX_HEADER_BLOCK:
            raise ProtocolError(f"a header block over {MAX_HEADER_BLOCK >> 10} KiB")
        if self._header_frames > MAX_HEADER_FRAMES:
            raise ProtocolError(f"a header block in over {MAX_HEADER_FRAMES} frames")
        if flags & END_HEADERS:
            self._header_frames = 0
            self._headers()

    def _headers(self) -> None:
        try:
            decoded = self._decoder.decode(self._header_block)
        except _hpack.HpackError as exc:  # the table is now unknown: the connection is done
            raise ProtocolError(f"bad header block: {exc}") from None
        self._header_block = b""
        headers = {k.decode("ascii", "replace"): v for k, v in decoded}
        call = self._calls.get(self._header_stream)
        if call is None or call.done:
            return
        if call.headers is None:
            call.headers = headers
            status = headers.get(":status")
            if status != b"200":
                call.done = True
                shown = (status or b"none").decode("ascii", "replace")
                call.error = ProtocolError(f"the daemon answered HTTP status {shown}")
                return
            ctype = headers.get("content-type", b"application/grpc")
            if not ctype.startswith(b"application/grpc"):
                call.done = True
                call.error = ProtocolError(f"the daemon answered {ctype!r}, not gRPC")
                return
        if self._header_end_stream:
            self._end(call, headers)

    def _end(self, call: _Call, trailers: dict[str, bytes] | None) -> None:
        call.done = True
        if call.partial:
            call.error = ProtocolError("the call ended inside a message")
            return
        fields = trailers if trailers is not None else call.headers or {}
        raw = fields.get("grpc-status")
        if raw is None:
            call.error = ProtocolError("the call ended without a status")
            return
        try:
            code = int(raw)
        except ValueError:
            code = 2  # UNKNOWN
        call.status = code
        if code != 0:
            call.error = from_status(code, percent_decode(fields.get("grpc-message", b"")))
