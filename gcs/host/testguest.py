"""Booting the UVM image (initrd/build.py) as a bare test guest under QEMU with the
vhost-user-vsock back-end and nothing else, for the back-end's tests and benchmarks: the
guest runs `initrd/guest_vsock.py` (added as a second initramfs archive, which the kernel
unpacks over the first) instead of the agent. TCG by default (this project's machines cannot
run a stock kernel under their KVM)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from gcs.host.launcher import REPO_ROOT, agent_env

IMAGE = os.path.join(REPO_ROOT, "build", "uvm")


def connect_when_listening(uds: str, port: int, within: float = 120.0):
    """Connect to the guest's listener on port once it exists (while the guest boots, the
    back-end answers with a reset); None if it never does within `within` seconds."""
    from vmbus.hybrid import host_connect

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            return host_connect(uds, port, timeout=20)
        except OSError:
            time.sleep(0.2)
    return None


TEST_INITRD = "test-initrd.img"
GUEST_PROGRAM = "/opt/test/guest_vsock.py"


def build_image(out: str = IMAGE) -> str:
    """The UVM image plus the test program; returns the image directory."""
    res = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "initrd", "build.py"), "--out", out],
                         capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        raise RuntimeError(f"building the UVM image failed:\n{res.stderr[-3000:]}")
    sys.path.insert(0, os.path.join(REPO_ROOT, "initrd"))
    import cpio

    staging = os.path.join(out, "test-root")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(os.path.join(staging, "opt", "test"))
    shutil.copy(os.path.join(REPO_ROOT, "initrd", "guest_vsock.py"), os.path.join(staging, GUEST_PROGRAM.lstrip("/")))
    cpio.write(staging, os.path.join(out, "test-extra.cpio"))
    with open(os.path.join(out, TEST_INITRD), "wb") as f:
        for part in ("initrd.img", "test-extra.cpio"):
            with open(os.path.join(out, part), "rb") as src:
                shutil.copyfileobj(src, f)
    return out


def guest_command(args: str) -> str:
    """The init arguments that run the test program once and power off."""
    return f'/bin/sh -c "python3 {GUEST_PROGRAM} {args}; echo guest: done $?; poweroff -f"'


def start_backend(tmp: str, cpu_report: bool = False) -> subprocess.Popen:
    sock, uds = os.path.join(tmp, "vhu.sock"), os.path.join(tmp, "vsock")
    argv = [sys.executable, "-m", "vmbus.vhost_user_vsock", "--socket", sock, "--uds-path", uds, "--guest-cid", "3"]
    if cpu_report:
        argv = ["/usr/bin/time", "-f", "BACKEND_CPU %U %S %e"] + argv
    errlog = open(os.path.join(tmp, "backend.log"), "wb")
    proc = subprocess.Popen(argv, env=agent_env(), stderr=errlog)
    errlog.close()
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the vhost-user-vsock back-end did not start")
        time.sleep(0.01)
    return proc


def qemu_argv(image: str, tmp: str, command: str) -> list[str]:
    return ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-machine", "q35,memory-backend=mem",
            "-bios", "/usr/share/qemu/qboot.rom", "-smp", "1", "-m", "512M",
            "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-no-reboot",
            "-chardev", f"socket,id=c,path={os.path.join(tmp, 'vhu.sock')}",
            "-device", "vhost-user-vsock-pci,chardev=c", "-kernel", os.path.join(image, "vmlinux"),
            "-initrd", os.path.join(image, TEST_INITRD),
            "-append", f"console=ttyS0 quiet panic=-1 mitigations=off -- {guest_command(command)}"]


def boot(image: str, tmp: str, command: str, timeout: float = 120, cpu_report: bool = False):
    """Boot the guest running the test program with `command` (its arguments); returns (console output, back-end rc, back-end log)."""
    backend = start_backend(tmp, cpu_report)
    try:
        out = subprocess.run(qemu_argv(image, tmp, command), capture_output=True, text=True, timeout=timeout).stdout
        code = backend.wait(10)
    finally:
        if backend.poll() is None:
            backend.kill()
            backend.wait()
    with open(os.path.join(tmp, "backend.log")) as f:
        return out, code, f.read()
