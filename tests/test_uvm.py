"""The agent itself as /bin/gcs in a real QEMU guest (TCG here), driven as a Hyper-V host
drives it: over vsock, with layers on hot-added virtio-pmem and scratch on hot-added
virtio-scsi disks. Only device discovery differs from Hyper-V (virtio instead of VMBus).

One UVM serves the tests of this module in order (a boot costs ~7 s under TCG); the last
ones crash the agent and shut the UVM down.
"""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from gcs.host.bridge_client import RpcError
from gcs.host.oci import ImageError, write_image
from gcs.host.run import ContainerRun, RunOptions, wait_notification
from gcs.host.samples import busybox_rootfs
from gcs.protocol.ids import RequestId
from vmbus.hybrid import port_path

from uvm_env import (TEST_INIT_ARGS, blank_disk, build_image, device_client, guest, layer, layer_cache, requires_qemu,
                     running_vm, start_vm, stop_vm)

pytestmark = requires_qemu
ERROR_NOT_FOUND = 0x80070490


@pytest.fixture(scope="module")
def image():
    return build_image()


@pytest.fixture(scope="module")
def vm(image, tmp_path_factory):
    with running_vm(tmp_path_factory.mktemp("uvm"), init_args=TEST_INIT_ARGS, loglevel="debug") as u:
        yield u


@pytest.fixture(scope="module")
def oci_image(tmp_path_factory):
    """busybox plus a layer that deletes one file and replaces another; layer images are
    cached in a directory of the test's own."""
    d = tmp_path_factory.mktemp("image")
    busybox_rootfs(str(d / "base"))
    top = d / "top"
    (top / "data").mkdir(parents=True)
    (top / "data" / ".wh.hello").write_text("")
    (top / "etc").mkdir()
    (top / "etc" / "motd").write_text("replaced by the top layer\n")
    (d / "base" / "etc" / "motd").write_text("from the base layer\n")
    write_image(str(d / "img"), [str(d / "base"), str(top)],
                {"Env": ["PATH=/bin", "GREETING=hello"], "Cmd": ["sh", "-c", "echo $GREETING"], "WorkingDir": "/data"})
    with layer_cache(d / "cache"):
        yield str(d / "img")


@pytest.fixture
def devices(vm):
    with device_client(vm) as d:
        yield d


def run_container(vm, devices, image, command, **kw):
    """Layers, scratch, Create, Start and the init with pipes; returns (run, init process)."""
    run = ContainerRun(vm.bridge, devices, vm.dir, RunOptions(image, command, **kw), report=print)
    try:
        run.create(run.prepare())
        init = vm.client.exec([], container_id=run.id, stdout=True, stderr=True, init_process=True)
    except BaseException:
        run.teardown()
        raise
    return run, init


def mounts(vm):
    return guest(vm, "cat /proc/mounts")[0]


# --- boot ------------------------------------------------------------------------------------
def wait_log(vm, text, timeout=10):
    """The agent's log arrives on its own stream (port 109), a moment after the bridge traffic."""
    deadline = time.monotonic() + timeout
    while text not in open(vm.log_path).read():
        assert time.monotonic() < deadline, f"{text!r} not in the agent's log"
        time.sleep(0.05)


def test_boot_negotiated_over_vsock_with_logs_and_entropy(vm):
    assert 0 < vm.timings["negotiated"] < 120
    wait_log(vm, "first negotiation answered")
    lines = open(vm.log_path).read().splitlines()
    records = [json.loads(line) for line in lines]  # port 109 carries JSON objects only
    started = next(r for r in records if r["msg"] == "gcs started")
    assert started["transport"] == "vsock" and started["local"] is False
    assert any(r["msg"] == "first negotiation answered" for r in records)
    console = open(vm.console_log).read()
    assert "entropy: 512 bytes from port 1" in console
    out, _, code = guest(vm, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o pid,args | grep -c 'SE /bin/gc[s]'")
    assert code == 0 and out.startswith("/init -e 1 /bin/vsockexec -e 109 /bin/gcs -v4") and out.split()[-1] == "1"


def test_uvm_process_with_stdin(vm):
    out, err, code = vm.client.run(["sh", "-c", "tr a-z A-Z; echo done >&2; exit 6"], data=b"hello from the host\n")
    assert (out, err, code) == (b"HELLO FROM THE HOST\n", b"done\n", 6)


def test_console_pty_and_window_resize(vm):
    proc = vm.client.exec(["/bin/sh"], env={"PATH": "/bin:/sbin", "PS1": "uvm# "}, stdin=True, stdout=True, tty=True)
    proc.resize(33, 111)
    proc.stdin.sendall(b"stty size; tty; exit 4\n")
    out = b""
    while chunk := proc.stdout.recv(65536):
        out += chunk
    assert proc.wait() == 4
    proc.close()
    assert b"33 111" in out and b"/dev/pts/" in out


def test_dump_stacks(vm):
    stacks = vm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "thread MainThread" in stacks and "open_fds:" in stacks and "task bridge-reader" in stacks


# --- containers -------------------------------------------------------------------------------
def test_container_from_an_image_on_pmem_and_scsi(vm, devices, oci_image):
    run, init = run_container(vm, devices, oci_image,
                              ["sh", "-c", "echo $GREETING from $(pwd); cat /etc/motd; ls /data; echo oops >&2; exit 3"])
    try:
        out, err, code = init.communicate()
        assert (out, err, code) == (b"hello from /data\nreplaced by the top layer\n", b"oops\n", 3)
        note = wait_notification(vm.bridge, run.id)
        assert note is not None and note["Type"] == "UnexpectedExit"
    finally:
        run.teardown()
    assert run.id not in mounts(vm)


def test_exec_into_a_running_container_then_shutdown(vm, devices, oci_image):
    # pid 1 of a pid namespace gets SIGTERM only with a handler: the shell traps it
    run, init = run_container(vm, devices, oci_image, ["sh", "-c", "trap 'exit 143' TERM; echo ready; sleep 1000 & wait"])
    try:
        assert init.stdout.recv(100) == b"ready\n"
        table = mounts(vm)
        layers = re.findall(r"^/dev/(pmem\d+) /run/layers/p\d+ ext4 (\S+)", table, re.M)
        scratch = re.findall(rf"^/dev/(sd[a-z]+) /run/gcs/c/{run.id} ext4 (\S+)", table, re.M)
        assert len(layers) == 2 and all(o.startswith("ro,") and "dax" in o for _, o in layers), table
        assert len(scratch) == 1 and scratch[0][1].startswith("rw,"), table
        assert f"overlay /run/gcs/c/{run.id}/rootfs overlay" in table
        proc = vm.client.exec([], container_id=run.id, stdout=True, stderr=True, oci_process={
            "args": ["sh", "-c", "hostname; head -c 5 /proc/1/cmdline; echo; id -u; pidof sleep"], "cwd": "/",
            "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}})
        out, _, code = proc.communicate()
        assert code == 0 and out.split(b"\n")[:3] == [b"ctr", b"sh\0-c", b"0"] and out.split(b"\n")[3].isdigit()
        vm.bridge.call(RequestId.SHUTDOWN_GRACEFUL, run.id)
        assert init.communicate()[2] == 128 + signal.SIGTERM  # the init's output drains first
        note = wait_notification(vm.bridge, run.id)
        assert note is not None and note["Type"] == "GracefulExit"
        disk = next(iter(vm.hotplug.scsi.values()))
    finally:
        run.teardown()
    # the scratch disk was released by the guest (SCSIDevice Remove) and unplugged: gone
    out, _, _ = guest(vm, "ls /sys/bus/scsi/devices/; cat /proc/mounts")
    assert f":0:0:{disk.lun}" not in out and run.id not in out and "/dev/sd" not in out
    assert not vm.hotplug.scsi


# --- storage only the UVM kernel has -----------------------------------------------------------
def test_dm_linear_mapped_layers_on_one_pmem_device(vm, tmp_path):
    first = layer(tmp_path / "a.img", {"which": "first layer\n"})
    second = layer(tmp_path / "b.img", {"which": "second layer\n"})
    packed = tmp_path / "packed.img"
    with open(packed, "wb") as out:
        for part in (first, second):
            out.write(open(part, "rb").read())
    number = vm.hotplug.add_pmem(str(packed))
    ranges = [(0, os.path.getsize(first)), (os.path.getsize(first), os.path.getsize(second))]
    paths = [f"/run/layers/p{number}-{off}-{size}" for off, size in ranges]

    def vpmem(request, path, off, size):
        vm.bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": request, "ResourceType": "VPMemDevice",
                       "Settings": {"DeviceNumber": number, "MountPath": path, "MappingInfo": {
                           "DeviceOffsetInBytes": off, "DeviceSizeInBytes": size}}})

    for path, (off, size) in zip(paths, ranges):
        vpmem("Add", path, off, size)
    out, _, code = guest(vm, f"cat {paths[0]}/which {paths[1]}/which; cat /sys/block/dm-*/dm/name; ls /dev/mapper")
    assert code == 0 and out.startswith("first layer\nsecond layer\n") and out.count("dm-linear-pmem") == 4
    for path, (off, size) in zip(paths, ranges):
        vpmem("Remove", path, off, size)
    out, _, _ = guest(vm, "ls /sys/block /dev/mapper; cat /proc/mounts")
    assert "dm-" not in out and f"/run/layers/p{number}-" not in out


def test_plan9_share_read_and_write(vm, tmp_path):
    share = tmp_path / "share"
    share.mkdir()
    (share / "from-host").write_text("written on the host\n")
    sock = port_path(vm.vsock_path, 564)
    # the kernel attaches as "nobody" (access=user): squash every user to root, as HCS serves it
    server = subprocess.Popen(["diod", "-f", "-n", "-S", "-U", "root", "-l", sock, "-e", str(share),
                               "-L", str(tmp_path / "diod.log")])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        settings = {"MountPath": "/run/mounts/plan9/s", "Port": 564, "ShareName": str(share), "ReadOnly": False}
        vm.bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "MappedDirectory",
                                                           "Settings": settings})
        out, _, code = guest(vm, "cat /run/mounts/plan9/s/from-host; echo from the guest > /run/mounts/plan9/s/back; "
                                 "grep ' /run/mounts/plan9/s ' /proc/mounts")
        assert code == 0 and out.startswith("written on the host\n") and " 9p " in out
        assert (share / "back").read_text() == "from the guest\n"
        vm.bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Remove", "ResourceType": "MappedDirectory",
                                                           "Settings": settings})
        assert "/run/mounts/plan9/s" not in mounts(vm)
    finally:
        server.terminate()
        server.wait(10)
        if os.path.exists(sock):
            os.unlink(sock)


def test_ensure_filesystem_formats_a_blank_disk(vm, tmp_path):
    image = blank_disk(tmp_path / "blank.img")
    disk = vm.hotplug.add_scsi(image)
    settings = {"MountPath": "/run/mounts/scsi/blank", "Controller": disk.controller, "Lun": disk.lun,
                "EnsureFilesystem": True, "Filesystem": "ext4"}

    def modify(request, resource, s):
        vm.bridge.call(RequestId.MODIFY_SETTINGS, timeout=120,
                       Request={"RequestType": request, "ResourceType": resource, "Settings": s})

    try:
        modify("Add", "MappedVirtualDisk", settings)
        _, _, code = guest(vm, "echo kept > /run/mounts/scsi/blank/file && sync")
        assert code == 0
        modify("Remove", "MappedVirtualDisk", settings)
        modify("Remove", "SCSIDevice", {"Controller": disk.controller, "Lun": disk.lun})
    finally:
        vm.hotplug.remove_scsi(disk.controller, disk.lun)
    dump = subprocess.run(["debugfs", "-R", "cat /file", image], capture_output=True, text=True)
    assert dump.stdout == "kept\n"  # a real ext4 filesystem, made in the guest


def test_hot_adds_the_guest_never_sees_fail_cleanly(vm):
    t0 = time.monotonic()
    with pytest.raises(RpcError) as err:
        vm.bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "VPMemDevice",
                       "Settings": {"DeviceNumber": 7, "MountPath": "/run/layers/p7"}})
    assert err.value.hresult == ERROR_NOT_FOUND and "/dev/pmem7" in str(err.value)
    with pytest.raises(RpcError) as err:
        vm.bridge.call(RequestId.MODIFY_SETTINGS, Request={"RequestType": "Add", "ResourceType": "MappedVirtualDisk",
                       "Settings": {"MountPath": "/run/gcs/c/never", "Controller": 0, "Lun": 40}})
    assert err.value.hresult == ERROR_NOT_FOUND and ":0:0:40" in str(err.value)
    assert time.monotonic() - t0 < 30  # bounded by the agent's --device-wait (4 s here)
    out, _, _ = guest(vm, "test -e /run/layers/p7 || test -e /run/gcs/c/never; echo $?; cat /proc/mounts")
    assert out.startswith("1\n") and "/run/layers/p7" not in out and "/run/gcs/c/never" not in out


def test_bad_image_or_layer_is_refused_before_anything_is_plugged(vm, devices, tmp_path):
    plugged = (dict(vm.hotplug.pmem), dict(vm.hotplug.scsi))
    with pytest.raises(ImageError, match="does not exist|no such"):
        run_container(vm, devices, str(tmp_path / "missing"), ["true"])
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar archive" * 100)
    write_image(str(tmp_path / "corrupt"), [str(bad)], {"Cmd": ["true"]})
    with pytest.raises(ImageError):
        run_container(vm, devices, str(tmp_path / "corrupt"), ["true"])
    assert (dict(vm.hotplug.pmem), dict(vm.hotplug.scsi)) == plugged


# --- the agent dies; the UVM does not -----------------------------------------------------------
def test_agent_killed_is_restarted_and_the_host_reconnects(vm, devices, oci_image):
    out, _, _ = guest(vm, "ps -o pid,args | grep 'SE /bin/gc[s]'")
    agent_pid = int(out.split()[0])
    vm.client.exec(["sh", "-c", f"sleep 0.3; kill -9 {agent_pid}"])  # no stdio: outlives the request
    assert vm.bridge.closed.wait(30)
    vm.reconnect(timeout=60)
    console = open(vm.console_log).read()
    assert re.search(rf"\(pid {agent_pid}\) ended after \d+ ms: killed by signal 9; restart 1 in \d+ ms", console)
    run, init = run_container(vm, devices, oci_image, ["sh", "-c", "echo alive again"])
    try:
        assert init.communicate()[::2] == (b"alive again\n", 0)
    finally:
        run.teardown()
    deadline = time.monotonic() + 10
    while True:
        starts = [json.loads(line) for line in open(vm.log_path) if '"gcs started"' in line]
        if len(starts) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(starts) == 2 and starts[1]["pid"] != agent_pid


def test_uvm_shutdown_powers_the_vm_off(vm):
    vm.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
    assert vm.wait(60) == 0
    assert "reboot: Power down" in open(vm.console_log).read()


# --- booting ------------------------------------------------------------------------------------
HCSSHIM_LINE = (" initcall_blacklist=virtio_vsock_init 8250_core.nr_uarts=0 panic=-1 quiet pci=off nr_cpus=2 "
                "brd.rd_nr=0 pmtmr=0 -- -e 1 /bin/vsockexec -e 109 /bin/gcs -v4 -log-format json -loglevel info")


def test_boot_with_hcsshims_lcow_command_line(image, tmp_path):
    """hcsshim's default line (protocol.md 7.2). Two of its options switch off what QEMU gives
    the guest and only those are swapped: `pci=off` (virtio devices are PCI devices here) and
    `initcall_blacklist=virtio_vsock_init` (it forces hv_sock, and QEMU's vsock is virtio's).
    Everything /init and the agent see, after `--`, is byte for byte hcsshim's."""
    kernel, _, init_args = HCSSHIM_LINE.partition(" -- ")
    kept = " ".join(w for w in kernel.split() if w not in ("pci=off", "initcall_blacklist=virtio_vsock_init"))
    u = start_vm(tmp_path / "uvm", kernel_args=kept, init_args=init_args)
    try:
        out, _, code = guest(u, "cat /proc/cmdline")
        assert code == 0 and out.strip().endswith("-- " + init_args)
        wait_log(u, "gcs started")
        assert os.path.getsize(u.console_log) == 0  # 8250_core.nr_uarts=0: no serial console, as on Hyper-V
    finally:
        stop_vm(u)


def test_a_kvm_that_cannot_run_the_kernel_falls_back_to_tcg(image, tmp_path, monkeypatch):
    """`accel=auto` tries KVM where it looks usable and keeps TCG when that boot fails. This
    machine kind's /dev/kvm (PVM) cannot run a stock kernel, so here the fallback is real."""
    import gcs.host.qemu as qemu

    real = qemu.kvm_usable()
    monkeypatch.setattr(qemu, "kvm_usable", lambda: True)
    u = start_vm(tmp_path / "uvm")
    try:
        assert guest(u, "echo up")[0] == "up\n"
        if not real:
            assert u.accel_used == "tcg" and [a for a, _ in u.failed_accels] == ["kvm"], u.failed_accels
    finally:
        stop_vm(u)


def test_missing_kernel_or_initrd_is_a_clear_error(tmp_path):
    from gcs.host.qemu import QemuUvm, UvmError
    empty = tmp_path / "image"
    empty.mkdir()
    with pytest.raises(UvmError, match=r"no UVM kernel at .*vmlinux: build the image"):
        QemuUvm(str(tmp_path / "u"), image_dir=str(empty)).start()
    (empty / "vmlinux").write_bytes(b"\0" * 8192)
    with pytest.raises(UvmError, match=r"no UVM initrd at .*initrd.img"):
        QemuUvm(str(tmp_path / "u"), image_dir=str(empty)).start()


def test_qemu_exiting_early_reports_its_stderr(tmp_path):
    from gcs.host.qemu import QemuUvm, UvmError
    bogus = tmp_path / "image"
    bogus.mkdir()
    (bogus / "vmlinux").write_bytes(os.urandom(8192))  # not a kernel QEMU can load
    (bogus / "initrd.img").write_bytes(b"\0" * 8192)
    u = QemuUvm(str(tmp_path / "u"), image_dir=str(bogus))
    with pytest.raises(UvmError, match=r"QEMU exited early \(status 1\):\nqemu: linux kernel too old"):
        u.start()
    assert u.proc.poll() is not None and u.backend.poll() is not None


def test_guest_that_never_connects_times_out_with_the_serial_log(image, tmp_path):
    from gcs.host.qemu import QemuUvm, UvmError
    u = QemuUvm(str(tmp_path / "u"), init_args='/bin/sh -c "echo not an agent; sleep 600"', boot_timeout=25)
    with pytest.raises(UvmError, match=r"did not connect within 25 s; serial console:[\s\S]*not an agent"):
        u.start()
    assert u.proc.poll() is not None and u.backend.poll() is not None
    assert not os.path.exists(port_path(u.vsock_path, 0x40000000))
