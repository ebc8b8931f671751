"""The CLI's synchronous gRPC client (supervisor._h2client) against a real grpclib
server, in a thread of this process, on a unix socket in tmp; and against a raw
fake server for what grpclib would not do (go silent, break off, GOAWAY)."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hpack
import pytest
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from supervisor._h2client import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    SETTINGS,
    WINDOW,
    Channel,
    ConnectionLost,
    ProtocolError,
    frame,
    percent_decode,
)
from supervisor.errors import ContainerdError, InvalidArgument, NotFound, SupervisorError

#: A bound on every test's waits: a stuck call fails the test instead of hanging it.
BOUND = 10.0


class Raw(CodecBase):
    """Messages are bytes, as they go on the wire."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class Service:
    """/test.T/<Name> for each handler; unary unless its name starts with Stream."""

    def __init__(self, handlers: dict[str, Callable[[Stream[Any, Any]], Awaitable[None]]]) -> None:
        self.handlers = handlers

    def __mapping__(self) -> dict[str, Handler]:
        return {
            f"/test.T/{name}": Handler(
                func,
                Cardinality.UNARY_STREAM if name.startswith("Stream") else Cardinality.UNARY_UNARY,
                bytes,
                bytes,
            )
            for name, func in self.handlers.items()
        }


class ServerThread:
    """A grpclib server on its own event loop, in a thread."""

    def __init__(self, path: Path, service: Any, codec: CodecBase | None = None) -> None:
        self.path = path
        self.service = service
        self.codec = codec or Raw()
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Server | None = None

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(BOUND)
        return self

    async def _start(self) -> None:
        self.server = Server([self.service], codec=self.codec)
        await self.server.start(path=str(self.path))

    def close_server(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(BOUND)

    def __exit__(self, *exc: object) -> None:
        try:
            self.close_server()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(BOUND)
            self.loop.close()


async def echo(stream: Stream[Any, Any]) -> None:
    request = await stream.recv_message()
    await stream.send_message(request)


async def fail(stream: Stream[Any, Any]) -> None:
    request = await stream.recv_message()
    code, _, message = request.decode().partition(":")
    raise GRPCError(Status(int(code)), message)


async def big(stream: Stream[Any, Any]) -> None:
    request = await stream.recv_message()
    size = int(request)
    await stream.send_message(bytes(range(256)) * (size // 256) + b"x" * (size % 256))


async def stream_count(stream: Stream[Any, Any]) -> None:
    request = await stream.recv_message()
    for i in range(int(request)):
        await stream.send_message(f"message {i}".encode())


async def stream_then_fail(stream: Stream[Any, Any]) -> None:
    await stream.recv_message()
    await stream.send_message(b"one")
    await stream.send_message(b"two")
    raise GRPCError(Status.UNAVAILABLE, "gone away")


async def hang(stream: Stream[Any, Any]) -> None:
    await stream.recv_message()
    await asyncio.sleep(3600)


async def drop(stream: Stream[Any, Any]) -> None:
    """The server goes away mid-call: its end of the connection closes."""
    request = await stream.recv_message()
    if request == b"after a message":
        await stream.send_message(b"first")
    await asyncio.sleep(0.2)
    stream.peer._transport.abort()  # type: ignore[attr-defined]
    await asyncio.sleep(3600)


async def jitter(stream: Stream[Any, Any]) -> None:
    request = await stream.recv_message()
    await asyncio.sleep(random.random() * 0.05)
    if request.startswith(b"bad"):
        raise GRPCError(Status.NOT_FOUND, f"no {request.decode()}")
    await stream.send_message(request.upper())


HANDLERS = {
    "Echo": echo,
    "Fail": fail,
    "Big": big,
    "StreamCount": stream_count,
    "StreamThenFail": stream_then_fail,
    "Hang": hang,
    "Drop": drop,
    "StreamDrop": drop,
    "Jitter": jitter,
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path / "grpc.sock", Service(HANDLERS)) as running:
        yield running


@pytest.fixture
def channel(server: ServerThread) -> Iterator[Channel]:
    with Channel(str(server.path)) as chan:
        yield chan


def bounded(seconds: float = BOUND) -> Any:
    """Fail a test whose body takes longer than ``seconds``."""

    class Bound:
        def __enter__(self) -> None:
            self.began = time.monotonic()

        def __exit__(self, *exc: object) -> None:
            took = time.monotonic() - self.began
            assert took < seconds, f"took {took:.1f}s"

    return Bound()


# -- a real grpclib server -----------------------------------------------------------------


def test_unary(channel: Channel) -> None:
    assert channel.unary("/test.T/Echo", b"hello") == b"hello"
    assert channel.unary("/test.T/Echo", b"") == b""
    # More calls on the same connection: new streams, one hpack table.
    for i in range(20):
        assert channel.unary("/test.T/Echo", b"x" * i) == b"x" * i


def test_request_larger_than_a_frame_and_the_default_window(channel: Channel) -> None:
    request = bytes(range(256)) * 1000  # 256 KB: many DATA frames, over 64 KiB of window
    assert channel.unary("/test.T/Echo", request, timeout=BOUND) == request


@pytest.mark.parametrize(
    ("code", "message", "cls"),
    [
        (5, "no container 'x'", NotFound),
        (3, "bad: 100% wrong\nsecond line", InvalidArgument),
        (13, "naïve ☃ \u00e9t\u00e9 %41 %zz", ContainerdError),
        (5, "", NotFound),
    ],
)
def test_error_status_with_a_message(
    channel: Channel, code: int, message: str, cls: type[SupervisorError]
) -> None:
    with pytest.raises(cls) as info:
        channel.unary("/test.T/Fail", f"{code}:{message}".encode())
    # grpclib percent-encodes grpc-message; an empty one reads as the status's name.
    assert str(info.value) == (message or "not found")


def test_unknown_method_is_unimplemented(channel: Channel) -> None:
    with pytest.raises(SupervisorError, match=r"not implemented|Method not found"):
        channel.unary("/test.T/Nope", b"")


def test_large_reply_goes_through_flow_control(channel: Channel) -> None:
    # Over twice the receive window: the client must re-open it as it reads.
    size = 2 * WINDOW + 12345
    with bounded():
        reply = channel.unary("/test.T/Big", str(size).encode(), timeout=BOUND)
    assert len(reply) == size and reply[:256] == bytes(range(256)) and reply.endswith(b"x" * 57)
    # And the connection is still good for more.
    assert channel.unary("/test.T/Echo", b"after") == b"after"


def test_message_over_the_cap_is_refused(server: ServerThread) -> None:
    chan = Channel(str(server.path), max_message=1 << 20)
    with chan, bounded(), pytest.raises(ProtocolError, match="limit is 1 MiB"):
        chan.unary("/test.T/Big", str(2 << 20).encode(), timeout=BOUND)


def test_server_stream(channel: Channel) -> None:
    got = list(channel.stream("/test.T/StreamCount", b"1000", timeout=BOUND))
    assert got == [f"message {i}".encode() for i in range(1000)]
    assert list(channel.stream("/test.T/StreamCount", b"0", timeout=BOUND)) == []


def test_server_stream_that_ends_in_an_error(channel: Channel) -> None:
    got = []
    with pytest.raises(SupervisorError, match="gone away"):
        for message in channel.stream("/test.T/StreamThenFail", b"", timeout=BOUND):
            got.append(message)
    assert got == [b"one", b"two"]


def test_stream_abandoned_early_leaves_the_connection_usable(channel: Channel) -> None:
    messages = channel.stream("/test.T/StreamCount", b"100000")
    assert next(messages) == b"message 0"
    messages.close()  # RST_STREAM: the server stops
    assert channel.unary("/test.T/Echo", b"still") == b"still"


def test_many_calls_at_once_keep_their_order(channel: Channel) -> None:
    requests = [f"bad{i}".encode() if i % 7 == 3 else f"id{i}".encode() for i in range(60)]
    with bounded():
        results = list(channel.unary_many("/test.T/Jitter", requests, in_flight=8, timeout=BOUND))
    assert len(results) == len(requests)
    for request, result in zip(requests, results, strict=True):
        if request.startswith(b"bad"):
            assert isinstance(result, NotFound) and str(result) == f"no {request.decode()}"
        else:
            assert result == request.upper()


def test_a_call_that_never_ends_times_out(channel: Channel) -> None:
    with bounded(3), pytest.raises(TimeoutError):
        channel.unary("/test.T/Hang", b"", timeout=0.5)
    # The abandoned call is reset; the connection goes on.
    assert channel.unary("/test.T/Echo", b"ok") == b"ok"


@pytest.mark.parametrize("request_", [b"", b"after a message"])
def test_server_closing_mid_call_is_a_typed_error(channel: Channel, request_: bytes) -> None:
    assert channel.unary("/test.T/Echo", b"warm") == b"warm"
    with bounded(5), pytest.raises(ConnectionLost, match="closed"):
        channel.unary("/test.T/Drop", request_)  # no deadline: the connection's end ends it
    with pytest.raises(ConnectionLost):  # and the channel stays closed
        channel.unary("/test.T/Echo", b"")


def test_server_closing_mid_stream_is_a_typed_error(channel: Channel) -> None:
    got = []
    with bounded(5), pytest.raises(ConnectionLost, match="closed"):
        for message in channel.stream("/test.T/StreamDrop", b"after a message"):
            got.append(message)
    assert got == [b"first"]


def test_nothing_listening(tmp_path: Path) -> None:
    with Channel(str(tmp_path / "none.sock")) as chan, pytest.raises(FileNotFoundError):
        chan.unary("/test.T/Echo", b"")
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(tmp_path / "bound.sock"))
    try:
        with Channel(str(tmp_path / "bound.sock")) as chan, pytest.raises(ConnectionRefusedError):
            chan.unary("/test.T/Echo", b"")
    finally:
        bound.close()


# -- a raw fake server ---------------------------------------------------------------------


class RawServer:
    """Accepts one connection and hands it to ``behave`` in a thread."""

    def __init__(self, path: Path, behave: Callable[[socket.socket], None]) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.behave = behave
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(BOUND)
        try:
            self.behave(conn)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(BOUND)


def read_request(conn: socket.socket) -> bytes:
    """Read until the client's first DATA frame with END_STREAM has come."""
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
        pos = 24  # the preface
        while len(data) - pos >= 9:
            length = int.from_bytes(data[pos : pos + 3], "big")
            kind, flags = data[pos + 3], data[pos + 4]
            if kind == DATA and flags & END_STREAM:
                return data
            pos += 9 + length


def reply(conn: socket.socket, *frames: bytes) -> None:
    conn.sendall(frame(SETTINGS, 0, 0) + b"".join(frames))


def headers(encoder: hpack.Encoder, stream: int, pairs: list[tuple[str, str]], end: bool) -> bytes:
    flags = END_HEADERS | (END_STREAM if end else 0)
    return frame(HEADERS, flags, stream, encoder.encode(pairs))


OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


def message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    made: list[RawServer] = []

    def make(behave: Callable[[socket.socket], None]) -> RawServer:
        made.append(RawServer(tmp_path / f"raw{len(made)}.sock", behave))
        return made[-1]

    yield make
    for server in made:
        server.close()
        assert not server.errors, server.errors


def test_silent_server_is_unavailable_within_the_liveness_bound(raw: Any) -> None:
    def silent(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(3)  # reads nothing more, answers nothing, not even PING

    server = raw(silent)
    chan = Channel(str(server.path), idle=0.2, liveness=0.5)
    with chan, bounded(2.5), pytest.raises(ConnectionLost, match="did not answer"):
        chan.unary("/test.T/Echo", b"")


def test_silent_but_alive_server_is_pinged_and_waited_for(raw: Any) -> None:
    def slow(conn: socket.socket) -> None:
        read_request(conn)
        encoder = hpack.Encoder()
        buf = b""
        for _ in range(3):  # answer the client's PINGs, then the call
            while True:
                buf += conn.recv(65536)
                at = buf.find(bytes((PING, 0)))
                if at >= 3:
                    payload = buf[at + 6 : at + 14]
                    buf = buf[at + 14 :]
                    conn.sendall(frame(PING, 1, 0, payload))
                    break
        reply(
            conn,
            headers(encoder, 1, OK_HEADERS, False),
            frame(DATA, 0, 1, message(b"late")),
            headers(encoder, 1, [("grpc-status", "0")], True),
        )

    server = raw(slow)
    with Channel(str(server.path), idle=0.1, liveness=0.5) as chan, bounded(5):
        assert chan.unary("/test.T/Echo", b"") == b"late"


def test_server_closing_mid_reply(raw: Any) -> None:
    def half(conn: socket.socket) -> None:
        read_request(conn)
        encoder = hpack.Encoder()
        reply(
            conn, headers(encoder, 1, OK_HEADERS, False), frame(DATA, 0, 1, message(b"x" * 50)[:20])
        )

    server = raw(half)
    with Channel(str(server.path)) as chan, bounded(), pytest.raises(ConnectionLost):
        chan.unary("/test.T/Echo", b"", timeout=BOUND)


def test_goaway_before_the_call_was_taken(raw: Any) -> None:
    def refuse(conn: socket.socket) -> None:
        read_request(conn)
        reply(conn, frame(GOAWAY, 0, 0, (0).to_bytes(4, "big") + (0).to_bytes(4, "big")))
        time.sleep(0.5)

    server = raw(refuse)
    with (
        Channel(str(server.path)) as chan,
        bounded(),
        pytest.raises(ConnectionLost, match="GOAWAY"),
    ):
        chan.unary("/test.T/Echo", b"", timeout=BOUND)


def test_goaway_with_an_error_fails_the_call(raw: Any) -> None:
    def broken(conn: socket.socket) -> None:
        read_request(conn)
        reply(conn, frame(GOAWAY, 0, 0, (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"oops"))
        time.sleep(0.5)

    server = raw(broken)
    chan = Channel(str(server.path))
    with chan, bounded(), pytest.raises(ConnectionLost, match="code 2, oops"):
        chan.unary("/test.T/Echo", b"", timeout=BOUND)


def test_graceful_goaway_lets_the_call_finish(raw: Any) -> None:
    def drain(conn: socket.socket) -> None:
        read_request(conn)
        encoder = hpack.Encoder()
        reply(
            conn,
            frame(GOAWAY, 0, 0, (1).to_bytes(4, "big") + (0).to_bytes(4, "big")),
            headers(encoder, 1, OK_HEADERS, False),
            frame(DATA, 0, 1, message(b"done")),
            headers(encoder, 1, [("grpc-status", "0")], True),
        )

    server = raw(drain)
    with Channel(str(server.path)) as chan, bounded():
        assert chan.unary("/test.T/Echo", b"", timeout=BOUND) == b"done"
        with pytest.raises(ConnectionLost, match="GOAWAY"):  # no new call on it
            chan.unary("/test.T/Echo", b"", timeout=BOUND)


def test_trailers_only_status_with_huffman_and_percent_encoding(raw: Any) -> None:
    def refuse(conn: socket.socket) -> None:
        read_request(conn)
        encoder = hpack.Encoder()  # Huffman-codes what is shorter so
        pairs = [*OK_HEADERS, ("grpc-status", "5"), ("grpc-message", "no such thing: caf%C3%A9%0A")]
        reply(conn, headers(encoder, 1, pairs, True))

    server = raw(refuse)
    with Channel(str(server.path)) as chan, pytest.raises(NotFound) as info:
        chan.unary("/test.T/Echo", b"", timeout=BOUND)
    assert str(info.value) == "no such thing: café\n"


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (frame(DATA, 0, 1, message(b"x")), "DATA before the response headers"),
        (frame(0x1, END_HEADERS, 1, b"\xff\xff\xff\xff\xff"), "bad header block"),
        (b"\x00\x80\x00" + bytes((DATA, 0)) + (1).to_bytes(4, "big"), "a frame of 32768 bytes"),
    ],
)
def test_broken_framing_is_a_protocol_error(raw: Any, answer: bytes, match: str) -> None:
    def broken(conn: socket.socket) -> None:
        read_request(conn)
        reply(conn, answer)
        time.sleep(0.3)

    server = raw(broken)
    with Channel(str(server.path)) as chan, bounded(), pytest.raises(ProtocolError, match=match):
        chan.unary("/test.T/Echo", b"", timeout=BOUND)


def test_http_error_status(raw: Any) -> None:
    def teapot(conn: socket.socket) -> None:
        read_request(conn)
        reply(conn, headers(hpack.Encoder(), 1, [(":status", "418")], True))

    server = raw(teapot)
    with Channel(str(server.path)) as chan, pytest.raises(ProtocolError, match="HTTP status 418"):
        chan.unary("/test.T/Echo", b"", timeout=BOUND)


@pytest.mark.parametrize(
    ("raw_message", "text"),
    [
        (b"plain", "plain"),
        (b"100%25", "100%"),
        (b"caf%C3%A9", "café"),
        (b"%zz%4", "%zz%4"),
        (b"%E2%98%83%0D%0A", "☃\r\n"),
        (b"%FF", "\ufffd"),
    ],
)
def test_percent_decode(raw_message: bytes, text: str) -> None:
    assert percent_decode(raw_message) == text
