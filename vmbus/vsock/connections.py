"""virtio-vsock stream connections between a guest and the host side, sans-IO.

The device turns guest packets into actions for the IO layer (connect to the host's
Unix socket for a port, write bytes to it, half-close it, close it) and host events into
packets for the guest. Credit is accounted both ways (virtio 1.2, 5.10.6.3):

* guest -> host: we advertise `buf_alloc` and count in `fwd_cnt` only the bytes the IO
  layer reports written to the host socket, so a slow host reader makes the guest wait
  instead of making us buffer without bound;
* host -> guest: we send at most the peer's free space, `peer_buf_alloc - (tx_cnt -
  peer_fwd_cnt)`; `host_credit()` tells the IO layer how much it may read now.

Anything malformed (wrong CIDs, unknown ops, packets for unknown connections, data beyond
the credit we gave) is answered with RST or dropped, never trusted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vmbus.vsock.packet import (HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
                                OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, Packet)

DEFAULT_BUF_ALLOC = 256 * 1024
FIRST_HOST_PORT = 49152


@dataclass(frozen=True)
class Connect:          # open a connection to the host listener for `port`
    key: tuple[int, int]
    port: int


@dataclass(frozen=True)
class Write:            # write guest bytes to the host side of `key`
    key: tuple[int, int]
    data: bytes


@dataclass(frozen=True)
class HalfClose:        # the guest will send no more: shut the host socket for writing
    key: tuple[int, int]


@dataclass(frozen=True)
class Close:            # the connection is gone: close the host socket
    key: tuple[int, int]


@dataclass
class Connection:
    guest_port: int
    host_port: int
    state: str                       # connecting, connected, closed
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    tx_cnt: int = 0                  # bytes sent to the guest
    rx_cnt: int = 0                  # bytes received from the guest
    fwd_cnt: int = 0                 # of those, bytes the host side has taken
    last_fwd_sent: int = 0
    guest_shut: int = 0              # SHUTDOWN flags the guest sent
    host_shut: int = 0               # SHUTDOWN flags we sent
    pending: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return self.guest_port, self.host_port


class VsockDevice:
    def __init__(self, guest_cid: int, buf_alloc: int = DEFAULT_BUF_ALLOC) -> None:
        self.guest_cid = guest_cid
        self.buf_alloc = buf_alloc
        self.connections: dict[tuple[int, int], Connection] = {}
        self.to_guest: list[Packet] = []
        self._next_host_port = FIRST_HOST_PORT
        self.dropped = 0

    # --- helpers ------------------------------------------------------------------------
    def _packet(self, conn_or_key, op: int, payload: bytes = b"", flags: int = 0) -> Packet:
        if isinstance(conn_or_key, Connection):
            guest_port, host_port = conn_or_key.key
            fwd = conn_or_key.fwd_cnt
            conn_or_key.last_fwd_sent = fwd
        else:
            guest_port, host_port = conn_or_key
            fwd = 0
        return Packet(HOST_CID, self.guest_cid, host_port, guest_port, op, flags, self.buf_alloc, fwd, payload)

    def _rst(self, key: tuple[int, int]) -> None:
        self.to_guest.append(self._packet(key, OP_RST))

    def take_packets(self) -> list[Packet]:
        out, self.to_guest = self.to_guest, []
        return out

    # --- from the guest -----------------------------------------------------------------
    def on_guest_packet(self, pkt: Packet) -> list:
        """Returns actions for the IO layer; replies for the guest queue in to_guest."""
        if pkt.src_cid != self.guest_cid or pkt.dst_cid != HOST_CID or pkt.type != TYPE_STREAM:
            self.dropped += 1
            if pkt.op != OP_RST and pkt.type == TYPE_STREAM and pkt.dst_cid == HOST_CID:
                self._rst(pkt.key())
            return []
        key = pkt.key()
        conn = self.connections.get(key)
        if conn is not None:
            conn.peer_buf_alloc, conn.peer_fwd_cnt = pkt.buf_alloc, pkt.fwd_cnt
        if pkt.op == OP_REQUEST:
            if conn is not None:
                self._rst(key)
                return []
            conn = Connection(pkt.src_port, pkt.dst_port, "connecting", pkt.buf_alloc, pkt.fwd_cnt)
            self.connections[key] = conn
            return [Connect(key, pkt.dst_port)]
        if conn is None:
            if pkt.op != OP_RST:
                self._rst(key)
                self.dropped += 1
            return []
        if pkt.op == OP_RESPONSE:
            if conn.state != "connecting-guest":
                self._reset(conn)
                return [Close(key)]
            conn.state = "connected"
            return []
        if pkt.op == OP_RW:
            if conn.state != "connected" or conn.guest_shut & SHUTDOWN_SEND:
                self._reset(conn)
                return [Close(key)]
            if conn.rx_cnt - conn.fwd_cnt + len(pkt.payload) > self.buf_alloc:
                self._reset(conn)  # the guest ignored the credit we gave
                return [Close(key)]
            conn.rx_cnt += len(pkt.payload)
            return [Write(key, pkt.payload)] if pkt.payload else []
        if pkt.op == OP_CREDIT_UPDATE:
            return []
        if pkt.op == OP_CREDIT_REQUEST:
            self.to_guest.append(self._packet(conn, OP_CREDIT_UPDATE))
            return []
        if pkt.op == OP_SHUTDOWN:
            newly = pkt.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) & ~conn.guest_shut
            conn.guest_shut |= newly
            actions = [HalfClose(key)] if newly & SHUTDOWN_SEND else []
            if conn.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND:
                self._reset(conn)
                actions.append(Close(key))
            return actions
        if pkt.op == OP_RST:
            del self.connections[key]
            return [Close(key)]
        self._reset(conn)  # unknown op
        return [Close(key)]

    def _reset(self, conn: Connection) -> None:
        self.connections.pop(conn.key, None)
        self._rst(conn.key)

    # --- from the host side -------------------------------------------------------------
    def host_connected(self, key: tuple[int, int]) -> None:
        conn = self.connections.get(key)
        if conn is not None and conn.state == "connecting":
            conn.state = "connected"
            self.to_guest.append(self._packet(conn, OP_RESPONSE))

    def host_refused(self, key: tuple[int, int]) -> None:
        if self.connections.pop(key, None) is not None:
            self._rst(key)

    def host_connect(self, guest_port: int) -> tuple[int, int]:
        """The host wants the guest's listener on guest_port: send REQUEST."""
        host_port = self._next_host_port
        self._next_host_port = host_port + 1 if host_port < 0xFFFFFFFF else FIRST_HOST_PORT
        conn = Connection(guest_port, host_port, "connecting-guest")
        self.connections[conn.key] = conn
        self.to_guest.append(self._packet(conn, OP_REQUEST))
        return conn.key

    def host_credit(self, key: tuple[int, int]) -> int:
        """How many bytes the guest can take now from the host side of key."""
        conn = self.connections.get(key)
        if conn is None or conn.state != "connected" or conn.host_shut & SHUTDOWN_SEND:
            return 0
        return max(0, conn.peer_buf_alloc - (conn.tx_cnt - conn.peer_fwd_cnt))

    def request_credit(self, key: tuple[int, int]) -> None:
        """The host side has bytes but no credit: ask the guest for an update."""
        conn = self.connections.get(key)
        if conn is not None:
            self.to_guest.append(self._packet(conn, OP_CREDIT_REQUEST))

    def host_data(self, key: tuple[int, int], data: bytes, max_payload: int = 65536) -> int:
        """Queue host bytes for the guest, within its credit; returns how many were taken."""
        credit = self.host_credit(key)
        conn = self.connections.get(key)
        if conn is None or credit == 0:
            if data:
                self.request_credit(key)
            return 0
        data = data[:credit]
        for i in range(0, len(data), max_payload):
            chunk = data[i:i + max_payload]
            self.to_guest.append(self._packet(conn, OP_RW, chunk))
            conn.tx_cnt += len(chunk)
        return len(data)

    def host_written(self, key: tuple[int, int], count: int) -> None:
        """The IO layer wrote count guest bytes to the host socket: give the credit back,
        telling the guest when it may be waiting for it."""
        conn = self.connections.get(key)
        if conn is None:
            return
        conn.fwd_cnt += count
        if conn.fwd_cnt - conn.last_fwd_sent >= self.buf_alloc // 4:
            self.to_guest.append(self._packet(conn, OP_CREDIT_UPDATE))

    def host_eof(self, key: tuple[int, int]) -> None:
        conn = self.connections.get(key)
        if conn is not None and not conn.host_shut & SHUTDOWN_SEND:
            conn.host_shut |= SHUTDOWN_SEND
            self.to_guest.append(self._packet(conn, OP_SHUTDOWN, flags=SHUTDOWN_SEND))

    def host_closed(self, key: tuple[int, int]) -> None:
        conn = self.connections.pop(key, None)
        if conn is not None:
            self._rst(key)
