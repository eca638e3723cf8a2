"""The bridge IO layer in-process, over socketpairs: notification queueing, replies that
outlive their connection, redial, and a writer facing a peer that stops reading."""
import json
import socket
import struct

from gcs import aio
from gcs.bridge.connection import Conn
from gcs.bridge.server import Bridge
from gcs.protocol.ids import RequestId
from gcs.protocol.replies import container_notification, response

HDR = struct.Struct("<IIQ")
ZERO = "00000000-0000-0000-0000-000000000000"


def frame(ident, seq, obj):
    body = json.dumps(obj).encode() + b"\n"
    return HDR.pack(ident, 16 + len(body), seq) + body


def read_frames(sock, count):
    sock.settimeout(5)
    out, buf = [], b""
    while len(out) < count:
        while len(buf) < 16 or len(buf) < HDR.unpack_from(buf)[1]:
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed early"
            buf += chunk
        ident, size, seq = HDR.unpack_from(buf)
        out.append((ident, seq, json.loads(buf[16:size])))
        buf = buf[size:]
    return out


NEGOTIATE = frame(RequestId.NEGOTIATE_PROTOCOL, 0, {"MinimumVersion": 4, "MaximumVersion": 4})


def run(coro, timeout=10):
    loop = aio.get_loop()
    task = aio.spawn(coro)
    timer = loop.call_later(timeout, task.cancel)
    try:
        return loop.run_until_complete(task)
    finally:
        timer.cancel()


def redialling_bridge(pairs) -> Bridge:
    """A bridge whose dials take the pairs' first ends in turn; it answers every request."""
    conns = iter([Conn.from_socket(a, f"pair{i}") for i, (a, _) in enumerate(pairs)])

    async def connect():
        return next(conns)

    async def handler(req):
        return response(req.request.activity_id)

    return Bridge(handler, connect)


def test_notifications_wait_for_negotiation_and_reconnect():
    pairs = [socket.socketpair() for _ in range(2)]
    bridge = redialling_bridge(pairs)

    async def main():
        bridge.notify(container_notification("c1", ZERO, "UnexpectedExit"))  # no connection yet: queued
        runner = aio.spawn(bridge.run())
        await aio.sleep(0.05)
        host1 = pairs[0][1]
        host1.sendall(NEGOTIATE)
        await aio.sleep(0.05)
        host1.close()  # drop: the bridge redials (next connection)
        await aio.sleep(0.25)
        bridge.notify(container_notification("c2", ZERO, "ForcedExit"))  # connected, not negotiated: queued
        await aio.sleep(0.05)
        host2 = pairs[1][1]
        host2.sendall(NEGOTIATE)
        await aio.sleep(0.05)
        bridge.stop_after_flush()
        await runner

    host1 = pairs[0][1]
    host1.settimeout(5)
    run(main())
    assert bridge.connections == 2
    frames2 = read_frames(pairs[1][1], 2)
    assert [f[0] for f in frames2] == [0x20100B01, 0x30100101]
    assert frames2[1][2]["ContainerId"] == "c2"
    for _, b in pairs:
        b.close()


def test_first_queued_notification_flushed_after_negotiation():
    a, b = socket.socketpair()

    async def connect():
        return Conn.from_socket(a, "pair")

    async def handler(req):
        return response("")

    bridge = Bridge(handler, connect, reconnect=False)

    async def main():
        bridge.notify(container_notification("c1", ZERO, "UnexpectedExit"))
        runner = aio.spawn(bridge.run())
        await aio.sleep(0.02)
        b.sendall(NEGOTIATE)
        await aio.sleep(0.05)
        bridge.stop_after_flush()
        await runner

    run(main())
    frames = read_frames(b, 2)
    assert frames[0][0] == 0x20100B01 and frames[1] == (0x30100101, 0, container_notification("c1", ZERO, "UnexpectedExit"))
    b.close()


def test_redial_after_failures():
    attempts = []
    a, b = socket.socketpair()

    async def connect():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError(111, "refused")
        return Conn.from_socket(a, "pair")

    bridge = Bridge(lambda req: None, connect, reconnect=False)

    async def main():
        runner = aio.spawn(bridge.run())
        await aio.sleep(0.35)
        b.close()
        await runner

    run(main())
    assert len(attempts) == 3 and bridge.connections == 1


def test_writer_survives_a_peer_that_stops_reading():
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    async def connect():
        return Conn.from_socket(a, "pair")

    async def handler(req):
        return response("", GuestStacks=str(req.seq % 10) * 40000)  # ~40 KB each

    bridge = Bridge(handler, connect, reconnect=False)
    count = 30

    async def main():
        runner = aio.spawn(bridge.run())
        b.sendall(NEGOTIATE + b"".join(frame(RequestId.DUMP_STACKS, i + 1, {}) for i in range(count)))
        await aio.sleep(0.2)  # the host reads nothing yet: replies pile up in the writer
        assert len(bridge._wbuf) > 100_000
        received = await aio_read_frames(b, count + 1)
        bridge.stop_after_flush()
        await runner
        return received

    received = run(main())
    seqs = [seq for _, seq, _ in received[1:]]
    assert sorted(seqs) == list(range(1, count + 1))
    for _, seq, body in received[1:]:
        assert body["GuestStacks"] == str(seq % 10) * 40000  # whole, uninterleaved messages
    b.close()


async def aio_read_frames(sock, count):
    sock.setblocking(False)
    buf, out = b"", []
    while len(out) < count:
        chunk = await aio.sock_recv(sock, 1 << 16)
        assert chunk
        buf += chunk
        while len(buf) >= 16 and len(buf) >= HDR.unpack_from(buf)[1]:
            ident, size, seq = HDR.unpack_from(buf)
            out.append((ident, seq, json.loads(buf[16:size])))
            buf = buf[size:]
    return out


def test_reply_outliving_its_connection_is_not_sent_on_the_next():
    pairs = [socket.socketpair() for _ in range(2)]
    conns = iter([Conn.from_socket(a, f"pair{i}") for i, (a, _) in enumerate(pairs)])
    gate = aio.Event()

    async def connect():
        return next(conns)

    async def handler(req):
        if req.ident == RequestId.WAIT_FOR_PROCESS:
            await gate.wait()
        return response("", Seq=req.seq)

    bridge = Bridge(handler, connect)

    async def main():
        runner = aio.spawn(bridge.run())
        host1, host2 = pairs[0][1], pairs[1][1]
        host1.sendall(NEGOTIATE + frame(RequestId.WAIT_FOR_PROCESS, 1, {"ProcessId": 5}))
        await aio.sleep(0.05)
        host1.close()
        await aio.sleep(0.25)
        host2.sendall(NEGOTIATE + frame(RequestId.START, 1, {}))
        await aio.sleep(0.05)
        gate.set()  # the old connection's request finishes now
        await aio.sleep(0.05)
        bridge.stop_after_flush()
        await runner

    run(main())
    frames = read_frames(pairs[1][1], 2)
    assert [(f[0], f[1]) for f in frames] == [(0x20100B01, 0), (0x20100201, 1)]
    pairs[1][1].settimeout(0.2)
    try:
        extra = pairs[1][1].recv(100)
    except socket.timeout:
        extra = b""
    assert extra == b""  # no reply for the dropped connection's request
    for a, b in pairs:
        a.close()
        b.close()


def _complete_frames(data: bytes) -> list:
    out = []
    while len(data) >= 16 and len(data) >= HDR.unpack_from(data)[1]:
        ident, size, seq = HDR.unpack_from(data)
        out.append((ident, seq, json.loads(data[16:size])))
        data = data[size:]
    return out


def test_notifications_not_written_when_the_bridge_drops_go_on_the_next():
    """A host that stops reading, then goes away: what it read once, it never gets again;
    what stayed in the agent's write buffer (a frame cut in two included) comes first on
    the next bridge, in order."""
    pairs = [socket.socketpair() for _ in range(2)]
    pairs[0][0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    bridge = redialling_bridge(pairs)
    ids = [f"c{i}" for i in range(300)]
    got: dict[str, list] = {}

    async def main():
        runner = aio.spawn(bridge.run())
        await aio.sleep(0.05)
        host1, host2 = pairs[0][1], pairs[1][1]
        host1.sendall(NEGOTIATE)
        await aio.sleep(0.05)
        for cid in ids:  # more than the socket takes: the rest waits in the agent's buffer
            bridge.notify(container_notification(cid, ZERO, "UnexpectedExit"))
        await aio.sleep(0.05)
        host1.setblocking(False)
        data = b""
        while True:  # what reached host1 (the agent does not run meanwhile: same thread)
            try:
                chunk = host1.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        got["first"] = _complete_frames(data)
        host1.close()
        await aio.sleep(0.3)  # the drop, then the redial
        host2.sendall(NEGOTIATE)
        await aio.sleep(0.3)
        bridge.stop_after_flush()
        await runner

    run(main())
    first = [f[2]["ContainerId"] for f in got["first"] if f[0] == 0x30100101]
    second = read_frames(pairs[1][1], 1 + len(ids) - len(first))
    assert second[0][0] == 0x20100B01  # the negotiate reply, then the notifications
    assert 0 < len(first) < len(ids)
    assert first + [f[2]["ContainerId"] for f in second[1:]] == ids  # each once, in order
    for _, b in pairs:
        b.close()
