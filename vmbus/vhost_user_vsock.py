"""A vhost-user-vsock device back-end: lets QEMU's `vhost-user-vsock-pci` give a guest
virtio-vsock on hosts without /dev/vhost-vsock, mapped to the hybrid-vsock convention:

* a guest `connect(2, P)` reaches the Unix socket `UDS_P` (RST when nobody listens);
* a host process connecting to `UDS` and writing `CONNECT P\\n` reaches the guest's
  listener on port P, and is answered `OK <host port>\\n`.

IO edge only: the protocol (vhost_user.py), the rings (virtio/) and the connections
(vsock/connections.py) are sans-IO. Everything runs in the agent's event loop (gcs.aio).

    python -m vmbus.vhost_user_vsock --socket vhu.sock --uds-path /tmp/uvm/vsock --guest-cid 3
"""
from __future__ import annotations

import argparse
import array
import mmap
import os
import socket
import sys
from collections import deque
from dataclasses import replace

from gcs import aio
from gcs.log import log
from vmbus import vhost_user as vu
from vmbus.virtio.memory import GuestMemory, GuestMemoryError, Region
from vmbus.virtio.virtqueue import Virtqueue, VirtqueueError
from vmbus.vsock.connections import Close, Connect, HalfClose, VsockDevice, Write
from vmbus.vsock.packet import HEADER_SIZE, OP_RESPONSE, OP_RST, Packet, PacketError

RX, TX = 0, 1
GUEST_ANSWER_TIMEOUT = 30.0  # a slow (TCG, loaded) guest may take seconds to answer a REQUEST
_SHUT = object()   # queued half-close marker
_CLOSE = object()  # queued close marker: close once everything before it is written
MAX_PAYLOAD = 64 * 1024


class VsockBackend:
    def __init__(self, socket_path: str, uds_path: str, guest_cid: int) -> None:
        self.socket_path = socket_path
        self.uds_path = uds_path
        self.device = VsockDevice(guest_cid)
        self.proto = vu.VhostUserBackend(2, vu.vsock_config(guest_cid))
        self.memory = GuestMemory()
        self.queues: dict[int, Virtqueue] = {}
        self.pending_rx: deque[Packet] = deque()
        self.host_socks: dict[tuple[int, int], socket.socket] = {}
        self.readers: dict[tuple[int, int], aio.Task] = {}
        self.writers: dict[tuple[int, int], aio.Queue] = {}  # one ordered writer per connection
        self.credit_events: dict[tuple[int, int], aio.Event] = {}  # set when the guest reports credit
        self.host_waiters: dict[tuple[int, int], aio.Future] = {}
        self.stats = {"rx_packets": 0, "tx_packets": 0, "bad_chains": 0, "bad_packets": 0}

    # --- front-end connection ----------------------------------------------------------
    async def serve_frontend(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        fd = conn.fileno()
        while True:
            try:
                data, fds = _recv_with_fds(conn)
            except BlockingIOError:
                await aio.wait_readable(fd)
                continue
            if not data:
                raise ConnectionError("the front-end (QEMU) closed the vhost-user connection")
            try:
                self.proto.feed(data, fds)
            except vu.VhostUserError:
                for extra in fds:
                    os.close(extra)
                raise
            for reply, _ in self.proto.replies():
                await aio.sock_sendall(conn, reply)
            if self.proto.memory_changed:
                self.proto.memory_changed = False
                self._map_memory()
            for kind, index in self.proto.take_events():
                if kind == "start":
                    self._start_queue(index)
                elif kind == "stop":
                    self._stop_queue(index)

    def _map_memory(self) -> None:
        self.memory.clear()
        for r in self.proto.memory:
            mapping = mmap.mmap(r.fd, r.size + r.mmap_offset, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.close(r.fd)
            self.memory.add(Region(r.guest_addr, r.size, r.user_addr, mapping, r.mmap_offset))

    def _start_queue(self, index: int) -> None:
        v = self.proto.vrings[index]
        try:
            q = Virtqueue(self.memory, v.num, self.memory.translate_user(v.desc), self.memory.translate_user(v.avail),
                          self.memory.translate_user(v.used), v.base)
        except (VirtqueueError, GuestMemoryError) as err:
            log.error("vhost-user: cannot start vring", vring=index, error=str(err))
            return
        self.queues[index] = q
        aio.get_loop().add_reader(v.kick, lambda: self._on_kick(index))
        self._on_kick(index)

    def _stop_queue(self, index: int) -> None:
        q = self.queues.pop(index, None)
        v = self.proto.vrings[index]
        if q is not None:
            v.base = q.last_avail
        if v.kick is not None:
            aio.get_loop().remove_reader(v.kick)

    def _on_kick(self, index: int) -> None:
        kick = self.proto.vrings[index].kick
        if kick is not None:
            try:
                os.eventfd_read(kick)
            except BlockingIOError:
                pass
            except OSError:
                pass
        if index == TX:
            self._process_tx()
        self._flush_rx()

    def _notify(self, index: int) -> None:
        call = self.proto.vrings[index].call
        if call is not None:
            os.eventfd_write(call, 1)

    # --- guest -> host ------------------------------------------------------------------
    def _process_tx(self) -> None:
        q = self.queues.get(TX)
        if q is None:
            return
        used = False
        while (chain := self._pop(q, "tx")) is not None:
            try:
                pkt = Packet.parse(q.gather(chain.readable(), HEADER_SIZE + MAX_PAYLOAD), MAX_PAYLOAD)
                self.stats["tx_packets"] += 1
                actions = self.device.on_guest_packet(pkt)
                if pkt.op in (OP_RESPONSE, OP_RST):
                    self.on_guest_response(pkt)  # a host-initiated connect learns its fate
                event = self.credit_events.get(pkt.key())
                if event is not None:
                    event.set()  # every guest packet carries its current credit
            except (PacketError, GuestMemoryError) as err:
                self.stats["bad_packets"] += 1
                log.warning("vsock: bad packet from the guest", error=str(err))
                actions = []
            q.push_used(chain.head, 0)
            used = True
            for action in actions:
                self._act(action)
        if used:
            self._notify(TX)

    def _pop(self, q: Virtqueue, name: str):
        """The next good chain, or None; bad chains are counted, logged and skipped."""
        while True:
            try:
                return q.pop()
            except VirtqueueError as err:
                self.stats["bad_chains"] += 1
                log.warning(f"vsock: bad {name} chain", error=str(err))

    def _act(self, action) -> None:
        if isinstance(action, Connect):
            aio.spawn(self._connect_host(action.key, action.port), f"vsock-connect-{action.port}")
        elif isinstance(action, Write):
            queue = self.writers.get(action.key)
            if queue is not None:
                queue.put(action.data)
        elif isinstance(action, HalfClose):
            queue = self.writers.get(action.key)
            if queue is not None:
                queue.put(_SHUT)  # after everything already queued
        elif isinstance(action, Close):
            queue = self.writers.get(action.key)
            if queue is not None:
                # Bytes the guest sent before closing are still queued: the writer closes the
                # host socket once they are out (the guest's close is not an abort of them).
                reader = self.readers.pop(action.key, None)
                if reader is not None:
                    reader.cancel()
                queue.put(_CLOSE)
            else:
                self._close_host(action.key)
            waiter = self.host_waiters.pop(action.key, None)
            if waiter is not None:
                waiter.set_result(False)

    async def _connect_host(self, key: tuple[int, int], port: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            await aio.sock_connect(sock, f"{self.uds_path}_{port}")
        except OSError:
            sock.close()
            self.device.host_refused(key)
            self._flush_rx()
            return
        self._attach(key, sock)
        self.device.host_connected(key)
        self._flush_rx()

    def _attach(self, key: tuple[int, int], sock: socket.socket) -> None:
        self.host_socks[key] = sock
        queue = self.writers[key] = aio.Queue()
        self.readers[key] = aio.spawn(self._read_host(key, sock), "vsock-read")
        aio.spawn(self._write_host(key, sock, queue), "vsock-write")

    async def _write_host(self, key: tuple[int, int], sock: socket.socket, queue: aio.Queue) -> None:
        """Guest bytes to the host socket, strictly in order; credit goes back as they land."""
        while True:
            data = await queue.get()
            if data is None:
                return
            if data is _CLOSE:
                self._close_host(key)
                return
            if data is _SHUT:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            try:
                await aio.sock_sendall(sock, data)
            except OSError:
                self.device.host_closed(key)
                self._close_host(key)
                self._flush_rx()
                return
            self.device.host_written(key, len(data))
            self._flush_rx()

    async def _read_host(self, key: tuple[int, int], sock: socket.socket) -> None:
        event = self.credit_events[key] = aio.Event()
        while key in self.host_socks:
            credit = self.device.host_credit(key)
            if credit == 0:
                # Out of credit: ask the guest, then wait for its next packet (no polling).
                event.clear()
                self.device.request_credit(key)
                self._flush_rx()
                await event.wait()
                continue
            try:
                data = await aio.sock_recv(sock, min(credit, 4 * MAX_PAYLOAD))
            except OSError:
                data = b""
            if not data:
                self.device.host_eof(key)
                self._flush_rx()
                return
            self.device.host_data(key, data, MAX_PAYLOAD)
            self._flush_rx()

    def _close_host(self, key: tuple[int, int]) -> None:
        sock = self.host_socks.pop(key, None)
        event = self.credit_events.pop(key, None)
        if event is not None:
            event.set()  # lets a reader waiting for credit see the connection is gone
        queue = self.writers.pop(key, None)
        if queue is not None:
            queue.put(None)
        reader = self.readers.pop(key, None)
        if reader is not None:
            reader.cancel()
        if sock is not None:
            aio.get_loop().forget_fd(sock.fileno())
            sock.close()

    # --- host -> guest ------------------------------------------------------------------
    def _flush_rx(self) -> None:
        self.pending_rx.extend(self.device.take_packets())
        q = self.queues.get(RX)
        if q is None or not self.pending_rx:
            return
        used = False
        while self.pending_rx and (chain := self._pop(q, "rx")) is not None:
            pkt = self.pending_rx.popleft()
            data = pkt.pack()
            written = q.scatter(chain.writable(), data)
            if written < len(data):  # the guest's buffer was too small: split the payload
                room = max(0, written - HEADER_SIZE)
                q.scatter(chain.writable(), replace(pkt, payload=pkt.payload[:room]).pack())
                written = HEADER_SIZE + room
                self.pending_rx.appendleft(replace(pkt, payload=pkt.payload[room:]))
            q.push_used(chain.head, written)
            self.stats["rx_packets"] += 1
            used = True
        if used:
            self._notify(RX)

    async def serve_host_connects(self, listener: socket.socket) -> None:
        while True:
            conn, _ = await aio.sock_accept(listener)
            aio.spawn(self._host_connect(conn), "vsock-host-connect")

    async def _host_connect(self, conn: socket.socket) -> None:
        line = b""
        try:
            while not line.endswith(b"\n") and len(line) < 64:
                chunk = await aio.wait_for(aio.sock_recv(conn, 1), 5.0)
                if not chunk:
                    raise ConnectionError
                line += chunk
            verb, _, port = line.decode("ascii", "replace").strip().partition(" ")
            if verb != "CONNECT" or not port.isdigit():
                raise ConnectionError
        except (ConnectionError, OSError, aio.TimeoutError_):
            conn.close()
            return
        key = self.device.host_connect(int(port))
        waiter = self.host_waiters[key] = aio.Future()
        self._flush_rx()
        try:
            ok = await aio.wait_for(waiter, GUEST_ANSWER_TIMEOUT)
        except aio.TimeoutError_:
            ok = False
        if not ok:
            self.device.host_closed(key)
            self._flush_rx()
            conn.close()
            return
        try:
            await aio.sock_sendall(conn, f"OK {key[1]}\n".encode())
        except OSError:  # the host gave up meanwhile: reset the guest's side too
            self.device.host_closed(key)
            self._flush_rx()
            conn.close()
            return
        self._attach(key, conn)

    def on_guest_response(self, pkt: Packet) -> None:
        waiter = self.host_waiters.pop(pkt.key(), None)
        if waiter is not None:
            waiter.set_result(pkt.op == OP_RESPONSE)


def _recv_with_fds(conn: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(8 * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


async def run(socket_path: str, uds_path: str, guest_cid: int) -> None:
    backend = VsockBackend(socket_path, uds_path, guest_cid)
    for path in (socket_path, uds_path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    frontend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    frontend.bind(socket_path)
    frontend.listen(1)
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    host.bind(uds_path)
    host.listen(64)
    aio.spawn(backend.serve_host_connects(host), "vsock-host-listener")
    conn, _ = await aio.sock_accept(frontend)
    log.info("vhost-user front-end connected", socket=socket_path)
    await backend.serve_frontend(conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vhost_user_vsock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="vhost-user socket QEMU connects to")
    parser.add_argument("--uds-path", required=True, help="hybrid vsock base path (PATH, PATH_<port>)")
    parser.add_argument("--guest-cid", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        aio.get_loop().run_until_complete(aio.spawn(run(args.socket, args.uds_path, args.guest_cid)))
    except (ConnectionError, vu.VhostUserError) as err:
        sys.stderr.write(f"vhost-user-vsock: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
