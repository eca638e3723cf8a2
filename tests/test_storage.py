"""Storage through the bridge of a real local-mode agent: pmem layers and SCSI disks on
real loop devices with real ext4 images, overlay rootfs, reference counts, bad input."""
import os
import subprocess

import pytest

from gcs.protocol import hresult as hr
from gcs.protocol.ids import RequestId

from conftest import requires_root
from storage_env import env, fails, host_mountinfo, modify, sh  # noqa: F401 - env is a fixture

pytestmark = requires_root


def test_pmem_layer_is_read_only_and_removable(env):
    image = env.layer("base", {"etc/os-release": "NAME=test\n"})
    dev = env.add_pmem(0, image)
    uvm = env.start()
    modify(uvm, "VPMemDevice", {"MountPath": "/run/layers/p0"})  # DeviceNumber 0 omitted, as the host does
    assert sh(uvm, "cat /run/layers/p0/etc/os-release") == (0, "NAME=test\n")
    code, out = sh(uvm, "touch /run/layers/p0/new")
    assert code != 0 and "Read-only" in out
    code, out = sh(uvm, "grep ' /run/layers/p0 ' /proc/mounts")
    assert code == 0 and " ext4 ro," in out and "norecovery" in out or "noload" in out
    assert "/run/layers/p0" not in host_mountinfo()
    modify(uvm, "VPMemDevice", {"MountPath": "/run/layers/p0"}, "Remove")
    assert sh(uvm, "grep -c ' /run/layers/p0 ' /proc/mounts; test -e /run/layers/p0")[0] != 0
    env.loops.detach(dev)  # no longer busy


def test_overlay_rootfs_copy_up_and_teardown_order(env):
    base = env.add_pmem(1, env.layer("base", {"bin/tool": "base-tool\n", "etc/conf": "base\n"}))
    env.add_pmem(2, env.layer("top", {"etc/conf": "top\n", "app/main": "app\n"}))
    env.add_controller(0, 3)
    env.add_scsi_disk(3, 1, env.scratch("scratch"))
    uvm = env.start()
    modify(uvm, "VPMemDevice", {"DeviceNumber": 1, "MountPath": "/run/layers/p1"})
    modify(uvm, "VPMemDevice", {"DeviceNumber": 2, "MountPath": "/run/layers/p2"})
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/gcs/c/c1", "Lun": 1, "EnsureFilesystem": True,
                                      "Filesystem": "ext4"})
    layers = {"ContainerID": "c1", "ContainerRootPath": "/run/gcs/c/c1/rootfs",
              "Layers": [{"Path": "/run/layers/p2"}, {"Path": "/run/layers/p1"}],
              "ScratchPath": "/run/gcs/c/c1/scratch/c1"}
    modify(uvm, "CombinedLayers", layers)
    r = "/run/gcs/c/c1/rootfs"
    assert sh(uvm, f"cat {r}/etc/conf {r}/bin/tool {r}/app/main") == (0, "top\nbase-tool\napp\n")
    # Writes land in the scratch disk's upper dir; the layer stays as it was.
    assert sh(uvm, f"echo changed > {r}/bin/tool && echo new > {r}/new && cat {r}/bin/tool")[0] == 0
    assert sh(uvm, "cat /run/gcs/c/c1/scratch/c1/upper/bin/tool /run/gcs/c/c1/scratch/c1/upper/new "
                   "/run/layers/p1/bin/tool") == (0, "changed\nnew\nbase-tool\n")
    assert sh(uvm, f"rm {r}/etc/conf; test -e {r}/etc/conf")[0] != 0  # whiteout over a read-only layer
    # Removal while the overlay uses them: clear errors, nothing changes.
    err = fails(uvm, "VPMemDevice", {"DeviceNumber": 1, "MountPath": "/run/layers/p1"}, "Remove")
    assert err.hresult == hr.INVALID_STATE and "/run/gcs/c/c1/rootfs" in str(err)
    err = fails(uvm, "MappedVirtualDisk", {"MountPath": "/run/gcs/c/c1", "Lun": 1}, "Remove")
    assert err.hresult == hr.INVALID_STATE
    err = fails(uvm, "SCSIDevice", {"Lun": 1}, "Remove")
    assert err.hresult == hr.INVALID_STATE
    assert sh(uvm, f"cat {r}/app/main") == (0, "app\n")
    # The host's order: overlay, scratch unmount + unplug, layers.
    modify(uvm, "CombinedLayers", {"ContainerRootPath": r}, "Remove")
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/gcs/c/c1", "Lun": 1}, "Remove")
    modify(uvm, "SCSIDevice", {"Lun": 1}, "Remove")
    assert open(os.path.join(env.scsi_dir(3, 1), "delete")).read() == "1\n"
    modify(uvm, "VPMemDevice", {"DeviceNumber": 2, "MountPath": "/run/layers/p2"}, "Remove")
    modify(uvm, "VPMemDevice", {"DeviceNumber": 1, "MountPath": "/run/layers/p1"}, "Remove")
    code, out = sh(uvm, "grep -E '/run/(layers|gcs)' /proc/mounts")
    assert code == 1 and out == ""
    stacks = uvm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "storage_mounts: 0" in stacks and "overlays: 0" in stacks
    env.loops.detach(base)


def test_scratch_survives_remount(env):
    env.add_controller(0, 0)
    env.add_scsi_disk(0, 2, env.scratch("s"))
    uvm = env.start()
    disk = {"MountPath": "/run/mounts/scsi/m2", "Lun": 2}
    modify(uvm, "MappedVirtualDisk", disk)
    assert sh(uvm, "echo kept > /run/mounts/scsi/m2/f")[0] == 0
    modify(uvm, "MappedVirtualDisk", disk, "Remove")
    modify(uvm, "MappedVirtualDisk", disk)
    assert sh(uvm, "cat /run/mounts/scsi/m2/f") == (0, "kept\n")


def test_read_only_overlay_without_scratch(env):
    env.add_pmem(0, env.layer("l", {"f": "x"}))
    uvm = env.start()
    modify(uvm, "VPMemDevice", {"MountPath": "/run/layers/p0"})
    modify(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/ro/rootfs", "Layers": [{"Path": "/run/layers/p0"}]})
    assert sh(uvm, "cat /run/gcs/c/ro/rootfs/f") == (0, "x")
    code, out = sh(uvm, "touch /run/gcs/c/ro/rootfs/g")
    assert code != 0 and "Read-only" in out


def test_ensure_filesystem_formats_a_blank_disk_and_read_only_disks(env):
    env.add_controller(1, 5)
    env.add_scsi_disk(5, 0, env.scratch("blank", blank=True))
    env.add_scsi_disk(5, 4, env.layer("rolayer", {"data": "ro-data"}))
    uvm = env.start()
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/gcs/c/x", "Controller": 1, "EnsureFilesystem": True,
                                      "Filesystem": "ext4"})
    assert sh(uvm, "echo ok > /run/gcs/c/x/f && cat /run/gcs/c/x/f") == (0, "ok\n")
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/m4", "Controller": 1, "Lun": 4,
                                      "ReadOnly": True, "Options": ["ro"]})
    assert sh(uvm, "cat /run/mounts/scsi/m4/data") == (0, "ro-data")
    assert sh(uvm, "touch /run/mounts/scsi/m4/x")[0] != 0


def test_blank_disk_without_ensure_filesystem_is_an_error(env):
    env.add_controller(0, 0)
    env.add_scsi_disk(0, 0, env.scratch("blank", blank=True))
    uvm = env.start()
    err = fails(uvm, "MappedVirtualDisk", {"MountPath": "/run/gcs/c/y"})
    assert err.hresult == hr.E_FAIL and "no filesystem" in str(err) and "blank" in str(err)
    assert sh(uvm, "test -e /run/gcs/c/y")[0] != 0


def test_partition_and_block_device_symlink(env):
    image = env.scratch("parted", size=32 << 20, blank=True)
    subprocess.run(["sfdisk", "-q", image], input=b"label: dos\n,15M,L\n,,L\n", check=True, capture_output=True)
    layout = subprocess.run(["sfdisk", "-J", image], check=True, capture_output=True, text=True).stdout
    import json
    parts = [(p["start"] * 512, p["size"] * 512) for p in json.loads(layout)["partitiontable"]["partitions"]]
    subprocess.run(["mkfs.ext4", "-q", "-E", f"offset={parts[1][0]}", image, f"{parts[1][1] // 1024}k"], check=True)
    env.add_controller(0, 0)
    dev = env.add_scsi_disk(0, 7, image, partitions=parts)
    subprocess.run(["debugfs", "-w", "-R", "mkdir p2dir", os.path.join(env.dev_root, "dev", os.path.basename(dev) + "p2")],
                   check=True, capture_output=True)
    uvm = env.start()
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/p", "Lun": 7, "Partition": 2})
    assert sh(uvm, "test -d /run/mounts/scsi/p/p2dir")[0] == 0
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/b", "Lun": 7, "BlockDev": True})
    code, out = sh(uvm, "readlink /run/mounts/scsi/b")
    assert code == 0 and out.strip().endswith(os.path.basename(dev))
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/b", "Lun": 7, "BlockDev": True}, "Remove")
    assert sh(uvm, "test -L /run/mounts/scsi/b")[0] != 0
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/mounts/scsi/p", "Lun": 7, "Partition": 2}, "Remove")


def test_many_layers_past_the_mount_option_limit(env):
    count = 128
    long_suffix = "-0-" + "4" * 24  # like multi-mapped paths: /run/layers/p<N>-<offset>-<size>
    uvm = None
    for i in range(count):
        env.add_pmem(i, env.layer(f"l{i}", {f"files/layer{i}": str(i), "order": f"top-is-{i}\n"}))
    uvm = env.start()
    paths = [f"/run/layers/p{i}{long_suffix}" for i in range(count)]
    for i, path in enumerate(paths):
        modify(uvm, "VPMemDevice", {"DeviceNumber": i, "MountPath": path})
    assert len("lowerdir=" + ":".join(paths)) > 4096
    modify(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/big/rootfs", "Layers": [{"Path": p} for p in paths],
                                   "ScratchPath": "/run/gcs/c/big/scratch"})
    code, out = sh(uvm, "cat /run/gcs/c/big/rootfs/order; ls /run/gcs/c/big/rootfs/files | wc -l; "
                        "cat /run/gcs/c/big/rootfs/files/layer127 /run/gcs/c/big/rootfs/files/layer0")
    assert (code, out) == (0, "top-is-0\n128\n1270")
    assert sh(uvm, "ls -a /run | grep -c '^.ovl-'")[1].strip() == "0"  # the short-name dir is gone
    modify(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/big/rootfs"}, "Remove")
    for i, path in enumerate(paths):
        modify(uvm, "VPMemDevice", {"DeviceNumber": i, "MountPath": path}, "Remove")


def test_reference_counts_and_idempotent_retries(env):
    env.add_pmem(0, env.layer("a", {"a": "1"}))
    env.add_pmem(1, env.layer("b", {"b": "2"}))
    uvm = env.start()
    layer = {"DeviceNumber": 0, "MountPath": "/run/layers/p0"}
    modify(uvm, "VPMemDevice", layer)
    modify(uvm, "VPMemDevice", layer)  # a retry of the same Add
    err = fails(uvm, "VPMemDevice", {"DeviceNumber": 1, "MountPath": "/run/layers/p0"})
    assert err.hresult == hr.ALREADY_EXISTS
    modify(uvm, "VPMemDevice", {"DeviceNumber": 0, "MountPath": "/run/layers/again"})  # same device twice
    assert sh(uvm, "cat /run/layers/again/a /run/layers/p0/a") == (0, "11")
    modify(uvm, "VPMemDevice", layer, "Remove")
    assert sh(uvm, "cat /run/layers/p0/a") == (0, "1")  # one reference left
    modify(uvm, "VPMemDevice", layer, "Remove")
    assert sh(uvm, "test -e /run/layers/p0")[0] != 0
    modify(uvm, "VPMemDevice", layer, "Remove")  # removing what is not mounted succeeds
    modify(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/none/rootfs"}, "Remove")
    modify(uvm, "MappedVirtualDisk", {"MountPath": "/run/gcs/c/none", "Lun": 9}, "Remove")
    assert sh(uvm, "cat /run/layers/again/a") == (0, "1")


def test_bad_storage_input(env):
    env.add_pmem(0, env.layer("good", {"f": "x"}))
    bad = os.path.join(env.images, "junk.img")
    with open(bad, "wb") as f:
        f.write(os.urandom(1 << 20))
    env.add_pmem(1, bad)
    uvm = env.start(wait=0.3)
    # unknown resource type
    err = fails(uvm, "QuantumDisk", {"MountPath": "/run/layers/q"})
    assert err.hresult == hr.E_FAIL and "QuantumDisk" in str(err)
    # a request type the resource does not have
    assert fails(uvm, "SCSIDevice", {"Lun": 1}, "Add").hresult == hr.E_FAIL
    # missing device: bounded wait, then an error naming it
    err = fails(uvm, "VPMemDevice", {"DeviceNumber": 9, "MountPath": "/run/layers/p9"})
    assert err.hresult == hr.ERROR_NOT_FOUND and "pmem9" in str(err)
    err = fails(uvm, "MappedVirtualDisk", {"MountPath": "/run/gcs/c/z", "Lun": 3})
    assert err.hresult == hr.ERROR_NOT_FOUND and "df6d0690" in str(err)
    # corrupt / non-ext4 layer: no half-made mount or directory
    err = fails(uvm, "VPMemDevice", {"DeviceNumber": 1, "MountPath": "/run/layers/p1"})
    assert err.hresult == hr.E_FAIL and "no ext4" in str(err)
    assert sh(uvm, "test -e /run/layers/p1")[0] != 0
    # paths outside the allowed roots
    for path in ("/run/layers/../../etc/x", "/etc/x", "relative/p", "/run/layers", "/run/gcsX/a"):
        err = fails(uvm, "VPMemDevice", {"DeviceNumber": 0, "MountPath": path})
        assert err.hresult == hr.E_INVALIDARG, path
    assert sh(uvm, "mkdir -p /run/layers && ln -s /etc /run/layers/evil")[0] == 0
    err = fails(uvm, "VPMemDevice", {"DeviceNumber": 0, "MountPath": "/run/layers/evil/sub"})
    assert err.hresult == hr.E_INVALIDARG and "/etc" in str(err)
    err = fails(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/q/rootfs", "Layers": [{"Path": "/etc"}]})
    assert err.hresult == hr.E_INVALIDARG
    # missing layer directory, no layers, missing settings, wrong types
    err = fails(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/q/rootfs", "Layers": [{"Path": "/run/layers/nope"}]})
    assert err.hresult == hr.ERROR_NOT_FOUND
    assert fails(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/q/rootfs"}).hresult == hr.E_INVALIDARG
    assert fails(uvm, "VPMemDevice", None).hresult == hr.E_INVALIDARG
    assert fails(uvm, "VPMemDevice", {"DeviceNumber": "0", "MountPath": "/run/layers/p0"}).hresult == hr.INVALID_JSON
    assert fails(uvm, "MappedVirtualDisk", {"Lun": 300, "MountPath": "/run/gcs/c/z"}).hresult == hr.INVALID_JSON
    assert fails(uvm, "CombinedLayers", {"Layers": "/run/layers/p0"}).hresult == hr.INVALID_JSON
    # the agent keeps serving and tracked nothing from the failures
    modify(uvm, "VPMemDevice", {"MountPath": "/run/layers/p0"})
    assert sh(uvm, "cat /run/layers/p0/f") == (0, "x")
    stacks = uvm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]
    assert "storage_mounts: 1" in stacks and "overlays: 0" in stacks


def test_plan9_share_dials_the_host_and_cleans_up(env):
    uvm = env.start()
    from vmbus.hybrid import host_listen
    listener = host_listen(uvm.vsock_path, 564)
    listener.settimeout(5)
    try:
        supported = "9p" in open("/proc/filesystems").read()
        share = {"MountPath": "/run/gcs/c/c1/mounts/m0", "Port": 564, "ShareName": "0", "ReadOnly": True}
        if supported:
            pytest.skip("this kernel has 9p; a Plan 9 server is needed to go further")
        err = fails(uvm, "MappedDirectory", share)
        conn, _ = listener.accept()  # the agent dialled the host's Plan 9 port
        conn.close()
        assert err.hresult == hr.E_FAIL and "9p" in str(err)
        assert sh(uvm, "test -e /run/gcs/c/c1/mounts/m0")[0] != 0
        modify(uvm, "MappedDirectory", share, "Remove")  # nothing mounted: succeeds
    finally:
        listener.close()
    err = fails(uvm, "MappedDirectory", {"MountPath": "/run/gcs/c/c1/mounts/m1", "Port": 565})
    assert err.hresult == hr.E_FAIL and "565" in str(err)


def test_shutdown_unmounts_everything(env):
    dev = env.add_pmem(0, env.layer("a", {"a": "1"}))
    uvm = env.start()
    modify(uvm, "VPMemDevice", {"MountPath": "/run/layers/p0"})
    modify(uvm, "CombinedLayers", {"ContainerRootPath": "/run/gcs/c/s/rootfs", "Layers": [{"Path": "/run/layers/p0"}]})
    uvm.bridge.call(RequestId.SHUTDOWN_GRACEFUL)
    assert uvm.proc.wait(10) == 0
    log = open(uvm.log_path).read()
    assert "teardown: unmount failed" not in log
    env.loops.detach(dev)
