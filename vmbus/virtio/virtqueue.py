"""Split virtqueues (virtio 1.x, section 2.7) over GuestMemory, device side.

The driver (the guest) offers buffer chains in the avail ring; the device takes them with
`pop()`, and returns them with `push_used()`. Chains are validated: every descriptor must lie
in guest memory, a chain may not loop or exceed the queue size, indirect descriptors must be
well-formed. Bad chains raise VirtqueueError; the caller logs and skips them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from vmbus.virtio.memory import GuestMemory, GuestMemoryError

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT = 1, 2, 4
MAX_QUEUE_SIZE = 32768


class VirtqueueError(Exception):
    pass


@dataclass
class Buffer:
    addr: int
    length: int
    writable: bool


@dataclass
class Chain:
    head: int
    buffers: list[Buffer]

    def readable(self) -> list[Buffer]:
        return [b for b in self.buffers if not b.writable]

    def writable(self) -> list[Buffer]:
        return [b for b in self.buffers if b.writable]


class Virtqueue:
    def __init__(self, memory: GuestMemory, size: int, desc: int, avail: int, used: int,
                 last_avail: int = 0) -> None:
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"invalid queue size {size}")
        self.memory = memory
        self.size = size
        self.desc, self.avail, self.used = desc, avail, used
        self.last_avail = last_avail & 0xFFFF
        self.used_idx = self._u16(used + 2)
        # the rings themselves must be in guest memory
        for addr, length in ((desc, 16 * size), (avail, 4 + 2 * size), (used, 4 + 8 * size)):
            self._check(addr, length)

    def _check(self, addr: int, length: int) -> None:
        try:
            self.memory.view(addr, length)
        except GuestMemoryError as err:
            raise VirtqueueError(str(err)) from None

    def _u16(self, addr: int) -> int:
        return struct.unpack("<H", self.memory.read(addr, 2))[0]

    def pending(self) -> int:
        return (self._u16(self.avail + 2) - self.last_avail) & 0xFFFF

    def pop(self) -> Chain | None:
        """The next offered chain, or None. Raises VirtqueueError for a bad chain (which is
        then consumed, so one bad chain cannot wedge the queue)."""
        avail_idx = self._u16(self.avail + 2)
        if avail_idx == self.last_avail:
            return None
        if (avail_idx - self.last_avail) & 0xFFFF > self.size:
            raise VirtqueueError(f"avail index jumped by more than the queue size ({avail_idx}, {self.last_avail})")
        slot = self.last_avail % self.size
        head = self._u16(self.avail + 4 + 2 * slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if head >= self.size:
            raise VirtqueueError(f"descriptor head {head} out of range")
        return Chain(head, self._walk(self.desc, self.size, head, allow_indirect=True))

    def _walk(self, table: int, count: int, index: int, allow_indirect: bool) -> list[Buffer]:
        buffers: list[Buffer] = []
        seen = 0
        while True:
            if index >= count:
                raise VirtqueueError(f"descriptor index {index} out of range")
            addr, length, flags, nxt = DESC.unpack(self.memory.read(table + 16 * index, 16))
            seen += 1
            if seen > count:
                raise VirtqueueError("descriptor chain loops")
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not allow_indirect or flags & VIRTQ_DESC_F_NEXT or length % 16 or length == 0:
                    raise VirtqueueError("malformed indirect descriptor")
                self._check(addr, length)
                buffers += self._walk(addr, length // 16, 0, allow_indirect=False)
            else:
                if length:
                    self._check(addr, length)
                buffers.append(Buffer(addr, length, bool(flags & VIRTQ_DESC_F_WRITE)))
            if not flags & VIRTQ_DESC_F_NEXT:
                return buffers
            index = nxt

    def push_used(self, head: int, written: int) -> None:
        slot = self.used_idx % self.size
        self.memory.write(self.used + 4 + 8 * slot, struct.pack("<II", head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.memory.write(self.used + 2, struct.pack("<H", self.used_idx))  # after the element: the guest reads idx last

    def gather(self, buffers: list[Buffer], limit: int | None = None) -> bytearray:
        out = bytearray()
        for b in buffers:
            out += self.memory.view(b.addr, b.length)
            if limit is not None and len(out) >= limit:
                del out[limit:]
                break
        return out

    def scatter(self, buffers: list[Buffer], data: bytes) -> int:
        """Copy data into the writable buffers; returns how much fit."""
        view = memoryview(data)
        done = 0
        for b in buffers:
            if not view:
                break
            n = min(b.length, len(view))
            self.memory.write(b.addr, view[:n])
            view = view[n:]
            done += n
        return done
