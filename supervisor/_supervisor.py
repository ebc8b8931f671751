from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Self

import anyio

from .client import DEFAULT_ADDRESS, DEFAULT_FIFO_DIR, DEFAULT_NAMESPACE, Client
from .errors import Unavailable
from .events import DEFAULT_MAX_QUEUED, Backend, EventPipeline

#: How long entering a Supervisor waits for containerd (moby's start-up timeout).
CONNECT_TIMEOUT = 15.0


class Supervisor:
    """The object to embed: a containerd client, the event pipeline feeding
    ``backend``, and the task group that runs them.

    ::

        async with Supervisor(MyBackend(), "/run/containerd/containerd.sock", "ns") as sup:
            container = await sup.client.create_container(...)

    Entering waits until the event stream is live and the first reconcile is
    done (at most ``connect_timeout`` seconds, else ``Unavailable``; ``None``
    to not wait). ``containerd_state`` is handed to the :class:`Client`.
    Leaving stops reading events, gives queued events up to 5 s
    to reach the backend, and closes the connection.
    """

    def __init__(
        self,
        backend: Backend,
        address: str = DEFAULT_ADDRESS,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        fifo_dir: str = DEFAULT_FIFO_DIR,
        max_queued: int = DEFAULT_MAX_QUEUED,
        report_stopped_on_start: bool = True,
        connect_timeout: float | None = CONNECT_TIMEOUT,
        containerd_state: tuple[str, str] | None = None,
    ) -> None:
        self.client = Client(
            address, namespace, fifo_dir=fifo_dir, containerd_state=containerd_state
        )
        self.pipeline = EventPipeline(
            self.client,
            backend,
            max_queued=max_queued,
            report_stopped_on_start=report_stopped_on_start,
        )
        self.connect_timeout = connect_timeout
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("a Supervisor can be entered only once")
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.client)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self.pipeline.stop)
            if self.connect_timeout is None:
                tg.start_soon(self.pipeline.run)
                self._stack = stack.pop_all()
            else:
                with anyio.move_on_after(self.connect_timeout):
                    await tg.start(self.pipeline.run)
                    self._stack = stack.pop_all()
        if self._stack is None:
            raise Unavailable(
                f"containerd at {self.client.address} did not serve events "
                f"within {self.connect_timeout:g}s"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None
        # The body's own exception propagates as it is; only the pipeline's
        # shutdown happens here (it cannot fail the body).
        await self._stack.__aexit__(None, None, None)

    async def wait_connected(self) -> None:
        """Wait until the event stream is live and reconciled."""
        await self.pipeline.wait_connected()
