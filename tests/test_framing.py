import struct

import pytest

from gcs.protocol.framing import HEADER_SIZE, Frame, FrameDecoder, FramingError, encode_frame


def test_header_layout_is_little_endian_with_total_size():
    data = encode_frame(0x10100B01, 0x0102030405060708, b'{"a":1}\n')
    assert data[:16] == bytes.fromhex("010b1010") + struct.pack("<I", 16 + 8) + bytes.fromhex("0807060504030201")
    assert data[16:] == b'{"a":1}\n'


def test_decoder_byte_by_byte():
    frames = [encode_frame(0x10100101 + i, i, b"x" * i) for i in range(5)]
    dec = FrameDecoder()
    out = []
    for byte in b"".join(frames):
        out += dec.feed(bytes([byte]))
    assert out == [Frame(0x10100101 + i, i, b"x" * i) for i in range(5)]
    assert dec.at_boundary()


def test_decoder_many_frames_in_one_chunk_and_partial_tail():
    data = encode_frame(1, 1, b"a") + encode_frame(2, 2, b"bb") + encode_frame(3, 3, b"ccc")[:10]
    dec = FrameDecoder()
    assert dec.feed(data) == [Frame(1, 1, b"a"), Frame(2, 2, b"bb")]
    assert not dec.at_boundary()
    assert dec.feed(encode_frame(3, 3, b"ccc")[10:]) == [Frame(3, 3, b"ccc")]


def test_empty_payload_is_valid():
    assert FrameDecoder().feed(struct.pack("<IIQ", 5, 16, 9)) == [Frame(5, 9, b"")]


@pytest.mark.parametrize("size", [0, 1, 15])
def test_size_below_header_is_fatal(size):
    with pytest.raises(FramingError, match="invalid message size"):
        FrameDecoder().feed(struct.pack("<IIQ", 0x10100101, size, 0))


def test_huge_size_is_rejected_before_any_allocation():
    dec = FrameDecoder(max_size=1 << 20)
    with pytest.raises(FramingError, match="exceeds"):
        dec.feed(struct.pack("<IIQ", 0x10100101, 0xFFFFFFFF, 0))


def test_large_size_within_limit_buffers_only_what_arrived():
    dec = FrameDecoder()
    assert dec.feed(struct.pack("<IIQ", 0x10100101, 50_000_000, 0) + b"x" * 100) == []
    assert dec.buffered == HEADER_SIZE + 100
