"""supervisor._messages (the CLI's codec for the control API) against the
betterproto2 classes generated from the same control.proto, both ways, for
every message; and what it refuses."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import _messages
from supervisor._messages import DecodeError, Message, decode, new
from supervisor._proto.control_fields import MESSAGES
from supervisor._proto.supervisor import v1 as pb
from supervisor.errors import InvalidArgument

_INTS = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}


def _scalar(kind: str) -> st.SearchStrategy[Any]:
    if kind in _INTS:
        low, high = _INTS[kind]
        return st.one_of(
            st.integers(low, high), st.sampled_from([0, low, high, 1, -1 if low else 2])
        )
    return {
        "string": st.text(max_size=20),
        "bytes": st.binary(max_size=20),
        "bool": st.booleans(),
        "double": st.floats(allow_nan=False),
    }[kind]


def _field_value(kind: str, repeated: bool, depth: int) -> st.SearchStrategy[Any]:
    if kind.startswith("map:"):
        _, key, value = kind.split(":", 2)
        return st.dictionaries(_scalar(key), _scalar(value), max_size=3)
    single = messages(kind[8:], depth + 1) if kind.startswith("message:") else _scalar(kind)
    return st.lists(single, max_size=3) if repeated else single


@st.composite
def _values(draw: st.DrawFn, name: str, depth: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    chosen: dict[str, str | None] = {}
    for field, _number, kind, repeated, oneof in MESSAGES[name]:
        if oneof:
            if oneof not in chosen:
                members = [f for f, _n, _k, _r, o in MESSAGES[name] if o == oneof]
                chosen[oneof] = draw(st.sampled_from([None, *members]))
            if chosen[oneof] != field:
                continue
        elif kind.startswith("message:") and (depth > 2 or draw(st.booleans())):
            continue
        values[field] = draw(_field_value(kind, repeated, depth))
    return values


def messages(name: str, depth: int = 0) -> st.SearchStrategy[Message]:
    return _values(name, depth).map(lambda values: new(name, **values))


def ours(message: Message | None) -> Any:
    """Every field of one of our messages, defaults included, as plain values."""
    if message is None:
        return None
    out = {}
    for field, _number, kind, repeated, _oneof in MESSAGES[message.type_name]:
        value = getattr(message, field)
        if kind.startswith("message:"):
            value = [ours(v) for v in value] if repeated else ours(value)
        out[field] = value
    return out


def theirs(message: Any, name: str) -> Any:
    """The same of a betterproto2 message."""
    if message is None:
        return None
    out = {}
    for field, _number, kind, repeated, _oneof in MESSAGES[name]:
        value = getattr(message, field)
        if kind.startswith("message:"):
            value = [theirs(v, kind[8:]) for v in value] if repeated else theirs(value, kind[8:])
        elif kind.startswith("map:"):
            value = dict(value)
        elif repeated:
            value = list(value)
        out[field] = value
    return out


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_both_ways(name: str) -> None:
    cls = getattr(pb, name)

    @settings(max_examples=60, deadline=None)
    @given(message=messages(name))
    def check(message: Message) -> None:
        data = bytes(message)
        parsed = cls.parse(data)  # betterproto2 reads what we wrote
        assert theirs(parsed, name) == ours(message)
        back = decode(name, bytes(parsed))  # and we read what it writes
        assert ours(back) == ours(message)
        assert decode(name, data) == message

    check()


def test_oneof_member_with_a_default_value_is_sent() -> None:
    data = bytes(new("RunOutput", exit_code=0))
    assert data == b"\x20\x00"
    got = decode("RunOutput", data)
    assert got.exit_code == 0 and got.stdout is None and got.started is None
    assert pb.RunOutput.parse(data).exit_code == 0


def test_defaults_are_not_sent_and_read_as_defaults() -> None:
    message = new("ContainerInfo", id="", pid=0, exited=False, command=[], labels={})
    assert bytes(message) == b""
    got = decode("ContainerInfo", b"")
    assert (got.id, got.pid, got.exited, got.command, got.labels) == ("", 0, False, [], {})
    assert decode("RunRequest", b"").definition is None


def test_later_oneof_member_wins_and_nested_messages_merge() -> None:
    data = bytes(new("RunOutput", stdout=b"x")) + bytes(new("RunOutput", exit_code=3))
    got = decode("RunOutput", data)
    assert got.exit_code == 3 and got.stdout is None
    first = new("RunRequest", definition=new("Definition", id="a", command=["x"]))
    second = new("RunRequest", definition=new("Definition", rootfs="/r", command=["y"]))
    merged = decode("RunRequest", bytes(first) + bytes(second)).definition
    assert (merged.id, merged.rootfs, merged.command) == ("a", "/r", ["x", "y"])


def test_unknown_fields_are_skipped() -> None:
    unknown = (
        b"\xf8\x01\x05" + b"\xfa\x01\x02hi" + b"\xf9\x01" + b"\0" * 8 + b"\xfd\x01" + b"\0" * 4
    )
    got = decode("ContainerRef", unknown + bytes(new("ContainerRef", id="c1")))
    assert got.id == "c1"


def test_packed_and_unpacked_repeated_numbers() -> None:
    # No repeated numbers in the API yet: through the private field table.
    field = _messages._Field("n", 1, "int64", True, "")
    t = _messages._Type("T", [field])
    packed = _messages.Message(t, {"n": [1, -1, 300]})
    data = bytes(packed)
    assert data[0] == 0x0A  # wire type 2: packed
    assert _messages._decode(t, data).n == [1, -1, 300]
    assert _messages._decode(t, b"\x08\x01\x08\x02").n == [1, 2]  # unpacked


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("ContainerRef", b"\x0a\x05ab", "longer than the message|truncated"),
        ("ContainerRef", b"\x0a\x02\xff\xfe", "not UTF-8"),
        ("ContainerRef", b"\x08\x01", "wire type 0"),
        ("ContainerInfo", b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "ten bytes"),
        ("ContainerInfo", b"\x1a\x01x", "wire type 2"),
        ("ContainerRef", b"\x0b", "wire type 3"),
        ("ContainerRef", b"\x02\x00", "field number 0"),
        ("ContainerInfo", b"\x18", "truncated"),
        ("RunOutput", b"\x0a\x03\x0a\x05a", "longer than the message|truncated"),
        ("ContainerInfo", b"\x6a\x04\x0a\x02\xff\xff", "not UTF-8"),  # a label's key
    ],
)
def test_malformed_bytes_are_a_decode_error(name: str, data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode(name, data)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"pids": 2**63}, "pids 9223372036854775808 is out of range"),
        ({"memory": -(2**63) - 1}, "out of range"),
        ({"id": "\udcff"}, "not UTF-8"),
        ({"env": {"A": "\ud800"}}, "not UTF-8"),
    ],
)
def test_values_that_do_not_fit_are_invalid(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        bytes(new("Definition", **fields))


def test_programming_errors_are_type_errors() -> None:
    with pytest.raises(TypeError, match="no field"):
        new("ContainerRef", name="x")
    with pytest.raises(TypeError, match="more than one"):
        new("RunOutput", stdout=b"", exit_code=0)
    with pytest.raises(TypeError, match="no message"):
        new("Nope")
    with pytest.raises(TypeError, match="takes a Definition"):
        bytes(new("RunRequest", definition=new("Mount")))
    with pytest.raises(AttributeError, match="no field"):
        _ = new("ContainerRef").nope


def test_doubles_keep_their_bits() -> None:
    for value in (math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.5):
        got = decode("StopRequest", bytes(new("StopRequest", timeout=value))).timeout
        assert got == value or (math.isnan(got) and math.isnan(value))
    # -0.0 is a default (== 0): not sent, as betterproto2 does too.
    assert bytes(new("StopRequest", timeout=-0.0)) == bytes(pb.StopRequest(timeout=-0.0))
