"""ServerStream against a fake HTTP/2 server on a unix socket, one connection per test."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import anyio
import hpack
import pytest
from anyio.abc import SocketStream
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.errors import ContainerdError, InvalidArgument, NotFound, Unavailable
from supervisor.events._h2stream import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    MAX_HEADER_BLOCK,
    MAX_HEADER_FRAMES,
    MAX_MESSAGE,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW,
    KeepaliveTimeout,
    LimitExceeded,
    ProtocolError,
    ServerStream,
    frame,
)

pytestmark = pytest.mark.anyio

#: A bound on every wait, so that a stuck client or server fails the test instead of hanging it.
TIMEOUT = 5
WINDOW_UPDATE = 0x8
METHOD = "/containerd.services.events.v1.Events/Subscribe"
REQUEST = b"\x0a\x0bfilter-text"
METADATA = {"containerd-namespace": "supervisor-test"}


class Frame(NamedTuple):
    kind: int
    flags: int
    stream: int
    payload: bytes


class Peer:
    """The server's end of one connection: reads the client's frames, writes raw bytes."""

    def __init__(self, sock: SocketStream) -> None:
        self.sock = sock
        self.encoder = hpack.Encoder()
        self.hello: list[Frame] = []
        self.received: list[Frame] = []
        self.closed = False
        self._buf = b""

    async def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += await self.sock.receive()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    async def read_frame(self) -> Frame:
        head = await self._read(9)
        length = int.from_bytes(head[:3], "big")
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        return Frame(head[3], head[4], stream, await self._read(length))

    async def read_hello(self) -> list[Frame]:
        """The preface, then every frame up to the request's END_STREAM."""
        assert await self._read(len(PREFACE)) == PREFACE
        frames = [await self.read_frame()]
        while not (frames[-1].kind == DATA and frames[-1].flags & END_STREAM):
            frames.append(await self.read_frame())
        return frames

    async def read_until(self, kinds: set[int]) -> None:
        """Record the client's frames until each of ``kinds`` has been seen."""
        while not kinds <= {f.kind for f in self.received}:
            self.received.append(await self.read_frame())

    async def drain(self) -> None:
        """Record the client's frames until it closes the connection."""
        try:
            while True:
                self.received.append(await self.read_frame())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass

    async def send(self, data: bytes) -> None:
        await self.sock.send(data)

    async def close(self) -> None:
        self.closed = True
        await self.sock.aclose()

    def headers(self, flags: int, fields: list[tuple[str, str]]) -> bytes:
        return frame(HEADERS, flags, 1, self.encoder.encode(fields))

    def response(self) -> bytes:
        return self.headers(END_HEADERS, [(":status", "200"), ("content-type", "application/grpc")])

    def trailers(self, status: int = 0, message: str = "") -> bytes:
        fields = [("grpc-status", str(status))]
        if message:
            fields.append(("grpc-message", message))
        return self.headers(END_STREAM | END_HEADERS, fields)


Handler = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def serve(directory: Path, handler: Handler) -> AsyncIterator[str]:
    """Accept one connection on a socket in ``directory`` and run ``handler`` on it.

    After the handler returns the server keeps reading (into ``Peer.received``)
    until the client closes, so the client never writes to a closed socket.
    """
    path = str(directory / "h2.sock")

    async def run() -> None:
        async with listener:
            sock = await listener.accept()
        async with sock:
            peer = Peer(sock)
            peer.hello = await peer.read_hello()
            await handler(peer)
            if not peer.closed:
                await peer.drain()

    listener = await anyio.create_unix_listener(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        yield path


def grpc(message: bytes, compressed: bool = False) -> bytes:
    return bytes((compressed,)) + len(message).to_bytes(4, "big") + message


def data(*messages: bytes) -> bytes:
    return frame(DATA, 0, 1, b"".join(grpc(m) for m in messages))


async def collect(stream: ServerStream, into: list[list[bytes]]) -> None:
    async for batch in stream:
        into.append(batch)


async def messages_of(path: str) -> list[bytes]:
    batches: list[list[bytes]] = []
    async with ServerStream(path, METHOD, REQUEST, METADATA) as stream:
        await collect(stream, batches)
    return [m for batch in batches for m in batch]


async def test_opening_bytes(tmp_path: Path) -> None:
    hello: list[Frame] = []

    async def handler(peer: Peer) -> None:
        hello.extend(peer.hello)
        await peer.send(peer.trailers(0))

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            assert await messages_of(path) == []

    settings_, window, headers, request = hello
    assert settings_.kind == SETTINGS and settings_.stream == 0 and settings_.flags == 0
    values = {
        int.from_bytes(settings_.payload[i : i + 2], "big"): int.from_bytes(
            settings_.payload[i + 2 : i + 6], "big"
        )
        for i in range(0, len(settings_.payload), 6)
    }
    # No push; a 16 MiB stream window; the header list size we accept.
    assert values == {0x2: 0, 0x4: WINDOW, 0x6: MAX_HEADER_BLOCK}
    assert window == Frame(WINDOW_UPDATE, 0, 0, (WINDOW - 65535).to_bytes(4, "big"))
    assert headers.kind == HEADERS and headers.stream == 1
    assert headers.flags & END_HEADERS and not headers.flags & END_STREAM
    fields = [(str(k), str(v)) for k, v in hpack.Decoder().decode(headers.payload)]
    assert (":method", "POST") in fields
    assert (":path", METHOD) in fields
    assert ("content-type", "application/grpc") in fields
    assert ("te", "trailers") in fields
    assert ("containerd-namespace", "supervisor-test") in fields
    assert request.kind == DATA and request.stream == 1 and request.flags == END_STREAM
    assert request.payload == b"\x00" + len(REQUEST).to_bytes(4, "big") + REQUEST


@st.composite
def cuts(draw: st.DrawFn, size: int, preferred: list[int]) -> list[int]:
    """Sorted split points inside ``range(1, size)``, often at ``preferred`` ones."""
    if size < 2:
        return []
    inner = [p for p in preferred if 0 < p < size]
    anywhere = st.integers(1, size - 1)
    point = st.one_of(st.sampled_from(inner), anywhere) if inner else anywhere
    return sorted(draw(st.sets(point, max_size=12)))


def split(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


@st.composite
def responses(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Messages, and a whole response carrying them cut into the writes that send it.

    Everything is drawn here rather than with ``st.data()`` in the test: a draw
    inside a coroutine can end the example with a ``StopTest`` the event loop eats.
    """
    messages = draw(st.lists(st.binary(max_size=300), max_size=30))
    body = b"".join(grpc(m) for m in messages)
    boundaries, at = [], 0
    for m in messages:
        at += 5 + len(m)
        boundaries.append(at)
    encoder = hpack.Encoder()
    response = [(":status", "200"), ("content-type", "application/grpc")]
    wire = [frame(HEADERS, END_HEADERS, 1, encoder.encode(response))]
    for payload in split(body, draw(cuts(len(body), boundaries))):
        pad = draw(st.none() | st.integers(0, 20))
        if pad is None:
            wire.append(frame(DATA, 0, 1, payload))
        else:
            wire.append(frame(DATA, PADDED, 1, bytes((pad,)) + payload + b"\xaa" * pad))
    block = encoder.encode([("grpc-status", "0"), ("grpc-message", "")])
    if draw(st.booleans()):
        wire.append(frame(HEADERS, END_STREAM, 1, block[:3]))
        wire.append(frame(CONTINUATION, END_HEADERS, 1, block[3:]))
    else:
        wire.append(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    everything = b"".join(wire)
    frame_ends = [sum(map(len, wire[: i + 1])) for i in range(len(wire))]
    return messages, split(everything, draw(cuts(len(everything), frame_ends)))


@settings(max_examples=25, deadline=None)
@given(response=responses())
async def test_messages_reassembled_whatever_the_chunking(
    tmp_path_factory: pytest.TempPathFactory, response: tuple[list[bytes], list[bytes]]
) -> None:
    messages, writes = response

    async def handler(peer: Peer) -> None:
        for chunk in writes:
            await peer.send(chunk)
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path_factory.mktemp("h2"), handler) as path:
            assert await messages_of(path) == messages


@pytest.mark.parametrize(
    ("status", "error"),
    [(5, NotFound), (3, InvalidArgument), (13, ContainerdError)],
)
async def test_trailers_only_status_raises(
    tmp_path: Path, status: int, error: type[Exception]
) -> None:
    message = 'container "web-1" in namespace "supervisor-test": not found'

    async def handler(peer: Peer) -> None:
        fields = [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", str(status)),
            ("grpc-message", message),
        ]
        await peer.send(peer.headers(END_STREAM | END_HEADERS, fields))

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            with pytest.raises(error) as info:
                await messages_of(path)
    assert str(info.value) == message


async def test_status_in_trailers_after_messages(tmp_path: Path) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + data(b"one", b"two"))
        await peer.send(peer.trailers(5, "gone"))

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(path, METHOD, REQUEST) as stream,
        ):
            with pytest.raises(NotFound, match="gone"):
                await collect(stream, batches)
    assert [m for batch in batches for m in batch] == [b"one", b"two"]


async def test_settings_and_ping_are_acknowledged(tmp_path: Path) -> None:
    payload = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    server_settings = (0x3).to_bytes(2, "big") + (100).to_bytes(4, "big")
    acks: list[Frame] = []

    async def handler(peer: Peer) -> None:
        await peer.send(
            frame(SETTINGS, 0, 0, server_settings)
            + frame(SETTINGS, ACK, 0)  # the server's ack of ours: needs no reply
            + frame(PING, 0, 0, payload)
            + peer.response()
            + data(b"event")
        )
        await peer.read_until({SETTINGS, PING})
        acks.extend(peer.received)
        await peer.send(peer.trailers(0))

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            assert await messages_of(path) == [b"event"]
    assert acks == [Frame(SETTINGS, ACK, 0, b""), Frame(PING, ACK, 0, payload)]


def goaway(last: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, last.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)


@pytest.mark.parametrize(
    ("ending", "match"),
    [
        (goaway(1, 2, b"debug"), "code 2, debug"),
        (goaway(1, 11, b"too_many_pings"), "code 11, too_many_pings"),
        (frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")), "reset"),
    ],
    ids=["goaway-internal-error", "goaway-enhance-your-calm", "rst-stream"],
)
async def test_goaway_with_an_error_and_reset_raise_unavailable_after_earlier_messages(
    tmp_path: Path, ending: bytes, match: str
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + data(b"a", b"b") + data(b"c") + ending + data(b"late"))

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(path, METHOD, REQUEST) as stream,
        ):
            with pytest.raises(Unavailable, match=match):
                await collect(stream, batches)
    assert [m for batch in batches for m in batch] == [b"a", b"b", b"c"]


async def test_goaway_no_error_for_a_stream_it_will_not_serve_ends_it_cleanly(
    tmp_path: Path,
) -> None:
    """Last stream id 0: our stream 1 will never be processed, so it ends now."""

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + data(b"a") + goaway(0, 0) + data(b"late"))

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            assert await messages_of(path) == [b"a"]


@pytest.mark.parametrize("finish", ["trailers", "close"])
async def test_goaway_no_error_lets_the_server_finish_our_stream(
    tmp_path: Path, finish: str
) -> None:
    """Last stream id 1 (ours): messages keep coming until the trailers, or
    until the server closes the connection, which is then a clean end too."""

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + data(b"a") + goaway(0x7FFFFFFF, 0))
        await peer.send(goaway(1, 0) + data(b"b"))
        if finish == "trailers":
            await peer.send(peer.trailers(0))
        else:
            await peer.close()

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            assert await messages_of(path) == [b"a", b"b"]


async def test_connection_reset_after_goaway_no_error_still_raises(tmp_path: Path) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(
            peer.response() + goaway(1, 0) + data(b"a") + frame(RST_STREAM, 0, 1, bytes(4))
        )

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            with pytest.raises(Unavailable, match="reset"):
                await messages_of(path)


async def test_reset_of_another_stream_is_ignored(tmp_path: Path) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(
            peer.response()
            + data(b"a")
            + frame(RST_STREAM, 0, 3, (8).to_bytes(4, "big"))
            + data(b"b")
            + peer.trailers(0)
        )

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            assert await messages_of(path) == [b"a", b"b"]


@pytest.mark.parametrize(
    "tail",
    [b"", data(b"cut short")[:-3], data(b"x")[:4]],
    ids=["between-frames", "mid-frame", "mid-frame-header"],
)
async def test_connection_closed_mid_stream_raises_unavailable(tmp_path: Path, tail: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + data(b"kept") + tail)
        await peer.close()

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(path, METHOD, REQUEST) as stream,
        ):
            with pytest.raises(Unavailable) as info:
                await collect(stream, batches)
    assert [m for batch in batches for m in batch] == [b"kept"]
    assert isinstance(info.value.__cause__, anyio.EndOfStream)


async def test_window_updates_after_half_the_window(tmp_path: Path) -> None:
    count, size = 600, 16000
    message = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)
    updates: list[Frame] = []

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response())
        for _ in range(count):
            await peer.send(data(message))
        await peer.send(peer.trailers(0))
        await peer.drain()
        updates.extend(f for f in peer.received if f.kind == WINDOW_UPDATE)

    with anyio.fail_after(TIMEOUT * 2):
        async with serve(tmp_path, handler) as path:
            received = await messages_of(path)
    assert len(received) == count and all(m == message for m in received)

    sent = count * (size + 5)
    by_stream = {0: 0, 1: 0}
    for update in updates:
        by_stream[update.stream] += int.from_bytes(update.payload, "big")
    assert {u.stream for u in updates} == {0, 1}
    assert by_stream[0] == by_stream[1]
    assert WINDOW // 2 <= by_stream[0] <= sent


@pytest.mark.parametrize("split_message", [False, True], ids=["whole", "split"])
async def test_compressed_message_raises_protocol_error(
    tmp_path: Path, split_message: bool
) -> None:
    compressed = grpc(b"zipped", compressed=True)
    if split_message:
        tail = frame(DATA, 0, 1, compressed[:2]) + frame(DATA, 0, 1, compressed[2:])
    else:
        tail = frame(DATA, 0, 1, grpc(b"b") + compressed)

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + data(b"a") + tail + data(b"late"))

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(path, METHOD, REQUEST) as stream,
        ):
            with pytest.raises(ProtocolError, match="compressed"):
                await collect(stream, batches)
    expected = [b"a"] if split_message else [b"a", b"b"]
    assert [m for batch in batches for m in batch] == expected


async def test_missing_socket_raises_unavailable(tmp_path: Path) -> None:
    with anyio.fail_after(TIMEOUT), pytest.raises(Unavailable, match="cannot reach"):
        async with ServerStream(str(tmp_path / "absent.sock"), METHOD, REQUEST):
            pass


async def test_messages_kept_when_the_ack_cannot_be_sent(tmp_path: Path) -> None:
    closed = anyio.Event()

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + data(b"a", b"b") + frame(PING, 0, 0, bytes(8)))
        await peer.close()
        closed.set()

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(path, METHOD, REQUEST) as stream,
        ):
            await closed.wait()
            with pytest.raises(Unavailable):
                await collect(stream, batches)
    assert [m for batch in batches for m in batch] == [b"a", b"b"]


async def test_grpc_message_is_percent_decoded(tmp_path: Path) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + peer.trailers(5, "caf%C3%A9 at 100%25: not found"))

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            with pytest.raises(NotFound) as info:
                await messages_of(path)
    assert str(info.value) == "café at 100%: not found"


# -- caps: what the server sends is refused before it is buffered ---------------


def prefix(size: int) -> bytes:
    """A gRPC message prefix announcing ``size`` bytes."""
    return b"\x00" + size.to_bytes(4, "big")


def flat(batches: list[list[bytes]]) -> list[bytes]:
    return [m for batch in batches for m in batch]


async def raises_after(
    tmp_path: Path, wire: bytes, error: type[Exception], match: str | None = None
) -> list[bytes]:
    """Send ``wire`` after the response headers, then read and answer nothing
    (``serve`` drains): the reader must fail on what it has, at once."""

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + wire)

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(path, METHOD, REQUEST) as stream,
        ):
            with pytest.raises(error, match=match):
                await collect(stream, batches)
    return flat(batches)


@pytest.mark.parametrize("split", [False, True], ids=["one-frame", "prefix-split"])
async def test_an_oversized_message_is_refused_at_its_prefix(tmp_path: Path, split: bool) -> None:
    """Only the 5-byte prefix of a 16 MiB + 1 message is ever sent."""
    body = grpc(b"a") + prefix(MAX_MESSAGE + 1)
    if split:  # the prefix completes in the buffered-partial path
        wire = frame(DATA, 0, 1, body[:8]) + frame(DATA, 0, 1, body[8:])
    else:
        wire = frame(DATA, 0, 1, body)
    got = await raises_after(tmp_path, wire, LimitExceeded, f"{MAX_MESSAGE + 1} bytes")
    assert got == [b"a"]


async def test_a_message_of_the_largest_size_is_waited_for(tmp_path: Path) -> None:
    """16 MiB exactly is allowed: the reader waits for the body (here the server
    then closes, so the stream is lost rather than refused)."""

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response() + frame(DATA, 0, 1, prefix(MAX_MESSAGE)))
        await peer.close()

    with anyio.fail_after(TIMEOUT):
        async with serve(tmp_path, handler) as path:
            with pytest.raises(Unavailable, match=r"connection to containerd lost \(closed\)"):
                await messages_of(path)


async def test_an_oversized_frame_is_refused_at_its_header(tmp_path: Path) -> None:
    header = (MAX_FRAME + 1).to_bytes(3, "big") + bytes((DATA, 0)) + (1).to_bytes(4, "big")
    got = await raises_after(tmp_path, data(b"a") + header, ProtocolError, "frame of 16385 bytes")
    assert got == [b"a"]


def big_header_list() -> bytes:
    """An hpack block under the compressed cap that decodes to over the list cap."""
    fields = [(f"x-big-{i}", "a" * 15000) for i in range(5)]
    block = hpack.Encoder().encode(fields, huffman=True)
    assert len(block) < MAX_HEADER_BLOCK
    chunks = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)]
    wire = frame(HEADERS, END_HEADERS if len(chunks) == 1 else 0, 1, chunks[0])
    for i, chunk in enumerate(chunks[1:], 2):
        wire += frame(CONTINUATION, END_HEADERS if i == len(chunks) else 0, 1, chunk)
    return wire


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (
            frame(HEADERS, END_STREAM, 1, bytes(16000))
            + frame(CONTINUATION, 0, 1, bytes(16000)) * 4,
            "over 64 KiB",
        ),
        (
            frame(HEADERS, END_STREAM, 1) + frame(CONTINUATION, 0, 1) * MAX_HEADER_FRAMES,
            f"over {MAX_HEADER_FRAMES} frames",
        ),
        (big_header_list(), "header list over 64 KiB"),
    ],
    ids=["bytes", "frames", "decoded"],
)
async def test_an_oversized_header_block_is_refused(
    tmp_path: Path, wire: bytes, match: str
) -> None:
    """The first two never send END_HEADERS: the reader must not wait for it."""
    assert await raises_after(tmp_path, data(b"a") + wire, LimitExceeded, match) == [b"a"]


@pytest.mark.parametrize(
    "wire",
    [
        frame(HEADERS, 0, 1) + data(b"x"),
        frame(CONTINUATION, END_HEADERS, 1),
        frame(DATA, PADDED, 1, b"\x05abc"),
        frame(DATA, PADDED, 1),
        frame(HEADERS, PADDED | END_HEADERS, 1, b"\x09abc"),
        frame(HEADERS, PRIORITY | END_HEADERS, 1, b"abc"),
        frame(PING, 0, 0, b"1234"),
        frame(GOAWAY, 0, 0, bytes(4)),
        frame(RST_STREAM, 0, 1, b"\x00\x08"),
    ],
    ids=[
        "interrupted-header-block",
        "stray-continuation",
        "data-padding-too-long",
        "data-padded-empty",
        "headers-padding-too-long",
        "headers-priority-too-short",
        "short-ping",
        "short-goaway",
        "short-rst-stream",
    ],
)
async def test_malformed_frames_raise_protocol_error(tmp_path: Path, wire: bytes) -> None:
    assert await raises_after(tmp_path, data(b"a") + wire, ProtocolError) == [b"a"]


# -- keepalive -------------------------------------------------------------------


async def test_a_silent_server_is_taken_for_dead(tmp_path: Path) -> None:
    """The server stops answering anything, PINGs included (a hung containerd
    on a live socket): the reader raises within interval + timeout, having pinged once."""
    interval, timeout = 0.05, 0.2
    peers: list[Peer] = []

    async def handler(peer: Peer) -> None:
        peers.append(peer)
        await peer.send(peer.response() + data(b"a"))  # then serve() drains, answering nothing

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(
                path, METHOD, REQUEST, keepalive_interval=interval, keepalive_timeout=timeout
            ) as stream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(stream.keepalive)
            began = anyio.current_time()
            with pytest.raises(KeepaliveTimeout, match=r"keepalive ping within 0\.2s"):
                await collect(stream, batches)
            elapsed = anyio.current_time() - began
            tg.cancel_scope.cancel()
    assert flat(batches) == [b"a"]
    assert elapsed >= interval + timeout
    assert [(f.kind, f.flags, f.stream) for f in peers[0].received] == [(PING, 0, 0)]
    assert isinstance(KeepaliveTimeout("x"), Unavailable)  # what the pipeline reconnects on


async def test_answered_pings_keep_an_idle_stream_open(tmp_path: Path) -> None:
    """Pinged only after ``interval`` of silence, and kept for as long as the
    server answers: here for twice the timeout, before it finally sends."""
    interval, timeout = 0.02, 0.25
    arrivals: list[float] = []

    async def handler(peer: Peer) -> None:
        await peer.send(peer.response())
        while not arrivals or arrivals[-1] - arrivals[0] < 2 * timeout:
            f = await peer.read_frame()
            if f.kind == PING:
                assert (f.flags, f.stream, len(f.payload)) == (0, 0, 8)
                arrivals.append(anyio.current_time())
                await peer.send(frame(PING, ACK, 0, f.payload))
        await peer.send(data(b"a") + peer.trailers(0))

    batches: list[list[bytes]] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(
                path, METHOD, REQUEST, keepalive_interval=interval, keepalive_timeout=timeout
            ) as stream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(stream.keepalive)
            await collect(stream, batches)
            tg.cancel_scope.cancel()
    assert flat(batches) == [b"a"]
    assert min(b - a for a, b in pairwise(arrivals)) >= interval * 0.9


async def test_a_busy_consumer_is_not_silence(tmp_path: Path) -> None:
    """While the consumer holds a batch (a slow backend), the server's bytes
    may be waiting unread: no PING goes out and the connection is kept."""
    interval, timeout = 0.01, 0.05
    resumed = anyio.Event()
    pings_while_busy: list[Frame] = []

    async def handler(peer: Peer) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.drain)  # records the client's frames, answers none
            await peer.send(peer.response() + data(b"a"))
            await resumed.wait()
            pings_while_busy.extend(f for f in peer.received if f.kind == PING)
            await peer.send(data(b"b") + peer.trailers(0))

    got: list[bytes] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            serve(tmp_path, handler) as path,
            ServerStream(
                path, METHOD, REQUEST, keepalive_interval=interval, keepalive_timeout=timeout
            ) as stream,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(stream.keepalive)
            async for batch in stream:
                got.extend(batch)
                if not resumed.is_set():
                    # Not synchronisation: the time a slow backend takes, many
                    # keepalive intervals and timeouts long.
                    await anyio.sleep(10 * (interval + timeout))
                    resumed.set()
            tg.cancel_scope.cancel()
    assert got == [b"a", b"b"]
    assert pings_while_busy == []
