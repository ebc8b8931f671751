"""systemd's sd_notify protocol, spoken directly (no libsystemd).

The whole protocol is one datagram of newline-separated ``KEY=VALUE`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (see sd_notify(3)). Notification is advisory:
a failure to deliver is logged once at debug level and never raised.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ("Notifier", "watchdog_interval")

logger = logging.getLogger(__name__)

_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends service state notifications to systemd; a no-op when not started by systemd."""

    def __init__(self, address: str | None) -> None:
        """Notify *address*: a socket path, ``"\\0name"`` (abstract), or None for a no-op."""
        self._address = address
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, unset: bool = False) -> Notifier:
        """Build a notifier from ``$NOTIFY_SOCKET`` in *environ*.

        ``@name`` addresses the abstract namespace. With *unset*, ``NOTIFY_SOCKET``,
        ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are removed from ``os.environ`` so child
        processes do not inherit them (read :func:`watchdog_interval` first).
        """
        value = environ.get("NOTIFY_SOCKET", "")
        if unset:
            for name in _ENVIRONMENT:
                os.environ.pop(name, None)
        if value.startswith("@"):
            return cls("\0" + value[1:])
        if value.startswith("/"):
            return cls(value)
        if value:
            logger.debug("ignoring NOTIFY_SOCKET=%r: not a path or an abstract name", value)
        return cls(None)

    @property
    def enabled(self) -> bool:
        """True when notifications are actually sent somewhere."""
        return self._address is not None

    def notify(self, *lines: str) -> None:
        """Send *lines* (``KEY=VALUE`` each) as one datagram; never raises."""
        if self._address is None or not lines:
            return
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            ) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.debug("sd_notify to %r failed: %s", self._address, exc)

    def ready(self, status: str | None = None) -> None:
        """Tell systemd start-up is finished (``READY=1``), optionally with a status line."""
        if status is None:
            self.notify("READY=1")
        else:
            self.notify("READY=1", _status(status))

    def status(self, text: str) -> None:
        """Set the free-form status shown by ``systemctl status``."""
        self.notify(_status(text))

    def extend_timeout(self, seconds: float, status: str | None = None) -> None:
        """Ask systemd for ``seconds`` more before it gives up on the start
        (``EXTEND_TIMEOUT_USEC``, systemd 236 and later; older ones ignore it)."""
        lines = [f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}"]
        self.notify(*lines, *([_status(status)] if status is not None else []))

    def stopping(self) -> None:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Keep the watchdog from firing (``WATCHDOG=1``)."""
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        """Tell systemd a reload began; send :meth:`ready` when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between :meth:`Notifier.watchdog` calls: half of ``$WATCHDOG_USEC``.

    None when the watchdog is off, meant for another process (``$WATCHDOG_PID``), or the
    variables are malformed.
    """
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and _uint(pid) != os.getpid():
        return None
    usec = _uint(environ.get("WATCHDOG_USEC", ""))
    if not usec:
        return None
    return usec / 2 / 1_000_000


def _uint(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _status(text: str) -> str:
    # A newline would end the assignment and smuggle the rest in as another one.
    return "STATUS=" + text.replace("\n", " ")
