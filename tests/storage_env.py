"""Real loop devices and a /dev + /sys test tree for the storage tests.

The tree stands in for what only a Hyper-V UVM has (the VMBus SCSI controller entries and
the SCSI `delete` node are plain files here); every block device in it is a real loop
device over a real ext4 image.
"""
import os
import subprocess

import pytest

from gcs.host.bridge_client import RpcError
from gcs.host.images import attach_loop, detach_loop, make_layer_image, make_scratch_image
from gcs.host.launcher import LocalUvm
from gcs.protocol.ids import NULL_CONTAINER_ID, ZERO_GUID, RequestId
from gcs.storage.devices import SCSI_CONTROLLER_GUIDS


class Loops:
    def __init__(self):
        self.devices = []

    def attach(self, image, read_only=False, offset=0, size=0):
        dev = attach_loop(image, read_only, offset, size)
        self.devices.append(dev)
        return dev

    def detach(self, dev):
        """Detach now (the test checks that nothing holds the device any more)."""
        subprocess.run(["losetup", "-d", dev], check=True, capture_output=True)
        self.devices.remove(dev)

    def detach_all(self):
        """Detach every device; a device still held by an agent's dying mount namespace is
        busy for a moment, so retry before giving up."""
        failed = [dev for dev in reversed(self.devices) if not detach_loop(dev)]
        self.devices.clear()
        assert not failed, f"loop devices left attached: {failed}"


class DeviceTree:
    def __init__(self, root, loops):
        self.dev_root = os.path.join(root, "devroot")
        self.sys_root = os.path.join(root, "sysroot")
        self.images = os.path.join(root, "images")
        # a Hyper-V UVM: the VMBus bus exists (controllers appear in it with add_controller)
        for d in (os.path.join(self.dev_root, "dev"), self.images, os.path.join(self.sys_root, "sys/bus/vmbus/devices")):
            os.makedirs(d, exist_ok=True)
        self.loops = loops

    def args(self, wait=1.0):
        return ["--dev-root", self.dev_root, "--sys-root", self.sys_root, "--device-wait", str(wait)]

    def layer(self, name, files):
        src = os.path.join(self.images, name + ".d")
        for rel, content in files.items():
            path = os.path.join(src, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
        os.makedirs(src, exist_ok=True)
        image = os.path.join(self.images, name + ".img")
        make_layer_image(src, image)
        return image

    def add_pmem(self, number, image):
        dev = self.loops.attach(image, read_only=True)
        os.symlink(dev, os.path.join(self.dev_root, "dev", f"pmem{number}"))
        return dev

    def add_controller(self, controller, host):
        os.makedirs(os.path.join(self.sys_root, "sys/bus/vmbus/devices", SCSI_CONTROLLER_GUIDS[controller],
                                 f"host{host}"), exist_ok=True)

    def scsi_dir(self, host, lun):
        return os.path.join(self.sys_root, "sys/bus/scsi/devices", f"{host}:0:0:{lun}")

    def add_scsi_disk(self, host, lun, image, partitions=()):
        """partitions: (start, size) byte ranges; each becomes its own loop device over that
        range of the image (this machine's kernel has no partition-table support)."""
        dev = self.loops.attach(image)
        name = os.path.basename(dev)
        block = os.path.join(self.scsi_dir(host, lun), "block", name)
        os.makedirs(block)
        for number, (start, size) in enumerate(partitions, 1):
            part = self.loops.attach(image, offset=start, size=size)
            os.makedirs(os.path.join(block, f"{name}p{number}"))
            os.symlink(part, os.path.join(self.dev_root, "dev", f"{name}p{number}"))
        os.symlink(dev, os.path.join(self.dev_root, "dev", name))
        open(os.path.join(self.scsi_dir(host, lun), "delete"), "w").close()
        return dev

    def scratch(self, name, size=64 << 20, blank=False):
        image = os.path.join(self.images, name + ".img")
        if blank:
            with open(image, "wb") as f:
                f.truncate(size)
        else:
            make_scratch_image(image, size)
        return image


@pytest.fixture
def env(tmp_path):
    """A DeviceTree whose `start(wait)` starts a local-mode agent on it; every agent is
    stopped, every loop device detached, and nothing may be left mounted outside."""
    loops = Loops()
    tree = DeviceTree(str(tmp_path), loops)
    started = []

    def start(wait=1.0):
        uvm = LocalUvm(str(tmp_path / "uvm"), extra_args=tree.args(wait)).start()
        started.append(uvm)
        return uvm

    tree.start = start
    try:
        yield tree
    finally:
        for uvm in started:
            violations = list(uvm.bridge.violations) if uvm.bridge else []
            uvm.stop()
            assert violations == []
        loops.detach_all()
        # Nothing the agent mounted is visible outside its namespace.
        info = host_mountinfo()
        assert "/run/layers" not in info and "/run/gcs" not in info and "/run/mounts" not in info


def modify_request(resource, settings, request_type="Add"):
    req = {"RequestType": request_type, "ResourceType": resource}
    if settings is not None:
        req["Settings"] = settings
    return req


def modify(uvm, resource, settings, request_type="Add", timeout=30.0):
    return uvm.bridge.call(RequestId.MODIFY_SETTINGS, timeout=timeout,
                           Request=modify_request(resource, settings, request_type))


def start_modify(uvm, resource, settings, request_type="Add"):
    """Send a ModifySettings without waiting; uvm.bridge.wait_reply(pending) takes its reply."""
    payload = {"ContainerId": NULL_CONTAINER_ID, "ActivityId": ZERO_GUID,
               "Request": modify_request(resource, settings, request_type)}
    return uvm.bridge.start_request(RequestId.MODIFY_SETTINGS, payload)[1]


def fails(uvm, resource, settings, request_type="Add"):
    with pytest.raises(RpcError) as info:
        modify(uvm, resource, settings, request_type)
    return info.value


def sh(uvm, script):
    out, err, code = uvm.client.run(["sh", "-c", script])
    return code, (out + err).decode()


def agent_mountinfo(uvm):
    """/proc/<agent>/mountinfo: the mounts of the local-mode agent's own namespace."""
    with open(f"/proc/{uvm.agent_pid}/mountinfo") as f:
        return f.read()


def host_mountinfo():
    with open("/proc/self/mountinfo") as f:
        return f.read()


def agent_cgroups(supervisor_pid):
    """Cgroup directories a local-mode agent (by its supervisor's pid) left. Local mode makes
    them under our own cgroup in every hierarchy; looked for only there: other jobs' leftovers
    elsewhere on a machine may carry the same pid (pids wrap at 32768 here)."""
    import glob

    from gcs.localmode import own_cgroup
    parent = own_cgroup().rstrip("/")
    return sorted(glob.glob(f"/sys/fs/cgroup{parent}/pygcs-{supervisor_pid}-*")
                  + glob.glob(f"/sys/fs/cgroup/*{parent}/pygcs-{supervisor_pid}-*"))
