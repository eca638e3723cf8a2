"""A stand-in for QEMU plus a guest's virtio-vsock driver, for testing the vhost-user-vsock
back-end without a VM: shared memfd memory, eventfds, the vhost-user message sequence QEMU
sends, split rings laid out in guest memory, RX buffers posted like the Linux driver does.
(The real guest kernel driver is exercised by the QEMU tests; this drives the back-end's
every code path deterministically, including malformed descriptors.)"""
import array
import mmap
import os
import select
import socket
import struct

from vmbus import vhost_user as vu
from vmbus.vsock.packet import HEADER_SIZE, Packet

MEM_SIZE = 4 << 20
QVA = 0x7F0000000000
QSIZE = 16
RING = {0: 0x1000, 1: 0x3000}          # desc at base, avail at base+0x400, used at base+0x800
RX_BUFS, TX_BUFS = 0x10000, 0x100000   # data areas
BUF_SIZE = 4096 + HEADER_SIZE


class FakeGuest:
    def __init__(self, socket_path: str, cid: int = 3) -> None:
        self.cid = cid
        fd = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(fd, MEM_SIZE)
        self.mem = mmap.mmap(fd, MEM_SIZE)
        self.memfd = fd
        self.kick = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
        self.call = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(2)]
        self.avail_idx = [0, 0]
        self.used_seen = [0, 0]
        self.tx_next = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_path)
        self._handshake()
        for i in range(QSIZE):
            self._post_rx(i)
        self._kick(0)

    # --- vhost-user front-end ---------------------------------------------------------------
    def _send(self, request: int, payload: bytes = b"", fds=()) -> None:
        data = struct.pack("<III", request, vu.VERSION, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def _reply(self) -> bytes:
        header = self.sock.recv(12, socket.MSG_WAITALL)
        size = struct.unpack("<III", header)[2]
        return self.sock.recv(size, socket.MSG_WAITALL) if size else b""

    def _handshake(self) -> None:
        self._send(vu.GET_FEATURES)
        self._reply()
        self._send(vu.SET_PROTOCOL_FEATURES, struct.pack("<Q", vu.PROTOCOL_F_CONFIG))
        self._send(vu.SET_OWNER)
        self._send(vu.GET_CONFIG, struct.pack("<III", 0, 8, 0) + bytes(8))
        assert struct.unpack_from("<IIIQ", self._reply())[3] == self.cid
        self._send(vu.SET_FEATURES, struct.pack("<Q", vu.VIRTIO_F_VERSION_1 | vu.VHOST_USER_F_PROTOCOL_FEATURES))
        self._send(vu.SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, MEM_SIZE, QVA, 0),
                   [self.memfd])
        for q in (0, 1):
            base = RING[q]
            self._send(vu.SET_VRING_NUM, struct.pack("<II", q, QSIZE))
            self._send(vu.SET_VRING_BASE, struct.pack("<II", q, 0))
            self._send(vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", q, 0, QVA + base, QVA + base + 0x800,
                                                      QVA + base + 0x400, 0))
            self._send(vu.SET_VRING_KICK, struct.pack("<Q", q), [self.kick[q]])
            self._send(vu.SET_VRING_CALL, struct.pack("<Q", q), [self.call[q]])
            self._send(vu.SET_VRING_ENABLE, struct.pack("<II", q, 1))

    # --- the driver -------------------------------------------------------------------------
    def _desc(self, q: int, index: int, addr: int, length: int, flags: int) -> None:
        struct.pack_into("<QIHH", self.mem, RING[q] + 16 * index, addr, length, flags, 0)

    def _offer(self, q: int, head: int) -> None:
        avail = RING[q] + 0x400
        struct.pack_into("<H", self.mem, avail + 4 + 2 * (self.avail_idx[q] % QSIZE), head)
        self.avail_idx[q] = (self.avail_idx[q] + 1) & 0xFFFF
        struct.pack_into("<H", self.mem, avail + 2, self.avail_idx[q])

    def _kick(self, q: int) -> None:
        os.eventfd_write(self.kick[q], 1)

    def _post_rx(self, index: int) -> None:
        self._desc(0, index, RX_BUFS + index * BUF_SIZE, BUF_SIZE, 2)  # WRITE
        self._offer(0, index)

    def send(self, pkt: Packet) -> None:
        index = self.tx_next % QSIZE
        self.tx_next += 1
        data = pkt.pack()
        self.mem[TX_BUFS + index * 65600:TX_BUFS + index * 65600 + len(data)] = data
        self._desc(1, index, TX_BUFS + index * 65600, len(data), 0)
        self._offer(1, index)
        self._kick(1)

    def send_raw_desc(self, addr: int, length: int, flags: int = 0) -> None:
        index = self.tx_next % QSIZE
        self.tx_next += 1
        self._desc(1, index, addr, length, flags)
        self._offer(1, index)
        self._kick(1)

    def recv(self, timeout: float = 5.0) -> list[Packet]:
        """Packets the device put in RX buffers (waits for the call eventfd)."""
        out: list[Packet] = []
        if not select.select([self.call[0]], [], [], timeout)[0]:
            return out
        try:
            os.eventfd_read(self.call[0])
        except BlockingIOError:
            pass
        used = RING[0] + 0x800
        idx = struct.unpack_from("<H", self.mem, used + 2)[0]
        while self.used_seen[0] != idx:
            slot = self.used_seen[0] % QSIZE
            head, length = struct.unpack_from("<II", self.mem, used + 4 + 8 * slot)
            start = RX_BUFS + head * BUF_SIZE
            out.append(Packet.parse(bytes(self.mem[start:start + length]), 65536))
            self.used_seen[0] = (self.used_seen[0] + 1) & 0xFFFF
            self._post_rx(head)
        self._kick(0)
        return out

    def recv_until(self, predicate, timeout: float = 5.0) -> list[Packet]:
        import time
        got: list[Packet] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got += self.recv(0.2)
            if predicate(got):
                return got
        return got

    def close(self) -> None:
        self.sock.close()
        self.mem.close()
        for fd in self.kick + self.call + [self.memfd]:
            os.close(fd)
