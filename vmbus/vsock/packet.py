"""The virtio-vsock packet header (virtio 1.2, 5.10.6): 44 bytes, little-endian."""
from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = HEADER.size  # 44
TYPE_STREAM = 1
OP_INVALID, OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(8)
SHUTDOWN_RCV, SHUTDOWN_SEND = 1, 2
HOST_CID = 2


class PacketError(Exception):
    pass


@dataclass
class Packet:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    op: int
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0
    payload: bytes = b""
    type: int = TYPE_STREAM

    def pack(self) -> bytes:
        return HEADER.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, len(self.payload), self.type,
                           self.op, self.flags, self.buf_alloc, self.fwd_cnt) + self.payload

    @classmethod
    def parse(cls, data: bytes, max_payload: int) -> "Packet":
        if len(data) < HEADER_SIZE:
            raise PacketError(f"packet of {len(data)} bytes is shorter than the header")
        src_cid, dst_cid, src_port, dst_port, length, typ, op, flags, buf_alloc, fwd_cnt = HEADER.unpack_from(data)
        if length > max_payload or HEADER_SIZE + length > len(data):
            raise PacketError(f"payload length {length} exceeds the buffer ({len(data) - HEADER_SIZE} bytes)")
        return cls(src_cid, dst_cid, src_port, dst_port, op, flags, buf_alloc, fwd_cnt,
                   bytes(data[HEADER_SIZE:HEADER_SIZE + length]), typ)

    def key(self) -> tuple[int, int]:
        """(guest port, host port) from the guest's point of view."""
        return self.src_port, self.dst_port
