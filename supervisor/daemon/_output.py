"""Container output: from the FIFOs to the JSON-lines log and to live followers."""

from __future__ import annotations

import contextlib
import logging
import math
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

import anyio

from ..client import FifoReader
from ._logs import RotatingJsonLog

log = logging.getLogger("supervisor.daemon")

#: How far, in bytes of output, a ``logs -f`` client may fall behind before it is dropped.
FOLLOWER_LIMIT = 8 * 1024 * 1024
#: What a queued chunk costs besides its bytes (tuple, timestamp, object headers), so a
#: flood of tiny chunks counts against the limit too.
CHUNK_COST = 256

Chunk = tuple[datetime, str, bytes]


class Listener(Protocol):
    """What :func:`publish` hands items to: a memory object send stream, or a :class:`Follower`."""

    def send_nowait(self, item: Any, /) -> None: ...

    def close(self) -> None: ...


class Follower:
    """One ``logs -f`` client's queue of live output, bounded by bytes.

    A queue bounded by chunks holds up to 64 KiB per chunk; this one holds at most *limit*
    bytes (:data:`CHUNK_COST` counted per chunk besides its data). A client that falls
    further behind is dropped: :func:`publish` closes the queue, :attr:`dropped` says why,
    and iterating ends once what was queued is taken.
    """

    def __init__(self, limit: int = FOLLOWER_LIMIT) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Chunk](math.inf)
        self._limit = limit
        self._queued = 0
        self.dropped = False

    def send_nowait(self, item: Chunk, /) -> None:
        cost = len(item[2]) + CHUNK_COST
        if self._queued + cost > self._limit:
            self.dropped = True
            raise anyio.WouldBlock
        self._send.send_nowait(item)
        self._queued += cost

    def close(self) -> None:
        self._send.close()

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> Chunk:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._queued -= len(item[2]) + CHUNK_COST
        return item

    def __enter__(self) -> Follower:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._send.close()
        self._receive.close()


def publish(listeners: set[Listener], item: object) -> None:
    """Hand ``item`` to every listener; one that cannot keep up is dropped
    (its stream closes) rather than stalling the container or the pipeline."""
    for listener in list(listeners):
        try:
            listener.send_nowait(item)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            listeners.discard(listener)
            listener.close()


async def copy_logs(
    readers: list[tuple[str, FifoReader]],
    journal: RotatingJsonLog | None,
    listeners: set[Listener],
    drained: anyio.Event,
) -> None:
    async def copy(stream: str, reader: FifoReader) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):
            async for chunk in reader:
                when = datetime.now(UTC)
                if journal is not None:
                    # OSError: a full disk must not take the daemon down, and the journal
                    # logs when it starts and stops failing. ValueError: closed, as the
                    # container was removed while its last output came.
                    with contextlib.suppress(OSError, ValueError):
                        await anyio.to_thread.run_sync(journal.write, stream, chunk, when)
                publish(listeners, (when, stream, chunk))

    try:
        async with anyio.create_task_group() as tg:
            for stream, reader in readers:
                tg.start_soon(copy, stream, reader)
    finally:
        if journal is not None:
            with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
                await anyio.to_thread.run_sync(journal.flush_partial)
        drained.set()
        for listener in list(listeners):  # followers end with the output
            listener.close()
        listeners.clear()
