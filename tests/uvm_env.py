"""Helpers for the tests that run the agent in a QEMU guest (TCG here): the image, a UVM
with finalizers, layer and disk images, and the broker's device service in-process."""
import contextlib
import os
import shutil
import subprocess
import sys

import pytest

from gcs.host.broker import InProcessDeviceClient
from gcs.host.images import make_layer_image
from gcs.host.launcher import REPO_ROOT
from gcs.host.qemu import INIT_ARGS, QemuUvm

IMAGE_DIR = os.path.join(REPO_ROOT, "build", "uvm")
PMEM_ALIGN = 2 << 20
# The agent as hcsshim starts it, with a short device wait so the "never appears" cases
# end in seconds rather than the default 30.
TEST_INIT_ARGS = INIT_ARGS.format(loglevel="debug") + " --device-wait 4"

requires_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")


def build_image():
    res = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "initrd", "build.py"), "--out", IMAGE_DIR],
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    return IMAGE_DIR


def start_vm(directory, **kw):
    kw.setdefault("image_dir", IMAGE_DIR)
    vm = QemuUvm(str(directory), **kw)
    try:
        vm.start()
    except BaseException:
        vm.stop()
        raise
    return vm


def stop_vm(vm):
    """Power the VM off and check nothing of it is left: QEMU and the back-end have exited."""
    vm.stop()
    for proc in (vm.proc, vm.backend):
        if proc is not None:
            assert proc.poll() is not None


def layer(path, files, size=None):
    """A 2 MiB-aligned ext4 layer image (what a virtio-pmem device maps) with `files`."""
    src = str(path) + ".d"
    for rel, content in files.items():
        full = os.path.join(src, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(content)
    os.makedirs(src, exist_ok=True)
    make_layer_image(src, str(path), size)
    size = os.path.getsize(path)
    os.truncate(path, -(-size // PMEM_ALIGN) * PMEM_ALIGN)
    return str(path)


def blank_disk(path, size=256 << 20):
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def guest(vm, script, **kw):
    """Run a shell script in the UVM; returns (stdout, stderr, exit code)."""
    out, err, code = vm.client.run(["sh", "-c", script], **kw)
    return out.decode(), err.decode(), code


@contextlib.contextmanager
def layer_cache(directory):
    """gcsctl's layer cache (GCSCTL_CACHE) in `directory` for a while, then as it was."""
    saved = os.environ.get("GCSCTL_CACHE")
    os.environ["GCSCTL_CACHE"] = str(directory)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("GCSCTL_CACHE", None)
        else:
            os.environ["GCSCTL_CACHE"] = saved


@contextlib.contextmanager
def busybox_oci_image(directory):
    """An OCI image of one busybox layer in `directory` (its path), with gcsctl's layer cache
    beside it for a while."""
    from gcs.host.oci import write_image
    from gcs.host.samples import busybox_rootfs
    busybox_rootfs(os.path.join(directory, "base"))
    write_image(os.path.join(directory, "img"), [os.path.join(directory, "base")],
                {"Env": ["PATH=/bin"], "Cmd": ["sh"]})
    with layer_cache(os.path.join(directory, "cache")):
        yield os.path.join(directory, "img")


@contextlib.contextmanager
def device_client(vm):
    """The VM's hot-plug operations, in this process (as the broker performs them)."""
    client = InProcessDeviceClient(vm)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def running_vm(directory, **kw):
    """A booted UVM (start_vm) for a while; stopped afterwards whatever happened."""
    vm = start_vm(directory, **kw)
    try:
        yield vm
    finally:
        stop_vm(vm)
