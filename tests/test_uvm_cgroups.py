"""cgroup v2 end to end, in the QEMU UVM (a pure v2 hierarchy: /init enables every controller
at the root), native runtime against runc line by line as the v1 differential tests do here.

The image ships no runc (it is the native runtime's image), so a test copy of it gets this
machine's Debian runc and its libseccomp as a second initramfs archive. One UVM per runtime
(`--runtime` is an agent flag), the same container in each: limits at Create, a
ContainerConstraints update, the cgroup mount inside (with and without a cgroup namespace),
the device program, and the Statistics shape."""
import json
import os
import shutil

import pytest

from gcs.host.qemu import image_with_extras
from gcs.host.run import ContainerRun, RunOptions
from gcs.protocol.ids import RequestId

from uvm_env import (IMAGE_DIR, TEST_INIT_ARGS, build_image, busybox_oci_image, device_client, requires_qemu,
                     running_vm)

pytestmark = [requires_qemu, pytest.mark.skipif(shutil.which("runc") is None, reason="no runc on this machine")]

RESOURCES = {"memory": {"limit": 96 << 20, "reservation": 32 << 20, "swap": 192 << 20},
             "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
             "pids": {"limit": 99},
             "devices": [{"allow": False, "access": "rwm"},
                         {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},   # null
                         {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"},     # zero
                         {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},   # tty
                         {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"}]}  # urandom
UPDATE = {"memory": {"limit": 80 << 20}, "cpu": {"shares": 256, "quota": 30000, "period": 100000}, "pids": {"limit": 77},
          "blockIO": {"weight": 200}}
FILES = ("memory.max", "memory.low", "memory.swap.max", "cpu.max", "cpu.weight", "cpuset.cpus", "pids.max", "io.max",
         "io.weight")
# Without a cgroup namespace the cgroup2 mount shows the whole hierarchy (as runc's does):
# the container's own files are under its path there.
VIEW = ("echo cgroup=$(cat /proc/self/cgroup); cd /sys/fs/cgroup$(sed 's/^0:://' /proc/self/cgroup); "
        "for f in " + " ".join(FILES) + "; do echo \"$f=$(cat $f 2>&1)\"; done; "
        "grep ' /sys/fs/cgroup ' /proc/self/mountinfo | sed 's/^[0-9]* [0-9]* [0-9:]* /mount /; s/ shared:[0-9]*//'; "
        "(echo 1 > pids.max) 2>/dev/null && echo pids.max-writable=y || echo pids.max-writable=n; "
        "head -c 1 /dev/zero >/dev/null 2>&1 && echo zero-read=y || echo zero-read=n; "
        "(echo x > /dev/zero) 2>/dev/null && echo zero-write=y || echo zero-write=n; "
        "(mknod /tmp/full c 1 7 && head -c 1 /tmp/full >/dev/null) 2>/dev/null && echo full=y || echo full=n; "
        "(mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem >/dev/null) 2>/dev/null && echo mem=y || echo mem=n; "
        "rm -f /tmp/full /tmp/mem")
VIEWS = {}


def runc_files():
    """Debian's runc and the one library the image lacks, where they are on this machine."""
    runc = shutil.which("runc")
    libseccomp = next((p for p in ("/lib/x86_64-linux-gnu/libseccomp.so.2", "/usr/lib/x86_64-linux-gnu/libseccomp.so.2")
                       if os.path.exists(p)), None)
    assert libseccomp, "runc needs libseccomp.so.2"
    return {"/usr/sbin/runc": runc, "/lib/x86_64-linux-gnu/libseccomp.so.2": libseccomp}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    build_image()
    return image_with_extras(IMAGE_DIR, str(tmp_path_factory.mktemp("runc-image")), runc_files())


@pytest.fixture(scope="module")
def oci_image(tmp_path_factory):
    with busybox_oci_image(str(tmp_path_factory.mktemp("cgimage"))) as image:
        yield image


def block_io(vm) -> dict:
    """blockIO for the UVM's first block device: a weight, a read and a write throttle."""
    out, _, _ = vm.client.run(["sh", "-c", "cat /sys/block/$(ls /sys/block | head -n 1)/dev"])
    major, minor = (int(n) for n in out.decode().strip().split(":"))
    return {"weight": 500, "throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1 << 20}],
            "throttleWriteIOPSDevice": [{"major": major, "minor": minor, "rate": 100}]}


def in_container(vm, cid, script):
    proc = vm.client.exec([], container_id=cid, stdout=True, stderr=True, oci_process={
        "args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
        "capabilities": {k: ["CAP_MKNOD", "CAP_DAC_OVERRIDE"] for k in ("bounding", "effective", "permitted")}})
    out, err, code = proc.communicate()
    assert code == 0, err
    return out.decode()


def statistics_shape(value, prefix=""):
    """The LCOWMetrics keys (values differ run to run). The memory counters are left out:
    like Go's omitempty, a zero one is not sent (memory.dirty, say, comes and goes)."""
    if isinstance(value, dict):
        return sorted(k for key, v in value.items() if isinstance(v, dict) or prefix != "memory."
                      for k in [prefix + key, *statistics_shape(v, prefix + key + ".")])
    return []


@pytest.mark.parametrize("runtime", ["native", "runc"])
def test_cgroup_v2_view(tmp_path, image_dir, oci_image, runtime):
    with running_vm(tmp_path / "uvm", image_dir=image_dir, init_args=f"{TEST_INIT_ARGS} --runtime {runtime}") as vm, \
            device_client(vm) as devices:
        run = ContainerRun(vm.bridge, devices, vm.dir, RunOptions(oci_image, ["sleep", "1000"], name="cg2"),
                           report=print)
        try:
            spec = run.prepare()
            spec["linux"]["resources"] = dict(json.loads(json.dumps(RESOURCES)), blockIO=block_io(vm))
            spec["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                                   "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
            run.create(spec)
            init = vm.client.exec([], container_id=run.id, stdout=False, stderr=False, init_process=True)
            view = {"created": in_container(vm, run.id, VIEW)}
            vm.bridge.call(RequestId.MODIFY_SETTINGS, container_id=run.id, Request={
                "RequestType": "Update", "ResourceType": "ContainerConstraints",
                "Settings": {"Windows": {}, "Linux": UPDATE}})
            view["updated"] = in_container(vm, run.id, VIEW)
            reply = vm.bridge.call(RequestId.GET_PROPERTIES, container_id=run.id,
                                   Query='{"PropertyTypes":["Statistics"]}')
            metrics = json.loads(reply["Properties"])["LCOWMetrics"]
            view["statistics"] = statistics_shape(metrics)
            view["limits"] = (metrics["memory"]["usage"]["limit"], metrics["pids"]["limit"])
        finally:
            run.stop()
            init.close()
            run.teardown()
        # in a cgroup namespace of its own: the mount shows the container's cgroup as the root
        run = ContainerRun(vm.bridge, devices, vm.dir, RunOptions(oci_image, ["sleep", "1000"], name="cg2ns"),
                           report=print)
        try:
            spec = run.prepare()
            spec["linux"]["resources"] = {"pids": {"limit": 55}}
            spec["linux"]["namespaces"].append({"type": "cgroup"})
            spec["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                                   "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
            run.create(spec)
            init = vm.client.exec([], container_id=run.id, stdout=False, stderr=False, init_process=True)
            view["cgroupns"] = in_container(vm, run.id, VIEW)
        finally:
            run.stop()
            init.close()
            run.teardown()
        VIEWS[runtime] = view
    print(runtime, json.dumps(view))
    assert view["limits"] == (80 << 20, 77)
    assert "memory.max=100663296" in view["created"] and "memory.max=83886080" in view["updated"], view
    assert "pids.max=99" in view["created"] and "pids.max=77" in view["updated"]
    assert "cpu.max=50000 100000" in view["created"] and "cpu.max=30000 100000" in view["updated"]
    assert "memory.swap.max=100663296" in view["created"] and "cpu.weight=20" in view["created"]  # runc's mappings
    assert " - cgroup2 cgroup rw" in view["created"] and "pids.max-writable=n" in view["created"]  # read-only
    # the device program: runc's default devices allowed (/dev/zero and /dev/full rwm), /dev/mem not
    assert "zero-write=y" in view["created"] and "full=y" in view["created"] and "mem=n" in view["updated"]
    # blockIO: runc's io.weight scale (10..1000 -> 1..10000), the throttles as one io.max line
    assert "io.weight=default 4950" in view["created"] and "io.weight=default 1920" in view["updated"], view
    assert " rbps=1048576 wbps=max riops=max wiops=100" in view["created"], view
    assert "memory.usage.limit" in view["statistics"] and "pids.current" in view["statistics"]
    assert "cgroup=0::/\n" in view["cgroupns"] and "pids.max=55" in view["cgroupns"]


def test_native_and_runc_see_the_same_cgroup_v2():
    if set(VIEWS) != {"native", "runc"}:
        pytest.skip("needs both runtimes' views (test_cgroup_v2_view)")
    for part in ("created", "updated", "statistics", "limits", "cgroupns"):
        assert VIEWS["native"][part] == VIEWS["runc"][part], part
