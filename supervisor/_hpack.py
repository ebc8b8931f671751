"""HPACK (RFC 7541) for the CLI's client: a decoder, and literal encoding.

The hpack package does the same, but imports logging and typing (a third of
what Python takes to start); the CLI decodes a handful of response headers
and trailers per call. tests/unit/test_hpack.py checks this against hpack.
"""

from __future__ import annotations

#: The static table (RFC 7541 Appendix A), from index 1.
STATIC = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)

#: The bit length of the Huffman code of each symbol, 0 to 256 (EOS)
#: (RFC 7541 Appendix B). The code is canonical: the lengths define the codes.
_HUFFMAN_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b08"
    "0606060505050606060606060607080f060c0a0d06070707070707070707070707070707070707070707070807"
    "080d130d0e060f05060506050606060507070606060506070605050607070707070f0b0e0d1c14161414161616"
    "1716171717171718171818161718171717171516171617171816151416161717151716161815161717151516"
    "151716171714161616171616171a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a1c1b1b"
    "1b14181415161515171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e"
)
_EOS = 256
#: The dynamic table size we let the server use: the HTTP/2 default, which we keep.
TABLE_SIZE = 4096


class HpackError(Exception):
    """A header block that does not decode."""


class _Huffman:
    """Canonical decoding tables: per code length, its first code, how many
    codes have it and where their symbols start in ``symbols``."""

    def __init__(self, lengths: bytes) -> None:
        self.symbols = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
        self.count = [0] * 32
        for n in lengths:
            self.count[n] += 1
        self.first = [0] * 32
        self.offset = [0] * 32
        code = offset = 0
        for n in range(1, 32):
            self.first[n] = code
            self.offset[n] = offset
            code = (code + self.count[n]) << 1
            offset += self.count[n]

    def decode(self, data: bytes) -> bytes:
        out = bytearray()
        first, count, offset, symbols = self.first, self.count, self.offset, self.symbols
        code = length = 0
        for byte in data:
            for shift in (7, 6, 5, 4, 3, 2, 1, 0):
                code = (code << 1) | ((byte >> shift) & 1)
                length += 1
                index = code - first[length]
                if index < count[length]:
                    symbol = symbols[offset[length] + index]
                    if symbol == _EOS:
                        raise HpackError("EOS in a Huffman string")
                    out.append(symbol)
                    code = length = 0
                elif length >= 30:
                    raise HpackError("bad Huffman code")
        if length > 7 or code != (1 << length) - 1:
            raise HpackError("bad Huffman padding")
        return bytes(out)


_huffman: _Huffman | None = None


def huffman_decode(data: bytes) -> bytes:
    global _huffman
    if _huffman is None:
        _huffman = _Huffman(_HUFFMAN_LENGTHS)
    return _huffman.decode(data)


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An integer with an N-bit prefix (RFC 7541 5.1) at ``pos``; and where it ends."""
    limit = (1 << prefix) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("an integer over 2**32")


class Decoder:
    """One connection's decoder: its dynamic table lives across header blocks."""

    def __init__(self, max_header_list_size: int = 64 << 10) -> None:
        self.max_header_list_size = max_header_list_size
        self._table: list[tuple[bytes, bytes]] = []  # newest first
        self._size = 0
        self._max_size = TABLE_SIZE

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 1 <= index <= len(STATIC):
            return STATIC[index - 1]
        dynamic = index - len(STATIC) - 1
        if 0 <= dynamic < len(self._table):
            return self._table[dynamic]
        raise HpackError(f"no table entry {index}")

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        self._table.insert(0, (name, value))
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + 32

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        huffman = data[pos] & 0x80
        length, pos = _integer(data, pos, 7)
        if pos + length > len(data):
            raise HpackError("a string past the end of the block")
        raw = data[pos : pos + length]
        return (huffman_decode(raw) if huffman else raw), pos + length

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The header list of one block (names and values as bytes)."""
        try:
            return self._decode(data)
        except IndexError:
            raise HpackError("a truncated header block") from None

    def _decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        total = 0
        pos = 0
        end = len(data)
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed
                index, pos = _integer(data, pos, 7)
                if index == 0:
                    raise HpackError("index 0")
                name, value = self._entry(index)
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                size, pos = _integer(data, pos, 5)
                if size > TABLE_SIZE:
                    raise HpackError(f"a table size of {size} (at most {TABLE_SIZE})")
                self._max_size = size
                self._evict()
                continue
            else:  # a literal: with incremental indexing (01), without (0000), never (0001)
                indexing = byte & 0x40
                index, pos = _integer(data, pos, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                if indexing:
                    self._add(name, value)
            total += len(name) + len(value) + 32
            if total > self.max_header_list_size:
                raise HpackError(f"a header list over {self.max_header_list_size} bytes")
            headers.append((name, value))
        return headers


def _encode_integer(value: int, prefix: int, first: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode(headers: list[tuple[str, str]]) -> bytes:
    """A header block of literals without indexing (nothing for the server to
    remember) and without Huffman coding, the static table's entries aside."""
    out = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        try:
            out += _encode_integer(STATIC.index((n, v)) + 1, 7, 0x80)
            continue
        except ValueError:
            pass
        out += b"\x00" + _encode_integer(len(n), 7, 0) + n + _encode_integer(len(v), 7, 0) + v
    return bytes(out)
