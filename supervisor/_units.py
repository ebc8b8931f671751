"""Byte sizes ("64m", "1.5g") and signals ("TERM", "SIGKILL", "9") as people write
them: shared by the daemon's config, the definitions, the control API and the
command line, which must not import the rest to parse one."""

from __future__ import annotations

import re
import signal
from decimal import Decimal

from .errors import InvalidArgument

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
#: The runtime's numbers are int64.
MAX_SIZE = 2**63 - 1
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: int | str) -> int:
    """A positive byte count from an int or a string such as ``"512k"`` or ``"1.5g"``.

    Units are binary (k = 1024) and case-insensitive, optionally followed by
    ``b`` or ``ib`` (``"10MiB"``); a bare number is bytes. Raises
    :class:`InvalidArgument` for anything else, zero, a negative size or one
    past 2**63 - 1 bytes (the runtime's limit).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(f"size must be an integer or a string, not {_describe(value)}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise InvalidArgument(
                f"size {value!r} is not a number of bytes with an optional k, m, g or t suffix"
            )
        exact = Decimal(match[1]) * _UNITS[(match[2] or "").lower()]
        if exact != exact.to_integral_value():
            raise InvalidArgument(f"size {value!r} is not a whole number of bytes")
        size = int(exact)
    if size <= 0:
        raise InvalidArgument(f"size {_short(value)} must be positive")
    if size > MAX_SIZE:
        raise InvalidArgument(f"size {_short(value)} is too large (at most {MAX_SIZE} bytes)")
    return size


def parse_signal(value: str) -> int:
    """A signal's number from its name (``TERM``, ``SIGTERM``, any case) or
    number; :class:`InvalidArgument` for anything else."""
    text = value.strip().upper()
    if text.isascii() and text.isdigit():
        if int(text) not in signal.valid_signals():
            raise InvalidArgument(f"{value!r} is not a signal number")
        return int(text)
    name = text if text.startswith("SIG") else f"SIG{text}"
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {value!r}") from None


def _short(value: object) -> str:
    """A value for a message: its repr, cut when long (a 4000-digit integer)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)} characters)"


def _describe(value: object) -> str:
    names = {bool: "a boolean", float: "a float", list: "an array", dict: "a table"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)
