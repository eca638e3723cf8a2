"""The vhost-user backend's sans-IO pieces against guest memory laid out by hand in a memfd
(as QEMU shares it): guest memory bounds, split virtqueues, vsock packets, bad input."""
import mmap
import os
import struct

import pytest

from vmbus.virtio.memory import GuestMemory, GuestMemoryError, Region
from vmbus.virtio.virtqueue import (VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, Virtqueue,
                                    VirtqueueError)
from vmbus.vsock.packet import HEADER_SIZE, OP_REQUEST, OP_RW, Packet, PacketError

GPA = 0x100000          # guest-physical base of the region
QVA = 0x7F0000000000    # the front-end's virtual address of the same region
SIZE = 1 << 20
QSIZE = 8
DESC, AVAIL, USED = GPA, GPA + 0x1000, GPA + 0x2000
DATA = GPA + 0x10000


@pytest.fixture
def mem():
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    mapping = mmap.mmap(fd, SIZE)
    os.close(fd)
    m = GuestMemory()
    m.add(Region(GPA, SIZE, QVA, mapping))
    yield m
    m.clear()


def put_desc(mem, index, addr, length, flags=0, nxt=0, table=DESC):
    mem.write(table + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))


def offer(mem, heads, start=0):
    for i, head in enumerate(heads):
        mem.write(AVAIL + 4 + 2 * ((start + i) % QSIZE), struct.pack("<H", head))
    mem.write(AVAIL + 2, struct.pack("<H", start + len(heads)))


def queue(mem):
    return Virtqueue(mem, QSIZE, mem.translate_user(QVA + (DESC - GPA)), AVAIL, USED)


def test_memory_bounds_and_translation(mem):
    mem.write(DATA, b"hello")
    assert mem.read(DATA, 5) == b"hello"
    assert mem.translate_user(QVA + 0x10) == GPA + 0x10
    for gpa, n in ((GPA - 1, 2), (GPA + SIZE - 1, 2), (0, 1), (GPA, -1)):
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, n)
    with pytest.raises(GuestMemoryError):
        mem.translate_user(QVA + SIZE)
    with pytest.raises(GuestMemoryError):
        mem.add(Region(GPA + 4096, 4096, 0, bytearray(4096)))  # overlaps


def test_chain_with_readable_and_writable_parts(mem):
    put_desc(mem, 0, DATA, 4, VIRTQ_DESC_F_NEXT, 3)
    put_desc(mem, 3, DATA + 100, 6, VIRTQ_DESC_F_WRITE)
    mem.write(DATA, b"abcd")
    offer(mem, [0])
    q = queue(mem)
    assert q.pending() == 1
    chain = q.pop()
    assert chain.head == 0 and [b.length for b in chain.buffers] == [4, 6]
    assert q.gather(chain.readable()) == b"abcd"
    assert q.scatter(chain.writable(), b"0123456789") == 6
    assert mem.read(DATA + 100, 6) == b"012345"
    q.push_used(chain.head, 6)
    assert struct.unpack("<HH", mem.read(USED, 4))[1] == 1
    assert struct.unpack("<II", mem.read(USED + 4, 8)) == (0, 6)
    assert q.pop() is None


def test_indirect_descriptors(mem):
    table = DATA + 0x800
    put_desc(mem, 0, DATA, 2, VIRTQ_DESC_F_NEXT, 1, table=table)
    put_desc(mem, 1, DATA + 2, 2, 0, 0, table=table)
    put_desc(mem, 0, table, 32, VIRTQ_DESC_F_INDIRECT)
    mem.write(DATA, b"wxyz")
    offer(mem, [0])
    q = queue(mem)
    assert q.gather(q.pop().buffers) == b"wxyz"


@pytest.mark.parametrize("setup", ["outside", "too_long", "loop", "head_range", "bad_indirect", "nested_indirect"])
def test_bad_chains_are_refused_and_consumed(mem, setup):
    if setup == "outside":
        put_desc(mem, 0, 0x10, 16)                              # descriptor points outside guest memory
    elif setup == "too_long":
        put_desc(mem, 0, GPA + SIZE - 8, 64)                    # length runs past the end of memory
    elif setup == "loop":
        put_desc(mem, 0, DATA, 1, VIRTQ_DESC_F_NEXT, 1)
        put_desc(mem, 1, DATA, 1, VIRTQ_DESC_F_NEXT, 0)
    elif setup == "head_range":
        pass
    elif setup == "bad_indirect":
        put_desc(mem, 0, DATA, 17, VIRTQ_DESC_F_INDIRECT)       # not a multiple of 16
    else:
        table = DATA + 0x800
        put_desc(mem, 0, table, 16, VIRTQ_DESC_F_INDIRECT, table=table)
        put_desc(mem, 0, table, 16, VIRTQ_DESC_F_INDIRECT)
    offer(mem, [QSIZE + 3 if setup == "head_range" else 0])
    q = queue(mem)
    with pytest.raises(VirtqueueError):
        q.pop()
    assert q.pop() is None  # consumed: a bad chain does not wedge the queue


def test_rings_outside_memory_and_bad_sizes(mem):
    with pytest.raises(VirtqueueError):
        Virtqueue(mem, QSIZE, 0x10, AVAIL, USED)
    with pytest.raises(VirtqueueError):
        Virtqueue(mem, 12, DESC, AVAIL, USED)  # not a power of two


def test_avail_index_jump_is_refused(mem):
    mem.write(AVAIL + 2, struct.pack("<H", QSIZE + 5))
    with pytest.raises(VirtqueueError):
        queue(mem).pop()


def test_packets_round_trip_and_length_checks():
    p = Packet(3, 2, 1234, 1073741824, OP_REQUEST, buf_alloc=65536, fwd_cnt=7)
    assert len(p.pack()) == HEADER_SIZE
    assert Packet.parse(p.pack(), 65536) == p
    rw = Packet(3, 2, 1, 2, OP_RW, payload=b"data")
    assert Packet.parse(rw.pack(), 65536).payload == b"data"
    lying = bytearray(rw.pack())
    struct.pack_into("<I", lying, 24, 1000)  # header says 1000 bytes, 4 follow
    with pytest.raises(PacketError):
        Packet.parse(bytes(lying), 65536)
    with pytest.raises(PacketError):
        Packet.parse(rw.pack(), 2)          # larger than the backend accepts
    with pytest.raises(PacketError):
        Packet.parse(b"short", 65536)
