"""The vhost-user back-end state machine fed the message sequence QEMU 7.2 sends for
vhost-user-vsock-pci (shared/uvm-notes.md), plus malformed input."""
import os
import struct

import pytest

from vmbus import vhost_user as vu


def msg(request, payload=b"", flags=vu.VERSION):
    return struct.pack("<III", request, flags, len(payload)) + payload


def reply_payload(backend):
    [(data, _)] = backend.replies()
    request, flags, size = struct.unpack_from("<III", data)
    assert flags == vu.VERSION | vu.FLAG_REPLY and size == len(data) - 12
    return data[12:]


@pytest.fixture
def fds():
    made = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(7)]
    yield made
    for fd in made:
        os.close(fd)


def test_qemu_sequence_starts_both_rings(fds):
    b = vu.VhostUserBackend(2, vu.vsock_config(3))
    b.feed(msg(vu.GET_FEATURES))
    features = struct.unpack("<Q", reply_payload(b))[0]
    assert features & vu.VIRTIO_F_VERSION_1 and features & vu.VHOST_USER_F_PROTOCOL_FEATURES
    b.feed(msg(vu.GET_PROTOCOL_FEATURES))
    assert struct.unpack("<Q", reply_payload(b))[0] & vu.PROTOCOL_F_CONFIG
    b.feed(msg(vu.SET_PROTOCOL_FEATURES, struct.pack("<Q", vu.PROTOCOL_F_CONFIG)))
    b.feed(msg(vu.SET_OWNER))
    for i in range(2):
        b.feed(msg(vu.SET_VRING_CALL, struct.pack("<Q", i)), [fds[i]])
        b.feed(msg(vu.SET_VRING_ERR, struct.pack("<Q", i)), [fds[2 + i]])
    b.feed(msg(vu.GET_CONFIG, struct.pack("<III", 0, 8, 0) + bytes(8)))
    assert struct.unpack_from("<IIIQ", reply_payload(b))[3] == 3  # the guest CID
    b.feed(msg(vu.SET_FEATURES, struct.pack("<Q", 0x140000000)))
    table = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 512 << 20, 0x7F0000000000, 0)
    b.feed(msg(vu.SET_MEM_TABLE, table), [fds[4]])
    assert b.memory[0].size == 512 << 20 and b.memory[0].fd == fds[4]
    for i in range(2):
        b.feed(msg(vu.SET_VRING_NUM, struct.pack("<II", i, 128)))
        b.feed(msg(vu.SET_VRING_BASE, struct.pack("<II", i, 0)))
        b.feed(msg(vu.SET_VRING_ADDR, struct.pack("<IIQQQQ", i, 0, 0x7F0000001000 + i * 0x4000,
                                                  0x7F0000002000 + i * 0x4000, 0x7F0000003000 + i * 0x4000, 0)))
        b.feed(msg(vu.SET_VRING_KICK, struct.pack("<Q", i)), [fds[5 + i]])
    assert not any(v.started for v in b.vrings)  # protocol features: rings wait for ENABLE
    for i in range(2):
        b.feed(msg(vu.SET_VRING_ENABLE, struct.pack("<II", i, 1)))
    assert all(v.started for v in b.vrings)
    assert ("start", 0) in b.take_events()
    b.feed(msg(vu.GET_VRING_BASE, struct.pack("<II", 1, 0)))
    assert struct.unpack("<II", reply_payload(b)) == (1, 0)
    assert not b.vrings[1].started and ("stop", 1) in b.take_events()


def test_reply_ack_when_asked(fds):
    b = vu.VhostUserBackend(2, vu.vsock_config(3))
    b.feed(msg(vu.SET_PROTOCOL_FEATURES, struct.pack("<Q", vu.PROTOCOL_F_REPLY_ACK)))
    b.feed(msg(vu.SET_OWNER, flags=vu.VERSION | vu.FLAG_NEED_REPLY))
    assert struct.unpack("<Q", reply_payload(b))[0] == 0


def test_messages_split_across_reads():
    b = vu.VhostUserBackend(2, vu.vsock_config(3))
    data = msg(vu.GET_FEATURES) + msg(vu.GET_QUEUE_NUM)
    for i in range(len(data)):
        b.feed(data[i:i + 1])
    assert len(b.replies()) == 2


@pytest.mark.parametrize("bad", [
    msg(vu.SET_VRING_NUM, struct.pack("<II", 5, 128)),          # a vring the device does not have
    msg(vu.SET_VRING_NUM, struct.pack("<II", 0, 100)),          # not a power of two
    msg(vu.SET_FEATURES, struct.pack("<Q", 1 << 60)),           # a feature we never offered
    msg(vu.SET_MEM_TABLE, struct.pack("<II", 2, 0)),            # regions without fds
    msg(vu.SET_VRING_ADDR, b"\0" * 8),                          # truncated payload
    msg(99),                                                    # unknown request
    struct.pack("<III", vu.GET_FEATURES, vu.VERSION, 1 << 20),  # huge size
])
def test_protocol_violations(bad):
    with pytest.raises(vu.VhostUserError):
        vu.VhostUserBackend(2, vu.vsock_config(3)).feed(bad)
