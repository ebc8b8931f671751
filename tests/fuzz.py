"""Shared pieces of the fuzz suite (issue 9): one reproducible hypothesis profile,
strategies for the values users get wrong (ids, paths, sizes, signals, users,
mounts, labels...) and a TOML writer for generated definition and config files.

Every run is the same run: examples are derandomized and no database is kept,
so CI sees exactly what a developer sees. ``SUPERVISOR_FUZZ_SCALE=10`` runs ten
times as many examples (a longer local hunt; still deterministic).
"""

from __future__ import annotations

import json
import math
import os
import signal
import string
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("SUPERVISOR_FUZZ_SCALE", "1"))

#: The reserved label prefix (labels under it are the daemon's own).
PREFIX = "io.containerd-supervisor/"


def fuzz_settings(examples: int) -> settings:
    """``examples`` (times the scale), deterministic, no deadline, no database."""
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


class Counter:
    """How many generated inputs a test really threw (hypothesis may stop early)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


# -- text ------------------------------------------------------------------------

#: Characters that break naive parsing: separators, quotes, escapes, whitespace,
#: NUL and other controls, non-ASCII digits and letters, an emoji.
ODD_CHARS = ":=/.-_ \t\n\r\0\x7f\"'\\$*?[]{}#,;|&<>~`!@%^()+²٣é\u200b\u2028\U0001d7d8ß😀"

ALNUM = string.ascii_letters + string.digits

any_text = st.text(max_size=16)
odd_text = st.text(alphabet=ODD_CHARS, max_size=8)
ascii_word = st.text(alphabet=ALNUM, min_size=1, max_size=12)
texts = st.one_of(any_text, odd_text, ascii_word)

# -- ids ---------------------------------------------------------------------------

#: Valid ids (letters and digits, '.', '_' or '-' between them), of every length
#: up to past the limit of 76.
valid_ids = st.builds(
    lambda words, seps: "".join(w + s for w, s in zip(words, seps, strict=False)) + words[-1],
    st.lists(st.text(alphabet=ALNUM, min_size=1, max_size=30), min_size=1, max_size=3),
    st.lists(st.sampled_from("._-"), max_size=2),
)
ids = st.one_of(
    valid_ids,
    st.integers(1, 200).map(lambda n: "a" * n),  # around the 76 limit
    st.sampled_from(["", "-a", "a-", "a..b", "a/b", "../x", ".", "..", "a b", "A_1.b-2"]),
    texts,
)

# -- paths -----------------------------------------------------------------------

odd_paths = st.one_of(
    st.sampled_from(
        [
            "",
            "/",
            "//",
            ".",
            "..",
            "relative/dir",
            "/nonexistent/really",
            "/tmp/\0nul",
            "/proc/self/../self",
            "/dev/null",
            "/etc/passwd",
        ]
    ),
    # Names past NAME_MAX (255), paths past PATH_MAX (4096): built, so that the
    # strategy's repr (which hypothesis computes) stays short.
    st.integers(250, 300).map(lambda n: "/" + "x" * n),
    st.integers(2040, 2060).map(lambda n: "/d" * n),
    texts.map(lambda t: "/" + t),
    texts,
)


def paths(*good: str) -> st.SearchStrategy[str]:
    """Mostly ``good`` paths (so that the other keys are reached), or odd ones."""
    if not good:
        return odd_paths
    return st.one_of(st.sampled_from(good), st.sampled_from(good), odd_paths)


# -- sizes, numbers ----------------------------------------------------------------

INT64_MAX = 2**63 - 1

size_strings = st.one_of(
    st.sampled_from(
        [
            "1k",
            "-1",
            "0",
            "1",
            "4m",
            "64m",
            "1.5g",
            "1.5",
            "1e5",
            "9999999999999g",
            "9999999999999999999999t",
            "10MiB",
            "10 mb",
            " 10m ",
            "10x",
            "m",
            "",
            "0x10",
            "1_000",
            "\u0661\u0660m"  # Arabic-Indic digits,
            "nan",
            "inf",
        ]
    ),
    st.integers(4290, 4310).map(lambda n: "9" * n),  # Python's int() limit: 4300 digits
    st.builds(
        lambda n, unit: f"{n}{unit}",
        st.one_of(st.integers(-5, 10**20), st.decimals(allow_nan=True, places=3)),
        st.sampled_from(["", "b", "k", "m", "g", "t", "K", "MiB", "gb", "p", "kk"]),
    ),
    texts,
)
big_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, INT64_MAX, INT64_MAX + 1, 2**64, -(2**63), 10**400]),
)
odd_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 0.001, 0.01, 1.5, 1e300, math.inf, -math.inf, math.nan]),
)
sizes: st.SearchStrategy[Any] = st.one_of(size_strings, big_ints)

# -- signals, users, restart policies --------------------------------------------

signal_names = st.sampled_from([s.name for s in signal.Signals])
signal_strings = st.one_of(
    signal_names,
    signal_names.map(lambda n: n.removeprefix("SIG")),
    signal_names.map(str.lower),
    st.sampled_from(["", "SIG", "SIGFOO", "0", "15", "-9", "99", "9" * 30, "²", " TERM ", "9\n"]),
    st.integers(-5, 100).map(str),
    texts,
)
signal_numbers = st.one_of(st.integers(-5, 100), big_ints)

users = st.one_of(
    st.sampled_from(
        [
            "0:0",
            "0",
            "1000",
            "1000:1001",
            "65534:65534",
            "root",
            "root:root",
            "nobody",
            "nobody:nogroup",
            "app:staff",
            "missing",
            "root:missing",
            "a:b:c",
            ":",
            ":0",
            "0:",
            "",
            " 0",
            "-1",
            "99999999999999999999",
            "4294967296:0",
        ]
    ),
    st.builds(lambda a, b: f"{a}:{b}", st.integers(0, 2**33), st.integers(0, 2**33)),
    texts,
)

restarts = st.one_of(
    st.sampled_from(
        [
            "no",
            "always",
            "on-failure",
            "on-failure:5",
            "on-failure:0",
            "on-failure:-1",
            "on-failure:" + "9" * 30,
            "unless-stopped",
            "ALWAYS",
            " always ",
            "always:3",
            "on-failure:",
            "on-failure:²",
            "",
        ]
    ),
    texts,
)

# -- maps: env and labels ---------------------------------------------------------

map_keys = st.one_of(
    st.sampled_from(["", "=", "a=b", "PATH", "LANG", PREFIX + "managed", PREFIX, "io.example/x"]),
    st.just(PREFIX).flatmap(lambda p: texts.map(lambda t: p + t)),
    texts,
)
string_maps = st.dictionaries(map_keys, texts, max_size=4)

# -- TOML -------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string: controls and non-printables escaped."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable() and char not in "\x7f":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """One value as TOML (tables inline); anything this writes parses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_document(table: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in table.items())


#: Any TOML value: scalars of every type, arrays, inline tables.
toml_scalars = st.one_of(
    texts,
    big_ints,
    odd_floats,
    st.booleans(),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(map_keys, inner, max_size=3)
    ),
    max_leaves=6,
)


def table_of(
    keys: dict[str, st.SearchStrategy[Any]], *, most: int | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """A table with some of ``keys`` (at most ``most``), each with its edge
    values or, one time in four, any TOML value; now and then an unknown key."""

    def value(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(strategy, strategy, strategy, toml_values)

    strategies = {k: value(s) for k, s in keys.items()}
    if most is None:
        known = st.fixed_dictionaries({}, optional=strategies)
    else:
        known = st.lists(st.sampled_from(sorted(keys)), max_size=most, unique=True).flatmap(
            lambda chosen: st.fixed_dictionaries({k: strategies[k] for k in chosen})
        )
    extra = st.one_of(
        st.just({}), st.just({}), st.just({}), st.dictionaries(map_keys, toml_values, max_size=1)
    )
    return st.builds(lambda a, b: {**b, **a}, known, extra)


def mangled(text: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """Document text made broken: a byte cut, doubled or replaced; raw bytes."""

    def mangle(doc: str, where: float, how: int, byte: int) -> bytes:
        data = doc.encode()
        at = int(where * len(data))
        edits: list[Callable[[bytes], bytes]] = [
            lambda d: d[:at] + d[at + 1 :],
            lambda d: d[:at] + d[at : at + 1] * 2 + d[at + 1 :],
            lambda d: d[:at] + bytes([byte]) + d[at + 1 :],
            lambda d: d[:at],
        ]
        return edits[how](data)

    return st.one_of(
        st.builds(mangle, text, st.floats(0, 1), st.integers(0, 3), st.integers(0, 255)),
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
    )


def jsonable(value: Any) -> bool:
    """Whether ``value`` encodes as strict JSON (no NaN, no infinities)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
