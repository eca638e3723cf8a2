"""The vhost-user-vsock back-end against the real Linux virtio-vsock driver: a Debian kernel
and a small initrd (initrd/build.py) booted by QEMU under TCG with `vhost-user-vsock-pci`."""
import hashlib
import os
import threading
import time

import pytest

from gcs.host.testguest import boot, build_image, connect_when_listening
from vmbus.hybrid import host_listen

@pytest.fixture(scope="module")
def image():
    return build_image()


def bulk_digest(mib):
    """sha256 of what `guest_vsock.py bulk` sends: a 64 KiB pattern, 16 times per MiB."""
    expected = hashlib.sha256()
    chunk = bytes(range(256)) * 256
    for _ in range(mib * 16):
        expected.update(chunk)
    return expected.hexdigest()


def serve_once(listener, handler):
    def run():
        conn, _ = listener.accept()
        try:
            handler(conn)
        finally:
            conn.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_guest_connects_to_host_echo(image, tmp_path):
    listener = host_listen(str(tmp_path / "vsock"), 5000)

    def reply(conn):
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(b"host got " + data)

    serve_once(listener, reply)
    out, code, err = boot(image, str(tmp_path), "connect 5000 hello")
    listener.close()
    assert "guest: reply host got hello" in out, out
    # QEMU powered off: the back-end notices, cleans up and says why, with a non-zero exit
    assert code == 1 and "closed the vhost-user connection" in err


def test_rst_when_nobody_listens_on_the_host(image, tmp_path):
    out, _, _ = boot(image, str(tmp_path), "connect 5999 x")
    assert "guest: connect failed: Connection reset by peer" in out, out


def test_host_connects_to_guest_listener(image, tmp_path):
    uds = str(tmp_path / "vsock")
    result = {}

    def host_side():
        sock = connect_when_listening(uds, 6000, within=60)
        if sock is None:
            return
        sock.sendall(b"ping from host")
        sock.shutdown(1)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        result["echo"] = data
        sock.close()

    t = threading.Thread(target=host_side, daemon=True)
    t.start()
    out, _, _ = boot(image, str(tmp_path), "listen 6000")
    t.join(10)
    assert result.get("echo") == b"ping from host", out
    assert "guest: echo done" in out


def test_bulk_guest_to_host_checksum(image, tmp_path):
    mib = int(os.environ.get("VSOCK_BULK_MIB", "256"))
    listener = host_listen(str(tmp_path / "vsock"), 5000)

    def digest(conn):
        h = hashlib.sha256()
        while chunk := conn.recv(1 << 20):
            h.update(chunk)
        conn.sendall(h.hexdigest().encode())

    serve_once(listener, digest)
    out, _, _ = boot(image, str(tmp_path), f"bulk 5000 {mib}", timeout=300)
    listener.close()
    assert f"guest: reply {bulk_digest(mib)}" in out, out


def test_parallel_connections(image, tmp_path):
    count = 64
    listener = host_listen(str(tmp_path / "vsock"), 5000, backlog=count)

    def accept_all():
        for _ in range(count):
            conn, _ = listener.accept()
            threading.Thread(target=echo_prefixed, args=(conn,), daemon=True).start()

    def echo_prefixed(conn):
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        conn.sendall(b"echo " + data)
        conn.close()

    threading.Thread(target=accept_all, daemon=True).start()
    out, _, _ = boot(image, str(tmp_path), f"parallel 5000 {count}")
    listener.close()
    assert f"guest: parallel ok {count}/{count}" in out, out


def test_stalled_host_reader_loses_nothing(image, tmp_path):
    mib = 8
    listener = host_listen(str(tmp_path / "vsock"), 5000)

    def slow(conn):
        time.sleep(3)  # the guest runs out of credit and waits
        h = hashlib.sha256()
        while chunk := conn.recv(1 << 20):
            h.update(chunk)
        conn.sendall(h.hexdigest().encode())

    serve_once(listener, slow)
    out, _, _ = boot(image, str(tmp_path), f"bulk 5000 {mib}")
    listener.close()
    assert f"guest: reply {bulk_digest(mib)}" in out, out


def test_guest_process_killed_mid_stream(image, tmp_path):
    listener = host_listen(str(tmp_path / "vsock"), 5000, backlog=4)

    def serve():
        first, _ = listener.accept()
        try:
            while first.recv(1 << 20):
                pass  # until the killed process's connection is reset or closed
        except OSError:
            pass
        first.close()
        second, _ = listener.accept()
        data = second.recv(100)
        second.sendall(b"host saw " + data)
        second.close()

    threading.Thread(target=serve, daemon=True).start()
    out, code, err = boot(image, str(tmp_path), "killmid 5000")
    listener.close()
    assert "guest: reply host saw after" in out, out
    assert "Traceback" not in err


def test_bulk_host_to_guest_and_back_checksum(image, tmp_path):
    """256 MiB from the host through a guest echo: both directions, bytes and order intact."""
    mib = int(os.environ.get("VSOCK_BULK_MIB", "256"))
    uds = str(tmp_path / "vsock")
    result = {}

    def host_side():
        sock = connect_when_listening(uds, 6000)
        if sock is None:
            return
        chunk = bytes(range(256)) * 4096  # 1 MiB

        def send():
            for _ in range(mib):
                sock.sendall(chunk)
            sock.shutdown(1)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        h, total = hashlib.sha256(), 0
        while data := sock.recv(1 << 20):
            h.update(data)
            total += len(data)
        sender.join(10)
        result["digest"], result["total"] = h.hexdigest(), total
        sock.close()

    t = threading.Thread(target=host_side, daemon=True)
    t.start()
    out, _, _ = boot(image, str(tmp_path), "listen 6000", timeout=600)
    t.join(30)
    expected = hashlib.sha256(bytes(range(256)) * 4096 * mib).hexdigest()
    assert result.get("total") == mib << 20, out
    assert result["digest"] == expected


def test_qemu_killed_mid_stream(image, tmp_path):
    """QEMU dies while the guest streams: the back-end cleans up and exits 1 with a clear
    message; the host side of the connection sees its end."""
    import subprocess

    from gcs.host.testguest import qemu_argv, start_backend

    listener = host_listen(str(tmp_path / "vsock"), 5000)
    listener.settimeout(120)
    backend = start_backend(str(tmp_path))
    qemu = subprocess.Popen(qemu_argv(image, str(tmp_path), "bulk 5000 100000"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn, _ = listener.accept()
        received = 0
        while received < 8 << 20:
            received += len(conn.recv(1 << 20))
        qemu.kill()
        qemu.wait(10)
        assert backend.wait(10) == 1
        conn.settimeout(10)
        while conn.recv(1 << 20):
            pass  # the back-end closed its side: EOF, not a hang
        conn.close()
    finally:
        for proc in (qemu, backend):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        listener.close()
    log = open(tmp_path / "backend.log").read()
    assert "closed the vhost-user connection" in log and "Traceback" not in log
