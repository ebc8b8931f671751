"""supervisor._hpack (the CLI's HPACK) against the hpack package, both ways."""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import _hpack


def test_static_table_is_rfc_7541s() -> None:
    assert list(_hpack.STATIC) == list(HeaderTable.STATIC_TABLE)


def test_huffman_code_is_rfc_7541s() -> None:
    assert list(_hpack._HUFFMAN_LENGTHS) == list(REQUEST_CODES_LENGTH)
    huffman = _hpack._Huffman(_hpack._HUFFMAN_LENGTHS)
    # Every symbol's code, rebuilt from the lengths, is the RFC's.
    for symbol in range(256):
        bits = format(REQUEST_CODES[symbol], f"0{REQUEST_CODES_LENGTH[symbol]}b")
        bits += "1" * (-len(bits) % 8)  # EOS padding
        data = int(bits, 2).to_bytes(len(bits) // 8, "big")
        assert huffman.decode(data) == bytes((symbol,))


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60
) | st.sampled_from(["", "application/grpc", "200", "0", "grpc-status", "caf%C3%A9", "x" * 300])
header_lists = st.lists(
    st.tuples(
        st.sampled_from([":status", "content-type", "grpc-status", "grpc-message", "x-custom"])
        | header_text.filter(bool).map(str.lower),
        header_text,
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    blocks=st.lists(header_lists, min_size=1, max_size=5),
    huffman=st.booleans(),
    table_size=st.sampled_from([4096, 256, 0]),
)
def test_decodes_what_hpack_encodes(
    blocks: list[list[tuple[str, str]]], huffman: bool, table_size: int
) -> None:
    # One connection: the dynamic table carries over from block to block.
    encoder = hpack.Encoder()
    encoder.header_table_size = table_size
    decoder = _hpack.Decoder()
    for headers in blocks:
        block = encoder.encode(headers, huffman=huffman)
        expected = [(k.encode(), v.encode()) for k, v in headers]
        assert decoder.decode(block) == expected


@settings(max_examples=200, deadline=None)
@given(headers=header_lists)
def test_hpack_decodes_what_we_encode(headers: list[tuple[str, str]]) -> None:
    decoded = hpack.Decoder().decode(_hpack.encode(headers))
    assert [(str(k), str(v)) for k, v in decoded] == headers


def test_never_indexed_and_without_indexing() -> None:
    encoder = hpack.Encoder()
    block = encoder.encode([hpack.NeverIndexedHeaderTuple("secret", "x"), ("a", "b")])
    assert _hpack.Decoder().decode(block) == [(b"secret", b"x"), (b"a", b"b")]


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (b"\x80", "index 0"),
        (b"\xff\x00", "no table entry"),  # 127: past the static table, nothing dynamic
        (b"\x3f\xe2\x1f", "table size"),  # a size update to 4097
        (b"\x40\x85", "truncated|past the end"),
        (b"\x00\x81\xff\x00", "Huffman"),  # a Huffman string of all ones: EOS
        (b"\x00\x81\x00\x00", "padding"),  # zeros where the padding's ones go
        (b"\x0f", "truncated"),
        (b"\x7f\xff\xff\xff\xff\xff\x7f", "over 2\\*\\*32"),
    ],
)
def test_malformed_blocks(block: bytes, match: str) -> None:
    with pytest.raises(_hpack.HpackError, match=match):
        _hpack.Decoder().decode(block)


def test_header_list_size_is_capped() -> None:
    block = hpack.Encoder().encode([("x", "y" * 2000)] * 5)
    with pytest.raises(_hpack.HpackError, match="header list over"):
        _hpack.Decoder(max_header_list_size=4096).decode(block)


def test_eviction_follows_the_table_size() -> None:
    encoder = hpack.Encoder()
    decoder = _hpack.Decoder()
    for i in range(200):  # far more than 4096 bytes of entries: older ones are evicted
        headers = [(f"name-{i % 17}", f"value-{i}" * (i % 5 + 1))]
        assert decoder.decode(encoder.encode(headers)) == [
            (k.encode(), v.encode()) for k, v in headers
        ]
    assert decoder._size <= _hpack.TABLE_SIZE
