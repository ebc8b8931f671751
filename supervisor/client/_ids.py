from __future__ import annotations

import re

from ..errors import InvalidArgument

MAX_ID_LENGTH = 76
_ID_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


def validate_id(value: str, what: str = "id") -> str:
    """Check ``value`` against containerd's identifier rules, before any call.

    Alphanumerics, with ``.``, ``_`` or ``-`` only between them; 1 to 76
    characters. Raises :class:`InvalidArgument` naming the offending id.
    """
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(
            f"{what} {value[:20]!r}... is {len(value)} characters; the limit is {MAX_ID_LENGTH}"
        )
    if not _ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value!r} is invalid: use letters and digits, with '.', '_' or '-' "
            "only between them"
        )
    return value
