"""The 16-byte little-endian frame header and an incremental frame decoder (sans-IO).

Header: uint32 message id, uint32 total size (header included), uint64 sequence id.
"""
from __future__ import annotations

import struct

HEADER = struct.Struct("<IIQ")
HEADER_SIZE = HEADER.size  # 16
# What the host accepts from us (protocol.md 1.5): larger frames make it kill the bridge.
HOST_MAX_MESSAGE = 0x10000
# What we accept from the host. Go imposes no limit; a Create carries a whole OCI spec, so
# be generous, but a size past this is a corrupt stream, not a message.
DEFAULT_MAX_INBOUND = 64 * 1024 * 1024


class FramingError(Exception):
    """The byte stream cannot be parsed further; the connection must be dropped."""


class Frame:
    """One message: its identifier, sequence id and JSON payload (bytes)."""

    __slots__ = ("ident", "seq", "payload")

    def __init__(self, ident: int, seq: int, payload: bytes) -> None:
        self.ident, self.seq, self.payload = ident, seq, payload

    def __iter__(self):  # unpacks like the (ident, seq, payload) tuple it replaces
        return iter((self.ident, self.seq, self.payload))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"Frame(ident=0x{self.ident:08x}, seq={self.seq}, payload={self.payload!r})"


def encode_frame(ident: int, seq: int, payload: bytes) -> bytes:
    return HEADER.pack(ident, HEADER_SIZE + len(payload), seq) + payload


class FrameDecoder:
    """Feed bytes in, take whole frames out.

    Memory grows only with bytes actually received: a header announcing a huge size
    allocates nothing up front.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_INBOUND) -> None:
        self._buf = bytearray()
        self._max = max_size

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while True:
            avail = len(buf) - pos
            if avail < HEADER_SIZE:
                break
            ident, size, seq = HEADER.unpack_from(buf, pos)
            if size < HEADER_SIZE:
                raise FramingError(f"invalid message size {size} (< {HEADER_SIZE})")
            if size > self._max:
                raise FramingError(f"message size {size} exceeds the limit of {self._max} bytes")
            if avail < size:
                break
            with memoryview(buf) as view:  # one copy; the view is released before buf shrinks
                frames.append(Frame(ident, seq, bytes(view[pos + HEADER_SIZE:pos + size])))
            pos += size
        if pos:
            del buf[:pos]
        return frames

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (EOF here is a clean close)."""
        return not self._buf
