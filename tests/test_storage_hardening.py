"""Storage that never stalls the agent and never destroys data it was not asked to.

- Blocking calls (a 9p mount or unmount waiting for the host's server, a device that does
  not open, the SCSI unplug waiting for the kernel) run off the event loop: each test makes
  a real stall and checks that a UVM exec round trip is answered meanwhile and that the
  stuck request gets its reply in bounded time.
- EnsureFilesystem formats only a blank disk: a disk holding another filesystem is refused
  and left as it was, and one holding the requested filesystem keeps its data on re-Add.
- CombinedLayers Remove undoes the bundle bind its Add made.

The local-mode tests use real loop devices; 9p needs a kernel that has it, so those tests
run the agent in a QEMU guest (this machine's kernel has no 9p).
"""
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from gcs import aio
from gcs.host.qemu import INIT_ARGS
from gcs.protocol import hresult as hr
from gcs.storage import fsdetect, mounts, plan9

from conftest import requires_root
from uvm_env import build_image, start_vm, stop_vm
from storage_env import agent_mountinfo, env, fails, modify, sh, start_modify  # noqa: F401 - env is a fixture

EXEC_BOUND = 10.0  # an exec round trip answered within this while a storage request is stuck


def timed_exec(uvm, bound=EXEC_BOUND):
    """Run `echo alive` in the UVM; returns how long the round trip took. Fails if it is not
    answered within `bound` (the agent is stalled)."""
    result = {}

    def run():
        result["out"] = uvm.client.run(["echo", "alive"])

    start = time.monotonic()
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(bound)
    took = time.monotonic() - start
    assert not runner.is_alive(), f"an exec round trip got no answer within {bound}s: the agent is stalled"
    assert result["out"][0] == b"alive\n" and result["out"][2] == 0
    return took


def mount_points(info):
    return {line.split()[4] for line in info.splitlines() if line}


# --- detection ------------------------------------------------------------------------------

MKFS = {  # kind -> (tool, argv before the image, smallest image it takes)
    "ext2": ("mke2fs", ["mke2fs", "-q", "-F", "-t", "ext2"], 8 << 20),
    "ext3": ("mke2fs", ["mke2fs", "-q", "-F", "-t", "ext3"], 8 << 20),
    "ext4": ("mke2fs", ["mke2fs", "-q", "-F", "-t", "ext4"], 8 << 20),
    "xfs": ("mkfs.xfs", ["mkfs.xfs", "-q", "-f"], 320 << 20),
    "btrfs": ("mkfs.btrfs", ["mkfs.btrfs", "-q", "-f"], 128 << 20),
    "vfat": ("mkfs.vfat", ["mkfs.vfat"], 64 << 20),
    "swap": ("mkswap", ["mkswap"], 8 << 20),
}


def make_image(directory, kind):
    """A sparse image file holding a fresh `kind` (skips when its mkfs is not installed)."""
    tool, argv, size = MKFS[kind]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    image = os.path.join(str(directory), f"{kind}.img")
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(argv + [image], check=True, capture_output=True)
    return image


def head_digest(image, size=4 << 20):
    with open(image, "rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


@pytest.mark.parametrize("kind", sorted(MKFS))
def test_filesystems_are_identified_by_their_superblocks(tmp_path, kind):
    found = fsdetect.detect(make_image(tmp_path, kind))
    assert found is not None and found.name == kind and found.known
    assert found.fstype == {"ext2": "ext4", "ext3": "ext4", "swap": ""}.get(kind, kind)


def sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def test_blank_partitioned_encrypted_and_unknown_devices(tmp_path):
    assert fsdetect.detect(sparse(tmp_path / "blank.img", 1 << 20)) is None
    assert fsdetect.identify(b"") is None  # a device smaller than the signatures
    gpt = sparse(tmp_path / "gpt.img", 8 << 20)
    subprocess.run(["sfdisk", "-q", str(gpt)], input=b"label: gpt\n,,L\n", check=True, capture_output=True)
    assert fsdetect.detect(str(gpt)).name == "a GPT partition table"
    dos = sparse(tmp_path / "dos.img", 8 << 20)
    subprocess.run(["sfdisk", "-q", str(dos)], input=b"label: dos\n,,L\n", check=True, capture_output=True)
    assert fsdetect.detect(str(dos)).name == "a DOS partition table"
    # a LUKS1/LUKS2 header: magic, version (no cryptsetup here)
    luks = b"LUKS\xba\xbe" + struct.pack(">H", 2) + b"\0" * 4096
    assert fsdetect.identify(luks) == fsdetect.Found("crypto_LUKS", "")
    junk = bytes(5000) + b"\x01"
    found = fsdetect.identify(junk)
    assert not found.known and not found.fstype and "offset 5000" in found.name
    ext4 = fsdetect.Found("ext4", "ext4")
    assert fsdetect.compatible(ext4, "ext4") and fsdetect.compatible(fsdetect.Found("ext2", "ext4"), "ext4")
    assert not fsdetect.compatible(ext4, "xfs") and not fsdetect.compatible(fsdetect.Found("swap", ""), "swap")


# --- EnsureFilesystem on real loop devices -------------------------------------------------------

@requires_root
@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_ensure_filesystem_keeps_the_data_of_a_disk_that_has_the_filesystem(env, kind):
    env.add_controller(0, 0)
    env.add_scsi_disk(0, 1, make_image(env.images, kind))
    uvm = env.start()
    disk = {"MountPath": "/run/mounts/scsi/m1", "Lun": 1, "EnsureFilesystem": True, "Filesystem": kind}
    modify(uvm, "MappedVirtualDisk", disk)
    assert sh(uvm, "echo kept > /run/mounts/scsi/m1/file && sync")[0] == 0
    modify(uvm, "MappedVirtualDisk", disk, "Remove")
    modify(uvm, "MappedVirtualDisk", disk)  # the host's re-Add: upstream reformats the disk here
    assert sh(uvm, "cat /run/mounts/scsi/m1/file") == (0, "kept\n")
    code, out = sh(uvm, "grep ' /run/mounts/scsi/m1 ' /proc/mounts")
    assert code == 0 and f" {kind} rw" in out
    modify(uvm, "MappedVirtualDisk", disk, "Remove")


@requires_root
@pytest.mark.parametrize("kind", ["xfs", "btrfs", "vfat", "swap"])
def test_ensure_filesystem_refuses_a_disk_holding_another_filesystem(env, kind):
    image = make_image(env.images, kind)
    before = head_digest(image)
    env.add_controller(0, 0)
    env.add_scsi_disk(0, 2, image)
    uvm = env.start()
    disk = {"MountPath": "/run/gcs/c/c1", "Lun": 2, "EnsureFilesystem": True, "Filesystem": "ext4"}
    err = fails(uvm, "MappedVirtualDisk", disk)
    assert err.hresult == hr.INVALID_STATE, err
    assert f"holds {kind}, not the requested ext4" in str(err) and "refusing to format" in str(err)
    assert sh(uvm, "test -e /run/gcs/c/c1")[0] != 0  # nothing made, nothing mounted
    assert head_digest(image) == before  # the disk is as it was
    log = open(uvm.log_path).read()
    assert "formatting disk" not in log


@requires_root
def test_a_requested_filesystem_that_the_disk_does_not_hold_is_named(env):
    env.add_controller(0, 0)
    env.add_scsi_disk(0, 3, env.scratch("ext4"))
    uvm = env.start()
    err = fails(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/m3", "Lun": 3, "Filesystem": "xfs"})
    assert err.hresult == hr.INVALID_STATE and "holds ext4, not the requested xfs" in str(err)
    # with no Filesystem the detected one is used
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/m3", "Lun": 3})
    assert sh(uvm, "grep -c ' /run/mounts/scsi/m3 ext4 ' /proc/mounts") == (0, "1\n")


# --- CombinedLayers Remove and the bundle bind --------------------------------------------------

@requires_root
def test_combined_layers_remove_undoes_the_bundle_bind(env):
    env.add_pmem(0, env.layer("base", {"f": "base\n"}))
    env.add_controller(0, 0)
    scratch_dev = env.add_scsi_disk(0, 1, env.scratch("scratch"))
    uvm = env.start()
    modify(uvm, "VPMemDevice", {"MountPath": "/run/layers/p0"})
    scratch = {"MountPath": "/run/mounts/scsi/m1", "Lun": 1, "EnsureFilesystem": True, "Filesystem": "ext4"}
    modify(uvm, "MappedVirtualDisk", scratch)
    bundle = "/run/gcs/pods/p1/c1"  # the v2 layout: the scratch is outside the bundle
    root = f"{bundle}/rootfs"
    modify(uvm, "CombinedLayers", {"ContainerID": "c1", "ContainerRootPath": root,
                                   "Layers": [{"Path": "/run/layers/p0"}],
                                   "ScratchPath": "/run/mounts/scsi/m1/scratch/p1/c1"})
    assert {root, bundle} <= mount_points(agent_mountinfo(uvm))
    assert sh(uvm, f"echo cfg > {bundle}/config.json && cat /run/mounts/scsi/m1/scratch/p1/c1/bundle/config.json "
                   f"{root}/f") == (0, "cfg\nbase\n")
    modify(uvm, "CombinedLayers", {"ContainerRootPath": root}, "Remove")
    left = mount_points(agent_mountinfo(uvm))
    assert root not in left and bundle not in left, "the overlay or the bundle bind is still mounted"
    # nothing holds the scratch disk any more: its unmount leaves no mount of the device behind
    modify(uvm, "MappedVirtualDisk", scratch, "Remove")
    rdev = os.stat(scratch_dev).st_rdev
    device = f"{os.major(rdev)}:{os.minor(rdev)}"
    assert [line for line in agent_mountinfo(uvm).splitlines() if line.split()[2] == device] == []
    modify(uvm, "VPMemDevice", {"MountPath": "/run/layers/p0"}, "Remove")


# --- stalls in local mode -----------------------------------------------------------------------

@requires_root
def test_scsi_unplug_waiting_for_the_kernel_does_not_stall_the_agent(env):
    env.add_controller(0, 0)
    env.add_scsi_disk(0, 3, env.scratch("d"))
    delete = os.path.join(env.scsi_dir(0, 3), "delete")
    os.unlink(delete)
    os.mkfifo(delete)  # its open blocks until a reader comes, as the real write waits for the disk to go
    uvm = env.start()
    pending = start_modify(uvm, "SCSIDevice", {"Lun": 3}, "Remove")
    reader = None
    try:
        took = timed_exec(uvm)
        print(f"exec round trip while the unplug is stuck: {took * 1000:.0f} ms")
        assert not pending.event.is_set()  # still waiting for the "kernel"
    finally:
        reader = os.open(delete, os.O_RDONLY | os.O_NONBLOCK)  # let the write through
    try:
        reply = uvm.bridge.wait_reply(pending, 10)
        assert reply["Result"] == 0, reply
        assert os.read(reader, 16) == b"1\n"
    finally:
        os.close(reader)


@requires_root
def test_a_device_that_never_opens_fails_in_bounded_time(env):
    env.add_controller(0, 0)
    os.makedirs(os.path.join(env.scsi_dir(0, 2), "block", "sdq"))
    node = os.path.join(env.images, "sdq")
    os.mkfifo(node)  # a node whose open never returns
    os.symlink(node, os.path.join(env.dev_root, "dev", "sdq"))
    wait = 3.0
    uvm = env.start(wait=wait)
    start = time.monotonic()
    pending = start_modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/q", "Lun": 2})
    try:
        took = timed_exec(uvm)
        print(f"exec round trip while the device open is stuck: {took * 1000:.0f} ms")
        assert took < wait and not pending.event.is_set()
        reply = uvm.bridge.wait_reply(pending, wait + 10)
        elapsed = time.monotonic() - start
        assert reply["Result"] & 0xFFFFFFFF == hr.ERROR_NOT_FOUND and "did not open within" in reply["ErrorMessage"], reply
        assert wait - 0.5 < elapsed < wait + 3
    finally:
        try:  # release the worker still in open()
            os.close(os.open(node, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert sh(uvm, "test -e /run/mounts/scsi/q")[0] != 0


# --- a mount that finishes after its request gave up ---------------------------------------------

def test_a_plan9_mount_that_finishes_late_is_undone(monkeypatch, tmp_path):
    """The mount thread ignores the hang-up and succeeds later: it is unmounted, its directory
    removed and its socket closed; the path is busy meanwhile."""
    calls = []
    finish = threading.Event()

    def slow_mount(source, target, fstype, flags=0, data=None):
        finish.wait(10)
        calls.append(("mount", target))

    monkeypatch.setattr(mounts, "mount", slow_mount)
    monkeypatch.setattr(mounts, "unmount", lambda target: calls.append(("unmount", target)))
    monkeypatch.setattr(plan9, "ABORT_GRACE", 0.1)
    path = str(tmp_path / "share")
    os.mkdir(path)
    ours, host = socket.socketpair()
    busy = set()

    async def scenario():
        with pytest.raises(hr.GcsError) as err:
            await plan9.mount(path, ours, 0, "", 0.2, [path], busy)
        assert err.value.hresult == hr.VMCOMPUTE_TIMEOUT and "did not answer within 0.2s" in str(err.value)
        assert busy == {path} and calls == [] and ours.fileno() != -1
        host.settimeout(5)
        assert host.recv(1) == b""  # hung up
        finish.set()
        deadline = time.monotonic() + 5
        while busy and time.monotonic() < deadline:
            await aio.sleep(0.01)

    try:
        aio.get_loop().run_until_complete(scenario())
    finally:
        finish.set()
        host.close()
    assert calls == [("mount", path), ("unmount", path)]
    assert not busy and ours.fileno() == -1 and not os.path.exists(path)


# --- 9p in a QEMU guest ---------------------------------------------------------------------------

QEMU_WAIT = 6.0  # the agent's --device-wait: the bound of a 9p mount or unmount


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("QEMU is not installed")
    build_image()
    u = start_vm(tmp_path_factory.mktemp("uvm"), init_args=INIT_ARGS.format(loglevel="debug") +
                 f" --device-wait {QEMU_WAIT:g}")
    try:
        wait_for_9p(u)
        yield u
    finally:
        stop_vm(u)


def wait_for_9p(vm, timeout=120.0):
    """/init loads the filesystem modules in the background: wait until 9p is there, so the
    bound measured is the mount's, not the module load's (slow under TCG)."""
    deadline = time.monotonic() + timeout
    while b"9p" not in vm.client.run(["cat", "/proc/filesystems"])[0]:
        assert time.monotonic() < deadline, "the guest never got 9p"
        time.sleep(0.2)


def guest_mounts(vm):
    out, _, _ = vm.client.run(["cat", "/proc/mounts"])
    return out.decode()


def read_to_end(conn, timeout=10.0):
    """What the peer sent until it ended the connection (fails if it does not within timeout)."""
    conn.settimeout(timeout)
    data = b""
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk


class SilentServer:
    """A host "9p server" that accepts connections and never writes a byte."""

    def __init__(self, vm):
        from vmbus.hybrid import host_listen
        self.listener = host_listen(vm.vsock_path, 564)
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        try:
            while True:
                self.conns.append(self.listener.accept()[0])
        except OSError:
            return

    def close(self):
        self.listener.close()
        for conn in self.conns:
            conn.close()


def start_diod(vm, share, log):
    from vmbus.hybrid import port_path
    sock = port_path(vm.vsock_path, 564)
    if os.path.exists(sock):
        os.unlink(sock)
    server = subprocess.Popen(["diod", "-f", "-n", "-S", "-U", "root", "-l", sock, "-e", str(share), "-L", str(log)])
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def stop_diod(server, vm):
    from vmbus.hybrid import port_path
    server.send_signal(signal.SIGCONT)
    server.terminate()
    server.wait(10)
    try:
        os.unlink(port_path(vm.vsock_path, 564))
    except FileNotFoundError:
        pass


@pytest.mark.skipif(shutil.which("diod") is None, reason="diod is not installed")
def test_plan9_mount_with_a_silent_server_fails_in_bounded_time(vm, tmp_path):
    settings = {"MountPath": "/run/mounts/plan9/silent", "Port": 564, "ShareName": str(tmp_path)}
    server = SilentServer(vm)
    try:
        start = time.monotonic()
        pending = start_modify(vm, "MappedDirectory", settings)
        deadline = time.monotonic() + 10
        while not server.conns and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.conns, "the agent did not dial the Plan 9 port"
        took = timed_exec(vm)
        print(f"exec round trip while the 9p mount is stuck: {took * 1000:.0f} ms")
        assert not pending.event.is_set()  # the mount is still waiting for the server
        reply = vm.bridge.wait_reply(pending, QEMU_WAIT + 20)
        elapsed = time.monotonic() - start
        print(f"stuck 9p mount answered after {elapsed:.1f} s")
        assert reply["Result"] & 0xFFFFFFFF == hr.VMCOMPUTE_TIMEOUT and "did not answer within" in reply["ErrorMessage"], reply
        assert elapsed < QEMU_WAIT + plan9.ABORT_GRACE + 3
        assert read_to_end(server.conns[0]).startswith(b"\x15\0\0\0d")  # a Tversion, then the hang-up
    finally:
        server.close()
    assert "/run/mounts/plan9/silent" not in guest_mounts(vm)
    # the mount thread has ended: the same path mounts at once from a server that answers
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_text("served\n")
    diod = start_diod(vm, share, tmp_path / "diod.log")
    try:
        settings["ShareName"] = str(share)
        modify(vm, "MappedDirectory", settings)
        assert vm.client.run(["cat", "/run/mounts/plan9/silent/f"])[0] == b"served\n"
        modify(vm, "MappedDirectory", settings, "Remove")
    finally:
        stop_diod(diod, vm)


@pytest.mark.skipif(shutil.which("diod") is None, reason="diod is not installed")
def test_plan9_unmount_with_a_stopped_server_completes(vm, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_text("x\n")
    settings = {"MountPath": "/run/mounts/plan9/stopped", "Port": 564, "ShareName": str(share)}
    diod = start_diod(vm, share, tmp_path / "diod.log")
    try:
        modify(vm, "MappedDirectory", settings)
        assert vm.client.run(["cat", "/run/mounts/plan9/stopped/f"])[0] == b"x\n"
        diod.send_signal(signal.SIGSTOP)  # the server stops answering: the unmount's clunks wait
        start = time.monotonic()
        pending = start_modify(vm, "MappedDirectory", settings, "Remove")
        took = timed_exec(vm)
        print(f"exec round trip while the 9p unmount is stuck: {took * 1000:.0f} ms")
        assert not pending.event.is_set()  # the unmount is still waiting for the server
        reply = vm.bridge.wait_reply(pending, QEMU_WAIT + 20)
        elapsed = time.monotonic() - start
        print(f"stuck 9p unmount answered after {elapsed:.1f} s")
        assert reply["Result"] == 0, reply
        assert elapsed < QEMU_WAIT + plan9.ABORT_GRACE + 3
    finally:
        stop_diod(diod, vm)
    assert "/run/mounts/plan9/stopped" not in guest_mounts(vm)
    out, _, code = vm.client.run(["test", "-e", "/run/mounts/plan9/stopped"])
    assert code != 0
