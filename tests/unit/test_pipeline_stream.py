"""The pipeline against a fake containerd whose event stream breaks in ways a
real one cannot be made to: each fault must end in a logged resubscription,
never in a crash or in a pipeline left CONNECTED and deaf."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from supervisor._proto.containerd.services.events import v1 as events_pb
from supervisor._proto.google.protobuf import Any as AnyPb
from supervisor.events import ConnectionState, Event, EventPipeline, EventType
from supervisor.events._h2stream import ACK, DATA, MAX_MESSAGE, PING, frame
from supervisor.events._pipeline import SYNC_TOPIC, SYNC_TYPE

from .test_h2stream import TIMEOUT, Peer, data, goaway, prefix

pytestmark = pytest.mark.anyio

Fault = Callable[[Peer], Awaitable[None]]


class Recorder:
    async def process_event(self, cid: str, event_type: EventType, event: Event) -> None:
        pass


async def answer_pings(peer: Peer) -> None:
    """Read the client's frames and acknowledge its PINGs, until it closes."""
    try:
        while True:
            f = await peer.read_frame()
            if f.kind == PING and not f.flags & ACK:
                await peer.send(frame(PING, ACK, 0, f.payload))
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass


class FakeContainerd:
    """Serves Events.Subscribe on a unix socket and is the pipeline's client.

    The first subscription gets its sync marker back (so the pipeline goes
    CONNECTED) and then ``fault``; later ones get their PINGs answered and
    nothing else, so the pipeline stays RECONNECTING until the test stops it.
    """

    namespace = "ns"

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.address = ""
        self.outage_seen = False
        self.markers: list[bytes] = []
        self.published = anyio.Event()
        self.connections = 0
        self.connected = anyio.Event()

    # -- the Client surface the pipeline uses ------------------------------------

    @property
    def _events_stub(self) -> FakeContainerd:
        return self

    async def publish(self, request: events_pb.PublishRequest) -> None:
        assert request.event is not None
        self.markers.append(request.event.value)
        self.published.set()

    async def is_serving(self) -> bool:
        return True

    async def list_tasks(self) -> list[object]:
        return []

    # -- the server ----------------------------------------------------------------

    @asynccontextmanager
    async def serving(self, directory: Path) -> AsyncIterator[None]:
        self.address = str(directory / "containerd.sock")
        listener = await anyio.create_unix_listener(self.address)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, self._connection)
            yield
            tg.cancel_scope.cancel()

    async def _connection(self, sock: SocketStream) -> None:
        async with sock:
            peer = Peer(sock)
            await peer.read_hello()
            self.connections += 1
            if self.connections > 1:
                await answer_pings(peer)
                return
            await self.published.wait()
            envelope = events_pb.Envelope(
                namespace=self.namespace,
                topic=SYNC_TOPIC,
                event=AnyPb(type_url=SYNC_TYPE, value=self.markers[-1]),
            )
            await peer.send(peer.response() + data(bytes(envelope)))
            async with anyio.create_task_group() as tg:
                tg.start_soon(answer_pings, peer)
                await self.connected.wait()
                tg.cancel_scope.cancel()
            await self.fault(peer)


async def silent(peer: Peer) -> None:
    """A hung containerd: the socket stays open, nothing is read or answered."""
    await anyio.sleep_forever()


async def oversized(peer: Peer) -> None:
    await peer.send(frame(DATA, 0, 1, prefix(MAX_MESSAGE + 1)))
    await anyio.sleep_forever()


async def goaway_no_error(peer: Peer) -> None:
    await peer.send(goaway(0, 0))
    await anyio.sleep_forever()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (silent, "containerd did not answer a keepalive ping within 0.2s"),
        (oversized, f"a message of {MAX_MESSAGE + 1} bytes (the limit is 16 MiB)"),
        (goaway_no_error, "containerd ended the stream"),
    ],
    ids=["silent", "oversized-message", "goaway-no-error"],
)
async def test_a_broken_stream_is_logged_and_subscribed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: Fault, reason: str
) -> None:
    caplog.set_level(logging.WARNING, logger="supervisor.events")
    fake = FakeContainerd(fault)
    pipeline = EventPipeline(
        fake,  # type: ignore[arg-type]
        Recorder(),
        keepalive_interval=0.05,
        keepalive_timeout=0.2,
    )
    with anyio.fail_after(TIMEOUT):
        async with fake.serving(tmp_path), anyio.create_task_group() as tg:
            await tg.start(pipeline.run)
            assert pipeline.state is ConnectionState.CONNECTED
            fake.connected.set()
            await pipeline.wait_for_state(ConnectionState.RECONNECTING)
            await pipeline.wait_stats(lambda s: s.subscriptions >= 2)
            pipeline.stop()
    lost = [r.getMessage() for r in caplog.records if "event stream lost" in r.getMessage()]
    assert lost == [f"event stream lost ({reason}); waiting for containerd"]
