"""When each container's sync runs: on request, at a time it asked for, and
again with a backoff after it failed; one at a time per container, many
containers at once (kubelet's pod workers, in small)."""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from ..errors import SupervisorError, Unavailable

log = logging.getLogger("supervisor.daemon")

#: Retry backoff after a failed sync: 0.2 s doubling to 5 s.
RETRY_MIN = 0.2
RETRY_MAX = 5.0
#: Syncs running at once (each is a few RPCs; containerd serialises much of it).
CONCURRENCY = 32
#: The bound on one sync (a stop's grace period is not part of it).
SYNC_TIMEOUT = 60.0

#: The faults a sync may meet that are worth one line, not a traceback.
EXPECTED = (SupervisorError, OSError, TimeoutError)

Sync = Callable[[str], Awaitable[float | None]]


class SyncScheduler:
    """Runs ``sync(container_id)`` for the ids it is asked to. A sync returns
    the epoch time at which it wants to run again (a backoff that ends), or
    None. A failed sync is retried with a backoff, never dropped; requests that
    come while a container's sync runs make it run once more afterwards."""

    def __init__(self, sync: Sync, *, concurrency: int = CONCURRENCY) -> None:
        self._sync = sync
        self._limit = anyio.Semaphore(concurrency)
        self._due: dict[str, float] = {}  # id -> monotonic time it is due
        self._heap: list[tuple[float, str]] = []
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self.errors = 0  # failed syncs, for metrics and tests

    def request(self, cid: str, at: float | None = None) -> None:
        """Sync ``cid`` now, or at epoch time ``at`` (whichever request is earlier wins)."""
        when = time.monotonic() if at is None else time.monotonic() + (at - time.time())
        if cid in self._running and at is None:
            self._again.add(cid)
            return
        current = self._due.get(cid)
        if current is not None and current <= when:
            return
        self._due[cid] = when
        heapq.heappush(self._heap, (when, cid))
        self._wake.set()

    def forget(self, cid: str) -> None:
        """Drop what is pending for a container that is gone."""
        self._due.pop(cid, None)
        self._again.discard(cid)
        self._failures.pop(cid, None)
        self._last_error.pop(cid, None)

    def pending(self) -> int:
        return len(self._due) + len(self._running)

    async def run(self) -> None:
        """Dispatch until cancelled."""
        async with anyio.create_task_group() as tg:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._stale(self._heap[0])):
                    when, cid = heapq.heappop(self._heap)
                    if self._stale((when, cid)):
                        continue
                    if cid in self._running:
                        # Runs now; once more after it (it may read stale state).
                        del self._due[cid]
                        self._again.add(cid)
                        continue
                    del self._due[cid]
                    self._running.add(cid)
                    await self._limit.acquire()
                    tg.start_soon(self._one, cid)
                self._wake = anyio.Event()
                delay = self._heap[0][0] - time.monotonic() if self._heap else None
                with anyio.move_on_after(delay if delay is not None else 3600.0):
                    await self._wake.wait()

    def _stale(self, entry: tuple[float, str]) -> bool:
        when, cid = entry
        return self._due.get(cid) != when

    async def _one(self, cid: str) -> None:
        at: float | None = None
        try:
            with anyio.fail_after(SYNC_TIMEOUT):
                at = await self._sync(cid)
        except Exception as exc:
            self.errors += 1
            failures = self._failures[cid] = self._failures.get(cid, 0) + 1
            delay = min(RETRY_MIN * 2 ** (failures - 1), RETRY_MAX)
            message = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, EXPECTED):
                if self._last_error.get(cid) != message:  # a traceback once, not per retry
                    log.exception("sync of %s failed unexpectedly; retrying", cid)
                self._last_error[cid] = message
            elif not isinstance(exc, Unavailable) and self._last_error.get(cid) != message:
                # containerd being away is logged once by whoever sees it first;
                # other faults once per container until they change or clear.
                log.warning("sync of %s failed (%s); retrying every %gs at most", cid,
                            message, RETRY_MAX)  # fmt: skip
                self._last_error[cid] = message
            at = time.time() + delay
        else:
            self._failures.pop(cid, None)
            if self._last_error.pop(cid, None) is not None:
                log.info("sync of %s recovered", cid)
        finally:
            self._running.discard(cid)
            self._limit.release()
        if cid in self._again:
            self._again.discard(cid)
            self.request(cid)
        elif at is not None:
            self.request(cid, at)
