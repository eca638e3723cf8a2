"""Booting the utility VM under QEMU and holding its host side, as HCS does on Windows.

A UVM directory holds everything of one VM: the hybrid vsock sockets (`vsock`, `vsock_<port>`)
served by the project's vhost-user-vsock back-end, the QMP sockets (`qmp.sock` for this
launcher, `qmp-user.sock` free for anyone else), the serial console log (`console.log`), the
agent's JSON log stream from vsock port 109 (`gcs.log`) and QEMU's own stderr (`qemu.log`).

Like hcsshim's host, the launcher listens on the entropy port (1), the log port (109) and
the bridge port (0x40000000) before the VM starts; with `bridge=False` it leaves the bridge
and stdio ports to any other host implementation that listens on the same paths.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from gcs.host.bridge_client import HostBridge
from gcs.host.launcher import REPO_ROOT, BridgeHost, agent_env
from gcs.host.processes import ProcessClient
from gcs.protocol.ids import BRIDGE_PORT
from vmbus.hybrid import host_listen, port_path

IMAGE_DIR = os.path.join(REPO_ROOT, "build", "uvm")
ENTROPY_PORT = 1
LOG_PORT = 109
GUEST_CID = 3
QEMU = "qemu-system-x86_64"
# The QEMU-specific part of the kernel command line (Hyper-V's console, PCI and vsock
# options of hcsshim's line would switch off exactly what QEMU gives the guest). Each of the
# rest saves boot time under TCG: no bounce buffers, no clocksource watchdog, no PS/2 probing,
# no crypto self-tests (~0.6 s together), and no SCSI bus scan (~0.13 s; every disk is
# hot-added, and virtio-scsi adds a hot-plugged LUN by itself).
KERNEL_ARGS = ("console=ttyS0 quiet panic=-1 mitigations=off swiotlb=noforce tsc=reliable no_timer_check "
               "i8042.noaux i8042.nomux i8042.nopnp i8042.nokbd cryptomgr.notests scsi_mod.scan=none")
# What hcsshim puts after `--` (protocol.md 7.2), unchanged.
INIT_ARGS = "-e 1 /bin/vsockexec -e 109 /bin/gcs -v4 -log-format json -loglevel {loglevel}"
PMEM_SLOTS = 8      # PCIe root ports kept free for hot-added virtio-pmem devices
KVM_TRIAL = 30.0    # seconds a KVM boot gets to reach the agent before TCG is tried
SCSI_CONTROLLERS = 1
NIC_PORT_CHASSIS = 64  # chassis numbers of the root ports kept free for hot-plugged NICs


@dataclass(frozen=True)
class UserNic:
    """A virtio-net NIC on QEMU user networking (slirp) with `restrict=on`: the guest reaches
    nothing outside but what `guestfwd` forwards ("tcp:GUEST_IP:PORT-cmd:PROGRAM ARGS" or
    "...-tcp:127.0.0.1:PORT") and is reached only through `hostfwd` ("tcp:127.0.0.1:HPORT-:GPORT").
    Never a tap or bridge. The guest side is slirp's: 10.0.2.15/24, gateway 10.0.2.2."""
    mac: str
    id: str = "net0"
    guestfwd: tuple[str, ...] = ()
    hostfwd: tuple[str, ...] = ()

    def netdev_arg(self) -> str:
        esc = [f.replace(",", ",,") for f in self.guestfwd]  # QEMU's option syntax doubles commas
        return ",".join([f"user,id={self.id}", "restrict=on", *(f"hostfwd={h}" for h in self.hostfwd),
                         *(f"guestfwd={g}" for g in esc)])

    def device_arg(self, bus: str = "") -> str:
        return (f"virtio-net-pci,netdev={self.id},mac={self.mac},id={self.id}-dev,romfile="
                + (f",bus={bus}" if bus else ""))


def nic_argv(nics: Sequence[UserNic], hotplug_slots: int) -> list[str]:
    """QEMU arguments for the NICs present at boot and root ports for hot-plugged ones
    (`Hotplug.add_nic`)."""
    argv: list[str] = []
    for nic in nics:
        argv += ["-netdev", nic.netdev_arg(), "-device", nic.device_arg()]
    for i in range(hotplug_slots):
        argv += ["-device", f"pcie-root-port,id=nicport{i},bus=pcie.0,chassis={NIC_PORT_CHASSIS + i}"]
    return argv


class UvmError(Exception):
    """The UVM could not be booted or reached; the message says why and where to look."""


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(nothing)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def kvm_usable() -> bool:
    """KVM where it can run a stock kernel: /dev/kvm opens and the CPU has VT-x/AMD-V. (A
    PVM-only /dev/kvm, as on this project's machines, has no vmx/svm flag.) The boot itself
    is the final test: `QemuUvm(accel="auto")` falls back to TCG when a KVM boot fails."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def check_image(image_dir: str) -> tuple[str, str]:
    kernel, initrd = os.path.join(image_dir, "vmlinux"), os.path.join(image_dir, "initrd.img")
    for path, what in ((kernel, "kernel"), (initrd, "initrd")):
        if not os.path.isfile(path):
            raise UvmError(f"no UVM {what} at {path}: build the image with `python3 initrd/build.py` "
                           f"(or `make uvm`)")
        if os.path.getsize(path) < 4096:
            raise UvmError(f"the UVM {what} {path} is truncated ({os.path.getsize(path)} bytes)")
    return kernel, initrd


def image_with_extras(image_dir: str, out_dir: str, files: dict[str, str]) -> str:
    """A copy of the UVM image (in `out_dir`) whose initramfs has `files` (image path ->
    file here) on top, as a second archive the kernel unpacks after the first: for tests and
    benchmarks that need a program the image does not ship."""
    if os.path.join(REPO_ROOT, "initrd") not in sys.path:
        sys.path.insert(0, os.path.join(REPO_ROOT, "initrd"))
    import cpio

    kernel, initrd = check_image(image_dir)
    staging = os.path.join(out_dir, "extras")
    for dest, source in files.items():
        target = os.path.join(staging, dest.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(source, target)  # follows a symlink: the file itself goes in
    cpio.write(staging, os.path.join(out_dir, "extras.cpio"))
    image = os.path.join(out_dir, "image")
    os.makedirs(image)
    os.symlink(kernel, os.path.join(image, "vmlinux"))
    with open(os.path.join(image, "initrd.img"), "wb") as f:
        for part in (initrd, os.path.join(out_dir, "extras.cpio")):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f)
    return image


class _Acceptor(threading.Thread):
    """Accepts guest connections to one host port for the VM's lifetime."""

    def __init__(self, listener: socket.socket, handle, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.listener, self.handle = listener, handle
        self.connections = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed at shutdown
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()


class QemuUvm(BridgeHost):
    """One UVM: QEMU, its vsock back-end, the host listeners and (optionally) the bridge."""

    def __init__(self, directory: str, image_dir: str = IMAGE_DIR, memory_mb: int = 512, cpus: int = 1,
                 accel: str = "auto", loglevel: str = "info", bridge: bool = True,
                 kernel_args: str = KERNEL_ARGS, init_args: Optional[str] = None,
                 boot_timeout: float = 120.0,
                 nics: Sequence[UserNic] = (), nic_slots: int = 0) -> None:
        self.dir = os.path.abspath(directory)
        self.image_dir = image_dir
        self.memory_mb, self.cpus = memory_mb, cpus
        self.accel = accel
        self.loglevel = loglevel
        self.want_bridge = bridge
        self.kernel_args = kernel_args
        self.init_args = init_args if init_args is not None else INIT_ARGS.format(loglevel=loglevel)
        self.boot_timeout = boot_timeout
        self.nics, self.nic_slots = tuple(nics), nic_slots  # NICs at boot; root ports for hot-plugged ones
        self.vsock_path = os.path.join(self.dir, "vsock")
        self.console_log = os.path.join(self.dir, "console.log")
        self.log_path = os.path.join(self.dir, "gcs.log")
        self.qemu_log = os.path.join(self.dir, "qemu.log")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.user_qmp_path = os.path.join(self.dir, "qmp-user.sock")
        self.proc: Optional[subprocess.Popen] = None
        self.backend: Optional[subprocess.Popen] = None
        self.bridge: Optional[HostBridge] = None
        self.client: Optional[ProcessClient] = None
        self.hotplug = None  # gcs.host.hotplug.Hotplug once QEMU runs
        self.started_at = 0.0
        self.timings: dict[str, float] = {}
        self.failed_accels: list[tuple[str, str]] = []  # (accel, why) of boots that did not work
        self.accel_used = ""
        self._listeners: dict[int, socket.socket] = {}
        self._acceptors: dict[int, _Acceptor] = {}
        self._log_lock = threading.Lock()

    # --- boot -------------------------------------------------------------------------
    def start(self, negotiate: bool = True) -> "QemuUvm":
        kernel, initrd = check_image(self.image_dir)
        if shutil.which(QEMU) is None:
            raise UvmError(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
        os.makedirs(self.dir, exist_ok=True)
        for leftover in ("vsock", "vhu.sock", "qmp.sock", "qmp-user.sock"):
            try:
                os.unlink(os.path.join(self.dir, leftover))
            except FileNotFoundError:
                pass
        try:
            self._listen(ENTROPY_PORT, _serve_entropy, "entropy")
            self._listen(LOG_PORT, self._collect_log, "log")
            if self.want_bridge:
                self._listeners[BRIDGE_PORT] = host_listen(self.vsock_path, BRIDGE_PORT)
            accels = ["kvm", "tcg"] if self.accel == "auto" and kvm_usable() else \
                ["tcg" if self.accel == "auto" else self.accel]
            for i, accel in enumerate(accels):
                try:
                    self._start_backend()
                    self._start_qemu(kernel, initrd, accel)
                    if i + 1 < len(accels):
                        self._wait_for_agent_log(KVM_TRIAL)  # a KVM that cannot run the kernel: try TCG
                    break
                except UvmError as err:
                    if i + 1 == len(accels):
                        raise
                    self.failed_accels.append((accel, str(err).splitlines()[0]))
                    self._kill_qemu()
                    self._stop_backend()
            if self.want_bridge:
                self._accept_first_bridge(self.boot_timeout)
            if self.want_bridge and negotiate:
                assert self.bridge is not None
                self.bridge.negotiate()
                self.timings["negotiated"] = time.monotonic() - self.started_at
        except BaseException:
            self.stop()
            raise
        return self

    def _start_backend(self) -> None:
        sock = os.path.join(self.dir, "vhu.sock")
        try:
            os.unlink(sock)  # a previous back-end's: QEMU must find the new one listening
        except FileNotFoundError:
            pass
        errlog = open(os.path.join(self.dir, "backend.log"), "ab")
        self.backend = subprocess.Popen(
            [sys.executable, "-m", "vmbus.vhost_user_vsock", "--socket", sock, "--uds-path", self.vsock_path,
             "--guest-cid", str(GUEST_CID)], env=agent_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=errlog)
        errlog.close()
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if self.backend.poll() is not None or time.monotonic() > deadline:
                raise UvmError(f"the vhost-user-vsock back-end did not start:\n"
                               f"{tail(os.path.join(self.dir, 'backend.log'))}")
            time.sleep(0.01)

    def _stop_backend(self, timeout: float = 10.0) -> None:
        """The back-end ends with its QEMU; make sure it has."""
        if self.backend is not None:
            try:
                self.backend.wait(timeout)
            except subprocess.TimeoutExpired:
                self.backend.kill()
                self.backend.wait()

    def _wait_for_agent_log(self, timeout: float) -> None:
        """The guest came far enough to start /bin/vsockexec (its log connection arrived)."""
        deadline = time.monotonic() + timeout
        while self._acceptors[LOG_PORT].connections == 0:
            self._check_alive()
            if time.monotonic() > deadline:
                raise UvmError(f"no agent log connection within {timeout:g} s:\n{tail(self.console_log)}")
            time.sleep(0.05)

    def _listen(self, port: int, handle, name: str) -> None:
        listener = host_listen(self.vsock_path, port, backlog=8)
        self._listeners[port] = listener
        acceptor = _Acceptor(listener, handle, name)
        acceptor.start()
        self._acceptors[port] = acceptor

    def qemu_argv(self, kernel: str, initrd: str, accel: str) -> list[str]:
        mem = f"{self.memory_mb}M"
        argv = [QEMU, "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
                "-machine", "q35,memory-backend=mem", "-bios", "/usr/share/qemu/qboot.rom",
                "-smp", str(self.cpus), "-m", f"{mem},slots={PMEM_SLOTS},maxmem=64G",
                # vhost-user needs all guest RAM in shared, fd-backed memory
                "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-chardev", f"file,id=console,path={self.console_log}", "-serial", "chardev:console",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-qmp", f"unix:{self.user_qmp_path},server=on,wait=off",
                "-chardev", f"socket,id=vhu,path={os.path.join(self.dir, 'vhu.sock')}",
                "-device", "vhost-user-vsock-pci,chardev=vhu"]
        for i in range(SCSI_CONTROLLERS):
            argv += ["-device", f"virtio-scsi-pci,id=scsi{i}"]
        for i in range(PMEM_SLOTS):
            argv += ["-device", f"pcie-root-port,id=pmemport{i},bus=pcie.0,chassis={i + 1}"]
        argv += ["-kernel", kernel, "-initrd", initrd, "-append", f"{self.kernel_args} -- {self.init_args}"]
        argv += nic_argv(self.nics, self.nic_slots)
        return argv

    def _start_qemu(self, kernel: str, initrd: str, accel: str) -> None:
        for fresh in (self.console_log, self.log_path):  # this VM's logs (an agent restart appends)
            open(fresh, "wb").close()
        err = open(self.qemu_log, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.qemu_argv(kernel, initrd, accel), stdin=subprocess.DEVNULL,
                                     stdout=err, stderr=err)
        err.close()
        self.accel_used = accel
        from gcs.host.hotplug import Hotplug
        deadline = time.monotonic() + 20
        while True:
            self._check_alive()
            if os.path.exists(self.qmp_path):
                try:
                    self.hotplug = Hotplug(self.qmp_path, self.dir)
                    self.hotplug.nic_slots = self.nic_slots
                    return
                except Exception:  # noqa: BLE001 - QEMU still starting, or already dying: look again
                    pass
            if time.monotonic() > deadline:
                raise UvmError(f"QEMU answered no QMP within 20 s:\n{tail(self.qemu_log)}")
            time.sleep(0.01)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise UvmError(f"QEMU exited early (status {self.proc.returncode}):\n{tail(self.qemu_log)}\n"
                           f"serial console:\n{tail(self.console_log)}")

    def _accept_first_bridge(self, timeout: float) -> None:
        self.bridge = self.accept_bridge(timeout)
        self.timings["bridge_connected"] = time.monotonic() - self.started_at
        self.client = ProcessClient(self.bridge, self.vsock_path)

    def accept_bridge(self, timeout: float = 60.0) -> HostBridge:
        """The agent's (next) dial of the bridge port; errors say what QEMU or the guest did."""
        listener = self._listeners[BRIDGE_PORT]
        deadline = time.monotonic() + timeout
        listener.settimeout(0.2)
        while True:
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return HostBridge.over_socket(conn)
            except socket.timeout:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise UvmError(f"the guest agent did not connect within {timeout:g} s; serial console:\n"
                                   f"{tail(self.console_log)}\nagent log:\n{tail(self.log_path, 10)}") from None

    def _collect_log(self, conn: socket.socket) -> None:
        """The agent's stderr: JSON lines, appended to gcs.log (each agent start connects anew)."""
        with open(self.log_path, "ab", buffering=0) as out:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                with self._log_lock:
                    out.write(data)

    # --- teardown ---------------------------------------------------------------------
    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _kill_qemu(self) -> None:
        if self.hotplug is not None:
            self.hotplug.close()
            self.hotplug = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Power the VM off if it still runs (QMP quit, then kill) and release everything."""
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        if self.proc is not None and self.proc.poll() is None and self.hotplug is not None:
            try:
                self.hotplug.quit()
                self.proc.wait(timeout)
            except Exception:  # noqa: BLE001 - QMP gone or QEMU stuck: kill below
                pass
        self._kill_qemu()
        for port, listener in self._listeners.items():
            listener.close()
            try:
                os.unlink(port_path(self.vsock_path, port))
            except OSError:
                pass
        self._listeners.clear()
        self._stop_backend(timeout)
        return self.proc.returncode if self.proc is not None else None

    def __enter__(self) -> "QemuUvm":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_entropy(conn: socket.socket) -> None:
    """What hcsshim's host does on port 1: 512 random bytes, then close."""
    conn.sendall(os.urandom(512))
