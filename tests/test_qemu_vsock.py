"""The vhost-user-vsock back-end against the real Linux virtio-vsock driver: a Debian kernel
and a small initrd (initrd/build.py) booted by QEMU under TCG with `vhost-user-vsock-pci`."""
import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

from gcs.host.launcher import REPO_ROOT, agent_env
from vmbus.hybrid import host_connect, host_listen

IMAGE = os.path.join(REPO_ROOT, "build", "uvm")


@pytest.fixture(scope="module")
def image():
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "initrd", "build.py"), "--out", IMAGE], check=True,
                   capture_output=True, timeout=600)
    return IMAGE


def boot(image, tmp, command, timeout=120):
    """Boot the test guest running `command`; returns (console output, backend rc, backend stderr)."""
    sock, uds = os.path.join(tmp, "vhu.sock"), os.path.join(tmp, "vsock")
    errlog = open(os.path.join(tmp, "backend.log"), "wb")
    backend = subprocess.Popen([sys.executable, "-m", "vmbus.vhost_user_vsock", "--socket", sock, "--uds-path", uds,
                                "--guest-cid", "3"], env=agent_env(), stderr=errlog)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert time.monotonic() < deadline and backend.poll() is None, "backend did not start"
            time.sleep(0.01)
        out = subprocess.run(
            ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-machine", "q35,memory-backend=mem",
             "-bios", "/usr/share/qemu/qboot.rom", "-smp", "1", "-m", "512M",
             "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-nodefaults", "-no-user-config",
             "-nographic", "-serial", "stdio", "-no-reboot", "-chardev", f"socket,id=c,path={sock}",
             "-device", "vhost-user-vsock-pci,chardev=c", "-kernel", os.path.join(image, "vmlinux"),
             "-initrd", os.path.join(image, "initrd.cpio"),
             "-append", f"console=ttyS0 quiet panic=-1 mitigations=off -- {command}"],
            capture_output=True, text=True, timeout=timeout).stdout
        code = backend.wait(10)
    finally:
        if backend.poll() is None:
            backend.kill()
            backend.wait()
        errlog.close()
    return out, code, open(os.path.join(tmp, "backend.log")).read()


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
    out, code, err = boot(image, str(tmp_path), "python3 /opt/pygcs/guest_vsock.py connect 5000 hello")
    listener.close()
    assert "guest: reply host got hello" in out, out
    # QEMU powered off: the back-end notices, cleans up and says why, with a non-zero exit
    assert code == 1 and "closed the vhost-user connection" in err


def test_rst_when_nobody_listens_on_the_host(image, tmp_path):
    out, _, _ = boot(image, str(tmp_path), "python3 /opt/pygcs/guest_vsock.py connect 5999 x")
    assert "guest: connect failed: Connection reset by peer" in out, out


def test_host_connects_to_guest_listener(image, tmp_path):
    uds = str(tmp_path / "vsock")
    result = {}

    def host_side():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                sock = host_connect(uds, 6000, timeout=1)
            except OSError:
                time.sleep(0.2)  # the guest is still booting (the back-end answers RST)
                continue
            sock.sendall(b"ping from host")
            sock.shutdown(1)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            result["echo"] = data
            sock.close()
            return

    t = threading.Thread(target=host_side, daemon=True)
    t.start()
    out, _, _ = boot(image, str(tmp_path), "python3 /opt/pygcs/guest_vsock.py listen 6000")
    t.join(10)
    assert result.get("echo") == b"ping from host", out
    assert "guest: echo done" in out


def test_bulk_guest_to_host_checksum(image, tmp_path):
    mib = int(os.environ.get("VSOCK_BULK_MIB", "16"))
    listener = host_listen(str(tmp_path / "vsock"), 5000)

    def digest(conn):
        h = hashlib.sha256()
        while chunk := conn.recv(1 << 20):
            h.update(chunk)
        conn.sendall(h.hexdigest().encode())

    serve_once(listener, digest)
    out, _, _ = boot(image, str(tmp_path), f"python3 /opt/pygcs/guest_vsock.py bulk 5000 {mib}", timeout=300)
    listener.close()
    expected = hashlib.sha256()
    chunk = bytes(range(256)) * 256
    for _ in range(mib * 16):
        expected.update(chunk)
    assert f"guest: reply {expected.hexdigest()}" in out, out
