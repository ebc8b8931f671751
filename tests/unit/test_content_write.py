"""The WRITE messages the content store's writer encodes by hand."""

import pytest

from supervisor._proto.containerd.services.content import v1 as content_pb
from supervisor.client._content import _write_message


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 1 << 20, 5 << 30])
@pytest.mark.parametrize("length", [1, 300, 1 << 20])  # never 0: no empty WRITE is sent
def test_write_message_is_what_betterproto_encodes(offset: int, length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    message, start = _write_message(offset, length)
    message[start:] = data
    expected = content_pb.WriteContentRequest(
        action=content_pb.WriteAction.WRITE, offset=offset, data=data
    )
    body = bytes(expected)
    assert message == b"\x00" + len(body).to_bytes(4, "big") + body
    assert content_pb.WriteContentRequest.parse(bytes(message[5:])) == expected
