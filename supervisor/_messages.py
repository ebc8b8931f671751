"""The control API's messages for the CLI, without betterproto2.

Importing betterproto2 and the generated ``supervisor._proto.supervisor.v1``
costs a CLI call more than Python's own start-up: importlib.metadata (for
betterproto2's version check), a dataclass per message, and grpclib's client
and server, asyncio and h2 (the generated module holds the service stubs too).
The CLI encodes and decodes its messages here instead: a small proto3 codec
driven by the field table that scripts/gen-protos writes from control.proto
(``supervisor/_proto/control_fields.py``), so it cannot drift from the schema.
tests/unit/test_messages.py checks it against betterproto2, both ways.

::

    request = new("ListRequest", all=True)
    reply = decode("ListResponse", channel.unary(path, bytes(request)))
    for info in reply.containers: info.id, info.labels, ...

A field that was not set (or not sent) reads as its proto3 default: 0, "",
b"", False, [] or {}; a message field or a oneof member reads as None.
"""

from __future__ import annotations

import struct

from ._proto.control_fields import MESSAGES
from .errors import InvalidArgument, SupervisorError

TYPE_CHECKING = False  # typing is not imported at run time: the CLI's start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ("DecodeError", "Message", "decode", "new")


class DecodeError(SupervisorError):
    """The bytes are not a well-formed message of the expected type."""


_VARINTS = frozenset({"int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum"})
_FIXED32 = {"fixed32": "<I", "sfixed32": "<i", "float": "<f"}
_FIXED64 = {"fixed64": "<Q", "sfixed64": "<q", "double": "<d"}
#: Integer kinds: their range, for encoding.
_RANGES = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "enum": (-(1 << 31), (1 << 31) - 1),
    "sint32": (-(1 << 31), (1 << 31) - 1),
    "sfixed32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "fixed32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "sint64": (-(1 << 63), (1 << 63) - 1),
    "sfixed64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
    "fixed64": (0, (1 << 64) - 1),
}
_DEFAULTS: dict[str, Any] = {"string": "", "bytes": b"", "bool": False, "double": 0.0, "float": 0.0}
_MASK64 = (1 << 64) - 1


#: How a field is decoded: _Field.code.
_SCALAR, _STRING, _BYTES, _MESSAGE, _MAP = range(5)


class _Field:
    __slots__ = ("code", "entry", "key", "kind", "map_key", "map_value", "message", "name",
                 "number", "oneof", "repeated", "wire")  # fmt: skip

    def __init__(self, name: str, number: int, kind: str, repeated: bool, oneof: str) -> None:
        self.name = name
        self.number = number
        self.repeated = repeated
        self.oneof = oneof
        self.map_key: _Field | None = None
        self.map_value: _Field | None = None
        self.entry: _Type | None = None
        if kind.startswith("map:"):
            key, value = kind[4:].split(":", 1)
            self.map_key = _Field("key", 1, key, False, "")
            self.map_value = _Field("value", 2, value, False, "")
            self.entry = _Type(f"{name} entry", [self.map_key, self.map_value])
            kind = "map"
        self.kind = kind
        self.message = kind[8:] if kind.startswith("message:") else ""
        self.code = {"string": _STRING, "bytes": _BYTES, "map": _MAP}.get(
            kind, _MESSAGE if self.message else _SCALAR
        )
        if kind in _VARINTS:
            self.wire = 0
        elif kind in _FIXED64:
            self.wire = 1
        elif kind in _FIXED32:
            self.wire = 5
        else:  # string, bytes, message:X, map
            self.wire = 2
        self.key = _varint((number << 3) | self.wire)

    def default(self) -> Any:
        if self.kind == "map":
            return {}
        if self.repeated:
            return []
        if self.oneof or self.message:
            return None
        return _DEFAULTS.get(self.kind, 0)


class _Type:
    __slots__ = ("by_name", "by_number", "fast", "fields", "name", "oneofs")

    def __init__(self, name: str, fields: list[_Field]) -> None:
        self.name = name
        self.fields = sorted(fields, key=lambda f: f.number)
        self.by_name = {f.name: f for f in self.fields}
        self.by_number = {f.number: f for f in self.fields}
        self.oneofs: dict[str, list[str]] = {}
        #: Singular strings and varints outside any oneof, by their key (field
        #: number and the wire type they must come with): decoded without the
        #: general path's checks (~40% of `ps`'s decode of 1000 containers).
        self.fast: dict[int, tuple[str, str]] = {}
        for f in self.fields:
            if f.oneof:
                self.oneofs.setdefault(f.oneof, []).append(f.name)
            elif not f.repeated and (f.code == _STRING or (f.code == _SCALAR and f.wire == 0)):
                self.fast[(f.number << 3) | f.wire] = (f.name, f.kind)


_TYPES: dict[str, _Type] = {}


def _type(name: str) -> _Type:
    found = _TYPES.get(name)
    if found is None:
        if name not in MESSAGES:
            raise TypeError(f"no message {name!r} in supervisor.v1")
        found = _TYPES[name] = _Type(name, [_Field(*row) for row in MESSAGES[name]])
    return found


class Message:
    """One message of supervisor.v1: its fields are attributes."""

    __slots__ = ("_type", "_values")

    def __init__(self, t: _Type, values: dict[str, Any]) -> None:
        self._type = t
        self._values = values

    def __getattr__(self, name: str) -> Any:
        # Only for names that are not slots: the fields.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            pass
        field = self._type.by_name.get(name)
        if field is None:
            raise AttributeError(f"{self._type.name} has no field {name!r}")
        return field.default()

    @property
    def type_name(self) -> str:
        return self._type.name

    def set_fields(self) -> dict[str, Any]:
        """The fields that were set or received, by name."""
        return dict(self._values)

    def received(self) -> Mapping[str, Any]:
        """The same without a copy, to read (fields left out have their defaults)."""
        return self._values

    def __bytes__(self) -> bytes:
        out = bytearray()
        _encode(self, out)
        return bytes(out)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{self._type.name}({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return bytes(self) == bytes(other) and self._type is other._type

    __hash__ = None  # type: ignore[assignment]


def new(type_name: str, /, **fields: Any) -> Message:
    """A message of ``type_name`` with these fields set (None: not set)."""
    t = _type(type_name)
    values = {}
    for name, value in fields.items():
        if name not in t.by_name:
            raise TypeError(f"{type_name} has no field {name!r}")
        if value is not None:
            values[name] = value
    for members in t.oneofs.values():
        if sum(1 for m in members if m in values) > 1:
            raise TypeError(f"{type_name}: more than one of {', '.join(members)}")
    return Message(t, values)


# -- encoding -------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _scalar(field: _Field, value: Any, where: str) -> bytes:
    """The bytes of one scalar value, without its key (with its length for strings)."""
    kind = field.kind
    if kind == "string":
        try:
            data: bytes = value.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(f"{where} is not UTF-8 text") from None
        return _varint(len(data)) + data
    if kind == "bytes":
        return _varint(len(value)) + bytes(value)
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    if kind in ("double", "float"):
        return struct.pack(_FIXED64.get(kind) or _FIXED32[kind], value)
    low, high = _RANGES[kind]
    if not low <= value <= high:
        raise InvalidArgument(f"{where} {value} is out of range ({kind})")
    if kind in _FIXED32:
        return struct.pack(_FIXED32[kind], value)
    if kind in _FIXED64:
        return struct.pack(_FIXED64[kind], value)
    if kind == "sint32":
        return _varint(((value << 1) ^ (value >> 31)) & 0xFFFFFFFF)
    if kind == "sint64":
        return _varint(((value << 1) ^ (value >> 63)) & _MASK64)
    return _varint(value & _MASK64)  # int32 and int64: negatives take ten bytes


def _encode(message: Message, out: bytearray) -> None:
    t = message._type
    values = message._values
    for field in t.fields:
        value = values.get(field.name)
        if value is None:
            continue
        where = f"{t.name}.{field.name}"
        if field.kind == "map":
            assert field.map_key is not None and field.map_value is not None
            for k, v in value.items():
                entry = bytearray()
                _encode_one(field.map_key, k, entry, where)
                _encode_one(field.map_value, v, entry, where)
                out += field.key + _varint(len(entry)) + entry
        elif field.repeated:
            if not value:
                continue
            if field.wire != 2:  # numbers: packed, as proto3 has it
                packed = b"".join(_scalar(field, v, where) for v in value)
                out += _varint((field.number << 3) | 2) + _varint(len(packed)) + packed
            else:
                for v in value:
                    _encode_one(field, v, out, where)
        elif field.oneof or value or field.message:
            _encode_one(field, value, out, where)
        # else: a proto3 default, not sent


def _encode_one(field: _Field, value: Any, out: bytearray, where: str) -> None:
    if field.message:
        if not isinstance(value, Message) or value._type.name != field.message:
            raise TypeError(f"{where} takes a {field.message}, not {value!r}")
        inner = bytes(value)
        out += field.key + _varint(len(inner)) + inner
    else:
        out += field.key + _scalar(field, value, where)


# -- decoding -------------------------------------------------------------------------------


def decode(type_name: str, data: bytes) -> Message:
    """Parse ``data`` as a ``type_name`` (unknown fields are skipped)."""
    try:
        return _decode(_type(type_name), data)
    except (IndexError, struct.error) as exc:
        raise DecodeError(f"malformed {type_name}: truncated ({exc})") from None


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("a varint longer than ten bytes")


def _decode(t: _Type, buf: bytes) -> Message:
    return Message(t, _decode_values(t, buf))


def _decode_values(t: _Type, buf: bytes) -> dict[str, Any]:
    values: dict[str, Any] = {}
    nested: dict[str, bytes] = {}  # a singular message field seen more than once is merged
    pos, end = 0, len(buf)
    by_number = t.by_number
    fast = t.fast
    while pos < end:
        key = buf[pos]  # one byte for field numbers up to 15: the fast path
        if key < 0x80:
            pos += 1
        else:
            key, pos = _read_varint(buf, pos)
        wire = key & 7
        value: Any
        if wire == 2:
            size = buf[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = _read_varint(buf, pos)
            if pos + size > end:
                raise DecodeError(f"malformed {t.name}: a field longer than the message")
            value = buf[pos : pos + size]
            pos += size
            plain = fast.get(key)
            if plain is not None:  # a string
                try:
                    values[plain[0]] = value.decode()
                except UnicodeDecodeError:
                    raise DecodeError(f"malformed {t.name}: {plain[0]} is not UTF-8") from None
                continue
        elif wire == 0:
            value = buf[pos]
            if value < 0x80:
                pos += 1
            else:
                value, pos = _read_varint(buf, pos)
            plain = fast.get(key)
            if plain is not None:
                values[plain[0]] = _from_varint(plain[1], value)
                continue
        elif wire == 1:
            value = buf[pos : pos + 8]
            pos += 8
        elif wire == 5:
            value = buf[pos : pos + 4]
            pos += 4
        else:
            raise DecodeError(f"malformed {t.name}: wire type {wire}")
        if pos > end:
            raise DecodeError(f"malformed {t.name}: truncated")
        field = by_number.get(key >> 3)
        if field is None:
            if key >> 3 == 0:
                raise DecodeError(f"malformed {t.name}: field number 0")
            continue  # unknown: skipped, as proto3 has it
        name = field.name
        code = field.code
        if code == _STRING and wire == 2 and not field.repeated:
            try:
                values[name] = value.decode()
            except UnicodeDecodeError:
                raise DecodeError(f"malformed {t.name}: {name} is not UTF-8") from None
        elif code == _MAP:
            if wire != 2:
                raise DecodeError(f"malformed {t.name}: {name} has wire type {wire}")
            k, v = _map_entry(field, value)
            values.setdefault(name, {})[k] = v
        elif code == _MESSAGE:
            if wire != 2:
                raise DecodeError(f"malformed {t.name}: {name} has wire type {wire}")
            if field.repeated:
                values.setdefault(name, []).append(_decode(_type(field.message), value))
            else:
                nested[name] = nested.get(name, b"") + value
                values[name] = None  # decoded below, once every part is in
        elif field.repeated:
            items = values.setdefault(name, [])
            if wire == 2 and field.wire != 2:  # packed
                items.extend(_packed(t, field, value))
            else:
                items.append(_value(t, field, wire, value))
        else:
            values[name] = _value(t, field, wire, value)
        if field.oneof:
            for other in t.oneofs[field.oneof]:
                if other != name:
                    values.pop(other, None)
                    nested.pop(other, None)
    for name, data in nested.items():
        if name in values:
            values[name] = _decode(_type(t.by_name[name].message), data)
    return values


def _map_entry(field: _Field, data: bytes) -> tuple[Any, Any]:
    assert field.entry is not None and field.map_key is not None and field.map_value is not None
    got = _decode_values(field.entry, data)
    key = got.get("key", field.map_key.default())
    value = got.get("value", field.map_value.default())
    return key, value


def _value(t: _Type, field: _Field, wire: int, raw: Any) -> Any:
    if wire != field.wire:
        raise DecodeError(f"malformed {t.name}: {field.name} has wire type {wire}")
    kind = field.kind
    if wire == 0:
        return _from_varint(kind, raw)
    if kind == "string":
        try:
            return bytes(raw).decode()
        except UnicodeDecodeError:
            raise DecodeError(f"malformed {t.name}: {field.name} is not UTF-8") from None
    if kind == "bytes":
        return bytes(raw)
    fmt = _FIXED64.get(kind) or _FIXED32[kind]
    value: int | float = struct.unpack(fmt, raw)[0]
    return value


def _from_varint(kind: str, value: int) -> Any:
    if kind == "bool":
        return value != 0
    if kind == "uint64":
        return value & _MASK64
    if kind == "uint32":
        return value & 0xFFFFFFFF
    if kind in ("int32", "enum"):
        value &= 0xFFFFFFFF
        return value - (1 << 32) if value >> 31 else value
    if kind == "int64":
        value &= _MASK64
        return value - (1 << 64) if value >> 63 else value
    if kind == "sint32":
        value &= 0xFFFFFFFF
        return (value >> 1) ^ -(value & 1)
    value &= _MASK64  # sint64
    return (value >> 1) ^ -(value & 1)


def _packed(t: _Type, field: _Field, data: bytes) -> list[Any]:
    if field.wire == 0:
        out, pos = [], 0
        while pos < len(data):
            value, pos = _read_varint(data, pos)
            out.append(_from_varint(field.kind, value))
        if pos > len(data):
            raise DecodeError(f"malformed {t.name}: {field.name} is truncated")
        return out
    size = 8 if field.wire == 1 else 4
    if len(data) % size:
        raise DecodeError(f"malformed {t.name}: {field.name} is truncated")
    fmt = _FIXED64.get(field.kind) or _FIXED32[field.kind]
    return [v for (v,) in struct.iter_unpack(fmt, data)]
