"""Names a package loads on first use (PEP 562), so that what a caller never
touches costs it no import."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def load(namespace: dict[str, Any], where: Mapping[str, str], name: str) -> Any:
    """``name`` from the module ``where`` says (relative to the package whose
    globals are ``namespace``), kept in those globals for the next use."""
    module = where.get(name)
    package = namespace["__name__"]
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, package), name)
    namespace[name] = value
    return value
