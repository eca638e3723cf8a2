"""The vhost-user-vsock back-end as a process, driven by a fake QEMU + guest driver: connects
both ways, data both ways with credit, refused connections, malformed descriptors, and the
front-end going away."""
import os
import subprocess
import sys
import time

import pytest

from gcs.host.launcher import agent_env
from vmbus.hybrid import host_connect, host_listen
from vmbus.vsock.packet import (OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND,
                                Packet)

from fake_vsock_guest import FakeGuest

CID = 3


@pytest.fixture
def backend(tmp_path):
    sock = str(tmp_path / "vhu.sock")
    uds = str(tmp_path / "vsock")
    proc = subprocess.Popen([sys.executable, "-m", "vmbus.vhost_user_vsock", "--socket", sock, "--uds-path", uds,
                             "--guest-cid", str(CID)], env=agent_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        assert time.monotonic() < deadline and proc.poll() is None, "backend did not start"
        time.sleep(0.01)
    guest = FakeGuest(sock, CID)
    try:
        yield guest, uds, proc
    finally:
        guest.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pkt(op, src_port=1025, dst_port=5000, payload=b"", flags=0, buf_alloc=65536, fwd_cnt=0):
    return Packet(CID, 2, src_port, dst_port, op, flags, buf_alloc, fwd_cnt, payload)


def test_guest_connects_to_host_and_data_flows_both_ways(backend):
    guest, uds, _ = backend
    listener = host_listen(uds, 5000)
    listener.settimeout(5)
    guest.send(pkt(OP_REQUEST))
    got = guest.recv_until(lambda ps: any(p.op == OP_RESPONSE for p in ps))
    assert [p.op for p in got] == [OP_RESPONSE]
    conn, _ = listener.accept()
    guest.send(pkt(OP_RW, payload=b"hello host"))
    conn.settimeout(5)
    assert conn.recv(100) == b"hello host"
    conn.sendall(b"hello guest")
    got = guest.recv_until(lambda ps: any(p.op == OP_RW for p in ps))
    assert b"".join(p.payload for p in got if p.op == OP_RW) == b"hello guest"
    guest.send(pkt(OP_SHUTDOWN, flags=SHUTDOWN_SEND))
    assert conn.recv(100) == b""  # the guest's half-close reached the host
    conn.close()
    got = guest.recv_until(lambda ps: any(p.op == OP_SHUTDOWN for p in ps))
    assert any(p.op == OP_SHUTDOWN and p.flags & SHUTDOWN_SEND for p in got)
    guest.send(pkt(OP_SHUTDOWN, flags=SHUTDOWN_SEND | SHUTDOWN_RCV))
    assert any(p.op == OP_RST for p in guest.recv_until(lambda ps: any(p.op == OP_RST for p in ps)))
    listener.close()


def test_host_side_absent_gets_rst(backend):
    guest, _, _ = backend
    guest.send(pkt(OP_REQUEST, dst_port=4242))
    got = guest.recv_until(lambda ps: bool(ps))
    assert [p.op for p in got] == [OP_RST]


def test_host_connects_to_guest_listener(backend):
    guest, uds, _ = backend
    import threading
    result = {}

    def connect():
        try:
            result["sock"] = host_connect(uds, 6000, timeout=5)
        except OSError as err:
            result["err"] = err

    t = threading.Thread(target=connect)
    t.start()
    [req] = guest.recv_until(lambda ps: bool(ps))
    assert req.op == OP_REQUEST and req.dst_port == 6000
    guest.send(pkt(OP_RESPONSE, src_port=6000, dst_port=req.src_port))
    t.join(5)
    sock = result["sock"]
    sock.sendall(b"ping")
    got = guest.recv_until(lambda ps: any(p.op == OP_RW for p in ps))
    assert b"".join(p.payload for p in got if p.op == OP_RW) == b"ping"
    sock.close()


def test_malformed_descriptors_are_survived(backend):
    guest, uds, proc = backend
    guest.send_raw_desc(0x7FFFFFFF0000, 64)          # outside guest memory
    guest.send_raw_desc(0x200000, 10)                # shorter than a header
    bogus = pkt(OP_RW, payload=b"x")
    data = bytearray(bogus.pack())
    data[24:28] = (1 << 20).to_bytes(4, "little")    # length field larger than the buffer
    guest.mem[0x300000:0x300000 + len(data)] = bytes(data)
    guest.send_raw_desc(0x300000, len(data))
    guest.send(pkt(OP_RW, src_port=9, dst_port=9, payload=b"?"))  # packet for an unknown connection
    got = guest.recv_until(lambda ps: any(p.op == OP_RST for p in ps))
    assert any(p.op == OP_RST and p.dst_port == 9 for p in got)
    assert proc.poll() is None
    test_host_side_absent_gets_rst(backend)          # still serving


def test_frontend_exit_ends_the_backend_with_a_message(backend):
    guest, _, proc = backend
    guest.sock.close()
    assert proc.wait(10) == 1
    assert b"closed the vhost-user connection" in proc.stderr.read()
