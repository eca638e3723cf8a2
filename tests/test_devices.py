"""Device discovery without the devices: SCSI controller lookup where there is no VMBus (a
QEMU UVM's virtio-scsi HBAs), from a sysfs tree made here. The real thing runs in the QEMU
guest (tests/test_uvm.py); this machine has neither VMBus nor virtio-scsi."""
import os

import pytest

from gcs import aio
from gcs.protocol import hresult as hr
from gcs.storage.devices import DeviceResolver


def fake_host(sys_root, host, pci_path, proc_name="virtio_scsi"):
    """/sys/class/scsi_host/hostN -> ../../devices/<pci path>/virtioM/hostN/scsi_host/hostN"""
    device = os.path.join(sys_root, "sys", "devices", *pci_path.split("/"), f"virtio{host}", f"host{host}",
                          "scsi_host", f"host{host}")
    os.makedirs(device)
    with open(os.path.join(device, "proc_name"), "w") as f:
        f.write(proc_name + "\n")
    cls = os.path.join(sys_root, "sys", "class", "scsi_host")
    os.makedirs(cls, exist_ok=True)
    os.symlink(os.path.relpath(device, cls), os.path.join(cls, f"host{host}"))


def test_controllers_are_the_virtio_scsi_hbas_in_pci_order(tmp_path):
    root = str(tmp_path)
    fake_host(root, 0, "pci0000:00/0000:00:05.0")
    fake_host(root, 1, "pci0000:00/0000:00:03.0")        # probed second, first by address
    fake_host(root, 2, "pci0000:00/0000:00:02.0", "ata_piix")  # not virtio-scsi: never a controller
    fake_host(root, 3, "pci0000:00/0000:00:1c.0/0000:01:00.0")
    devices = DeviceResolver(sys_root=root)
    assert [devices.scsi_host(c) for c in range(3)] == [1, 0, 3]
    with pytest.raises(hr.GcsError) as err:
        devices.scsi_host(3)
    assert err.value.hresult == hr.ERROR_NOT_FOUND and "3 virtio-scsi controller(s)" in str(err.value)
    with pytest.raises(hr.GcsError) as err:
        devices.scsi_host(4)
    assert err.value.hresult == hr.E_INVALIDARG


def test_vmbus_takes_precedence_when_the_bus_exists(tmp_path):
    root = str(tmp_path)
    fake_host(root, 0, "pci0000:00/0000:00:03.0")
    os.makedirs(os.path.join(root, "sys/bus/vmbus/devices/df6d0690-79e5-55b6-a5ec-c1e2f77f580a/host7"))
    assert DeviceResolver(sys_root=root).scsi_host(0) == 7


def test_scsi_disk_found_under_the_virtio_host(tmp_path):
    root = str(tmp_path)
    fake_host(root, 2, "pci0000:00/0000:00:03.0")
    os.makedirs(os.path.join(root, "sys/bus/scsi/devices/2:0:0:5/block/sdc"))
    os.makedirs(os.path.join(root, "dev"))
    open(os.path.join(root, "dev", "sdc"), "w").close()
    devices = DeviceResolver(dev_root=root, sys_root=root, wait=0.5)
    assert aio.get_loop().run_until_complete(devices.scsi_device(0, 5)) == os.path.join(root, "dev", "sdc")
