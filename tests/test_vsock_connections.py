"""The virtio-vsock connection state machine (sans-IO): handshakes both ways, data with
credit in both directions, half-close, RST, and bad packets."""
from vmbus.vsock.connections import Close, Connect, HalfClose, VsockDevice, Write
from vmbus.vsock.packet import (HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
                                OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, Packet)

GUEST = 3
BRIDGE = 0x40000000


def from_guest(op, src_port=1025, dst_port=BRIDGE, payload=b"", flags=0, buf_alloc=4096, fwd_cnt=0, src_cid=GUEST,
               dst_cid=HOST_CID):
    return Packet(src_cid, dst_cid, src_port, dst_port, op, flags, buf_alloc, fwd_cnt, payload)


def connected(dev):
    assert dev.on_guest_packet(from_guest(OP_REQUEST)) == [Connect((1025, BRIDGE), BRIDGE)]
    dev.host_connected((1025, BRIDGE))
    [resp] = dev.take_packets()
    assert (resp.op, resp.src_port, resp.dst_port, resp.dst_cid) == (OP_RESPONSE, BRIDGE, 1025, GUEST)
    return (1025, BRIDGE)


def test_guest_connect_refused_gets_rst():
    dev = VsockDevice(GUEST)
    dev.on_guest_packet(from_guest(OP_REQUEST))
    dev.host_refused((1025, BRIDGE))
    [rst] = dev.take_packets()
    assert rst.op == OP_RST and not dev.connections


def test_guest_to_host_data_respects_our_credit():
    dev = VsockDevice(GUEST, buf_alloc=1000)
    key = connected(dev)
    assert dev.on_guest_packet(from_guest(OP_RW, payload=b"x" * 600)) == [Write(key, b"x" * 600)]
    # the host has not taken it yet: 400 more fit, 401 would break the credit we gave
    assert dev.on_guest_packet(from_guest(OP_RW, payload=b"y" * 400)) == [Write(key, b"y" * 400)]
    dev.host_written(key, 1000)
    [update] = dev.take_packets()
    assert update.op == OP_CREDIT_UPDATE and update.fwd_cnt == 1000 and update.buf_alloc == 1000
    assert dev.on_guest_packet(from_guest(OP_RW, payload=b"z" * 1000)) == [Write(key, b"z" * 1000)]
    assert dev.on_guest_packet(from_guest(OP_RW, payload=b"!")) == [Close(key)]  # over the credit: reset
    assert dev.take_packets()[-1].op == OP_RST


def test_host_to_guest_data_is_paced_by_the_guest_credit():
    dev = VsockDevice(GUEST)
    key = connected(dev)
    assert dev.host_credit(key) == 4096
    assert dev.host_data(key, b"a" * 5000) == 4096
    packets = dev.take_packets()
    assert sum(len(p.payload) for p in packets if p.op == OP_RW) == 4096
    assert dev.host_credit(key) == 0
    assert dev.host_data(key, b"b") == 0
    assert dev.take_packets()[0].op == OP_CREDIT_REQUEST
    dev.on_guest_packet(from_guest(OP_CREDIT_UPDATE, fwd_cnt=4096))  # the guest's reader caught up
    assert dev.host_credit(key) == 4096


def test_credit_request_is_answered():
    dev = VsockDevice(GUEST)
    key = connected(dev)
    dev.on_guest_packet(from_guest(OP_RW, payload=b"abc"))
    dev.host_written(key, 3)
    dev.take_packets()
    dev.on_guest_packet(from_guest(OP_CREDIT_REQUEST))
    [update] = dev.take_packets()
    assert update.op == OP_CREDIT_UPDATE and update.fwd_cnt == 3


def test_half_close_both_ways_then_rst():
    dev = VsockDevice(GUEST)
    key = connected(dev)
    assert dev.on_guest_packet(from_guest(OP_SHUTDOWN, flags=SHUTDOWN_SEND)) == [HalfClose(key)]
    dev.host_data(key, b"reply")
    dev.host_eof(key)
    ops = [p.op for p in dev.take_packets()]
    assert ops == [OP_RW, OP_SHUTDOWN]
    assert dev.on_guest_packet(from_guest(OP_SHUTDOWN, flags=SHUTDOWN_SEND | SHUTDOWN_RCV)) == [Close(key)]
    assert dev.take_packets()[0].op == OP_RST and not dev.connections


def test_host_initiated_connection():
    dev = VsockDevice(GUEST)
    key = dev.host_connect(5000)
    [req] = dev.take_packets()
    assert (req.op, req.dst_port, req.src_port) == (OP_REQUEST, 5000, key[1])
    assert dev.host_credit(key) == 0  # not connected yet
    dev.on_guest_packet(from_guest(OP_RESPONSE, src_port=5000, dst_port=key[1], buf_alloc=8192))
    assert dev.host_credit(key) == 8192
    dev.on_guest_packet(from_guest(OP_RST, src_port=5000, dst_port=key[1]))
    assert not dev.connections


def test_bad_packets():
    dev = VsockDevice(GUEST)
    # wrong source CID (a guest pretending to be another): dropped with RST
    assert dev.on_guest_packet(from_guest(OP_REQUEST, src_cid=7)) == []
    assert dev.take_packets()[0].op == OP_RST and not dev.connections
    # data for a connection that does not exist
    assert dev.on_guest_packet(from_guest(OP_RW, payload=b"x")) == []
    assert dev.take_packets()[0].op == OP_RST
    # an RST for an unknown connection is simply ignored
    assert dev.on_guest_packet(from_guest(OP_RST)) == [] and dev.take_packets() == []
    # unknown op on a live connection: reset
    key = connected(dev)
    assert dev.on_guest_packet(from_guest(99)) == [Close(key)]
    assert [p.op for p in dev.take_packets()] == [OP_RST]
    # a second REQUEST for a live connection is refused without touching the first
    key = connected(dev)
    assert dev.on_guest_packet(from_guest(OP_REQUEST)) == []
    assert dev.take_packets()[0].op == OP_RST and key in dev.connections
    assert dev.dropped >= 2
