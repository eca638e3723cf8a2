"""Hot-adding storage to a running UVM through QEMU's QMP (the `qemu.qmp` client library),
the part HCS plays on Windows before the host sends ModifySettings.

* vPMEM: a read-only `memory-backend-file` over the layer image and a `virtio-pmem-pci`
  device on a free PCIe root port; slot N becomes the guest's /dev/pmemN. The guest numbers
  pmem devices in probe order, so a device is only plugged once the previous one is in use
  (the caller sends VPMemDevice Add in between). QEMU 7.2 cannot unplug virtio-pmem: a slot
  keeps its image and is reused when that image is attached again.
* SCSI: a raw `blockdev` and a `scsi-hd` at (controller, lun) of the virtio-scsi HBA `scsi<C>`;
  unplugged again after the guest let go of it (SCSIDevice Remove).
* NICs: a `user` netdev with `restrict=on` (QEMU user networking, never a tap or bridge) and a
  `virtio-net-pci` with the NIC's MAC on a free `nicport<N>` root port (QemuUvm(nic_slots=N));
  the host then sends Network Add naming that MAC.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

PMEM_ALIGN = 2 << 20      # the guest maps pmem in 2 MiB subsections
LUNS_PER_CONTROLLER = 64  # what hcsshim uses per controller
UNPLUG_TIMEOUT = 30.0


class HotplugError(Exception):
    pass


@dataclass
class PmemSlot:
    number: int
    image: str
    size: int


@dataclass
class ScsiDisk:
    controller: int
    lun: int
    image: str
    read_only: bool

    @property
    def node(self) -> str:
        return f"scsi{self.controller}-{self.lun}"


class Hotplug:
    def __init__(self, qmp_path: str, uvm_dir: str, pmem_slots: int = 8, controllers: int = 1) -> None:
        import logging

        from qemu.qmp.legacy import QEMUMonitorProtocol

        # a refused or reset connect (QEMU starting or dying) is our error to report, not the library's
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
        self.qmp = QEMUMonitorProtocol(qmp_path)
        self.qmp.connect()
        self.lock = threading.Lock()
        self.pmem_slots = pmem_slots
        self.controllers = controllers
        self.pmem: dict[int, PmemSlot] = {}
        self.scsi: dict[tuple[int, int], ScsiDisk] = {}
        self.nics: dict[str, str] = {}  # hot-plugged NIC id -> its root port

    def _cmd(self, name: str, **args: object) -> object:
        from qemu.qmp import QMPError

        try:
            return self.qmp.cmd(name, **args)
        except QMPError as err:
            raise HotplugError(f"QEMU refused {name}: {err}") from None

    # --- vPMEM ----------------------------------------------------------------------------
    def add_pmem(self, image: str) -> int:
        """Plug a layer image as the lowest free pmem slot (or the slot that already holds it)."""
        image = os.path.realpath(image)
        try:
            size = os.path.getsize(image)
        except OSError as err:
            raise HotplugError(f"layer image {image}: {err.strerror}") from None
        if size == 0 or size % PMEM_ALIGN:
            raise HotplugError(f"layer image {image} is {size} bytes: a pmem image must be a non-zero "
                               f"multiple of {PMEM_ALIGN >> 20} MiB")
        with self.lock:
            for slot in self.pmem.values():
                if slot.image == image:
                    return slot.number
            free = [n for n in range(self.pmem_slots) if n not in self.pmem]
            if not free:
                raise HotplugError(f"all {self.pmem_slots} pmem slots are in use")
            number = free[0]
            self._cmd("object-add", **{"qom-type": "memory-backend-file", "id": f"pmem-mem{number}",
                                       "mem-path": image, "size": size, "share": True, "readonly": True})
            try:
                self._cmd("device_add", driver="virtio-pmem-pci", memdev=f"pmem-mem{number}", id=f"pmem{number}",
                          bus=f"pmemport{number}")
            except HotplugError:
                self._cmd("object-del", id=f"pmem-mem{number}")
                raise
            self.pmem[number] = PmemSlot(number, image, size)
            return number

    def pmem_image(self, number: int) -> str | None:
        slot = self.pmem.get(number)
        return slot.image if slot else None

    # --- SCSI ------------------------------------------------------------------------------
    def add_scsi(self, image: str, read_only: bool = False, controller: int = 0, lun: int | None = None) -> ScsiDisk:
        image = os.path.realpath(image)
        if not os.path.isfile(image):
            raise HotplugError(f"disk image {image} does not exist")
        if not 0 <= controller < self.controllers:
            raise HotplugError(f"SCSI controller {controller} does not exist (0-{self.controllers - 1})")
        with self.lock:
            if lun is None:
                used = {l for c, l in self.scsi if c == controller}
                free = [n for n in range(LUNS_PER_CONTROLLER) if n not in used]
                if not free:
                    raise HotplugError(f"SCSI controller {controller} has no free LUN")
                lun = free[0]
            elif (controller, lun) in self.scsi:
                raise HotplugError(f"SCSI {controller}:{lun} is already in use")
            disk = ScsiDisk(controller, lun, image, read_only)
            self._cmd("blockdev-add", **{"driver": "raw", "node-name": disk.node, "read-only": read_only,
                                         "file": {"driver": "file", "filename": image, "read-only": read_only}})
            try:
                self._cmd("device_add", driver="scsi-hd", bus=f"scsi{controller}.0", channel=0, **{"scsi-id": 0},
                          lun=lun, drive=disk.node, id=disk.node)
            except HotplugError:
                self._cmd("blockdev-del", **{"node-name": disk.node})
                raise
            self.scsi[(controller, lun)] = disk
            return disk

    def remove_scsi(self, controller: int, lun: int, timeout: float = UNPLUG_TIMEOUT) -> None:
        with self.lock:
            disk = self.scsi.get((controller, lun))
            if disk is None:
                raise HotplugError(f"no disk at SCSI {controller}:{lun}")
            self._cmd("device_del", id=disk.node)
            self._wait_deleted(disk.node, timeout)
            self._cmd("blockdev-del", **{"node-name": disk.node})
            del self.scsi[(controller, lun)]

    def _wait_deleted(self, device_id: str, timeout: float) -> None:
        import asyncio
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HotplugError(f"the guest did not release {device_id} within {timeout:g} s")
            try:
                event = self.qmp.pull_event(wait=float(left))
            except asyncio.TimeoutError:
                continue
            if event and event.get("event") == "DEVICE_DELETED" and \
                    (event.get("data") or {}).get("device") == device_id:
                return

    # --- NICs ------------------------------------------------------------------------------
    nic_slots = 0  # root ports nicport0.. (QemuUvm(nic_slots=N)); set by the launcher

    def add_nic(self, nic) -> str:
        """Hot-plug a `gcs.host.qemu.UserNic` (user networking, restrict=on) on a free NIC root
        port; returns the port's id."""
        nics = self.nics
        with self.lock:
            if nic.id in nics:
                raise HotplugError(f"NIC {nic.id} is already plugged")
            free = [i for i in range(self.nic_slots) if f"nicport{i}" not in nics.values()]
            if not free:
                raise HotplugError(f"no free NIC root port (QemuUvm(nic_slots={self.nic_slots}))")
            port = f"nicport{free[0]}"
            netdev = {"type": "user", "id": nic.id, "restrict": True}
            if nic.guestfwd:
                netdev["guestfwd"] = [{"str": g} for g in nic.guestfwd]
            if nic.hostfwd:
                netdev["hostfwd"] = [{"str": h} for h in nic.hostfwd]
            self._cmd("netdev_add", **netdev)
            try:
                self._cmd("device_add", driver="virtio-net-pci", netdev=nic.id, mac=nic.mac, id=f"{nic.id}-dev",
                          romfile="", bus=port)
            except HotplugError:
                self._cmd("netdev_del", id=nic.id)
                raise
            nics[nic.id] = port
            return port

    def remove_nic(self, nic_id: str, timeout: float = UNPLUG_TIMEOUT) -> None:
        """Unplug a hot-plugged NIC (the guest lets go of it: PCIe native hot-unplug)."""
        nics = self.nics
        with self.lock:
            if nic_id not in nics:
                raise HotplugError(f"no hot-plugged NIC {nic_id}")
            self._cmd("device_del", id=f"{nic_id}-dev")
            self._wait_deleted(f"{nic_id}-dev", timeout)
            self._cmd("netdev_del", id=nic_id)
            del nics[nic_id]

    # --- the VM ----------------------------------------------------------------------------
    def quit(self) -> None:
        with self.lock:
            self._cmd("quit")

    def close(self) -> None:
        try:
            self.qmp.close()
        except Exception:  # noqa: BLE001 - QEMU already gone
            pass
