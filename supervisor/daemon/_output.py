"""Container output: from the FIFOs to the JSON-lines log and to live followers."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..client import FifoReader
from ._logs import RotatingJsonLog

log = logging.getLogger("supervisor.daemon")

Listener = MemoryObjectSendStream[Any]


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
    failed = False

    async def copy(stream: str, reader: FifoReader) -> None:
        nonlocal failed
        with contextlib.suppress(anyio.ClosedResourceError):
            async for chunk in reader:
                when = datetime.now(UTC)
                if journal is None:
                    publish(listeners, (when, stream, chunk))
                    continue
                try:
                    await anyio.to_thread.run_sync(journal.write, stream, chunk, when)
                except OSError as exc:  # a full disk must not take the daemon down
                    if not failed:
                        failed = True
                        log.error("cannot write %s: %s", journal.path, exc)
                except ValueError:
                    pass  # closed: the container was removed while its last output came
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
