"""Finding the block devices the host hot-adds (protocol.md 6.2, 6.3).

Every lookup goes through `dev_root` and `sys_root` (both `/` in a UVM), so the same code
finds devices in a test tree whose entries point at real loop devices.
"""
from __future__ import annotations

import os
import time

from gcs import aio
from gcs.log import log
from gcs.protocol import hresult as hr
from gcs.storage import fsdetect, offload

# hcsshim's logical SCSI controller index -> VMBus instance GUID of that controller.
SCSI_CONTROLLER_GUIDS = (
    "df6d0690-79e5-55b6-a5ec-c1e2f77f580a",
    "0110f83b-de10-5172-a266-78bca56bf50a",
    "b5d2d8d4-3a75-51bf-945b-3444dc6b8579",
    "305891a9-b251-5dfe-91a2-c25d9212275b",
)
POLL_INTERVAL = 0.01
READ_WAIT = 10.0  # at least this long for the few KiB read to identify a device's contents
READ_RETRY = 0.5  # a just-attached SCSI disk may fail its first open (ENXIO): upstream retries once


class DeviceResolver:
    def __init__(self, dev_root: str = "/", sys_root: str = "/", wait: float = 30.0) -> None:
        self.dev_root = dev_root
        self.sys_root = sys_root
        self.wait = wait

    def dev(self, name: str) -> str:
        return os.path.join(self.dev_root, "dev", name)

    def sys(self, *parts: str) -> str:
        return os.path.join(self.sys_root, "sys", *parts)

    async def _wait_for(self, what: str, probe, error: int = hr.ERROR_NOT_FOUND, blocking: bool = False) -> str:
        """Poll `probe` until it returns a path; bounded by `self.wait`, logged. A blocking
        probe (one that opens the device) runs on a worker thread under the same bound."""
        start = time.monotonic()
        found = await self._probe(what, probe, error, blocking, start)
        if found:
            return found
        log.info("waiting for device", device=what, timeout_s=self.wait)
        while True:
            await aio.sleep(POLL_INTERVAL)
            found = await self._probe(what, probe, error, blocking, start)
            if found:
                log.info("device appeared", device=what, waited_ms=round((time.monotonic() - start) * 1000))
                return found
            if time.monotonic() - start >= self.wait:
                raise hr.GcsError(error, f"{what} did not appear within {self.wait:g}s")

    async def _probe(self, what: str, probe, error: int, blocking: bool, start: float) -> str | None:
        if not blocking:
            return probe()
        fut = aio.run_in_thread(probe)
        if not await offload.settled(fut, max(self.wait - (time.monotonic() - start), POLL_INTERVAL)):
            # the thread stays in open() until the device answers; the probe closes what it opens
            raise hr.GcsError(error, f"{what} did not open within {self.wait:g}s")
        return fut.result()

    async def contents(self, device: str) -> fsdetect.Found | None:
        """What device holds (fsdetect), read on a worker thread; None for a blank device."""
        for attempt in (1, 2):
            fut = aio.run_in_thread(fsdetect.read_head, device)
            if not await offload.settled(fut, max(self.wait, READ_WAIT)):
                raise hr.GcsError(hr.E_FAIL, f"reading {device} did not complete within {max(self.wait, READ_WAIT):g}s")
            try:
                return fsdetect.identify(fut.result())
            except OSError as err:
                if attempt == 2:
                    raise hr.GcsError(hr.E_FAIL, f"read {device}: {err.strerror or err}") from None
                log.debug("reading the device failed, retrying", device=device, error=err.strerror or str(err))
                await aio.sleep(READ_RETRY)
        raise AssertionError("unreachable")

    # --- filesystems ----------------------------------------------------------------------
    async def filesystem(self, fstype: str) -> None:
        """Wait for the kernel to know fstype: in a UVM /init loads the filesystem modules in
        the background, after the agent has started (vsock first)."""
        def probe() -> str | None:
            try:
                with open("/proc/filesystems") as f:
                    known = {line.split()[-1] for line in f if line.strip()}
            except OSError:
                return fstype  # cannot tell: let the mount say
            return fstype if fstype in known else None

        await self._wait_for(f"filesystem {fstype} (a kernel module)", probe, hr.E_FAIL)

    async def device_mapper(self) -> None:
        control = "/dev/mapper/control"  # made by dm_mod's load, through devtmpfs
        await self._wait_for(f"device {control} (the dm_mod module)", lambda: control if os.path.exists(control) else None,
                             hr.E_FAIL)

    # --- vPMEM --------------------------------------------------------------------------
    async def pmem(self, number: int) -> str:
        path = self.dev(f"pmem{number}")
        return await self._wait_for(f"device {path}", lambda: path if os.path.exists(path) else None)

    # --- SCSI ---------------------------------------------------------------------------
    def scsi_host(self, controller: int) -> int:
        """The Linux SCSI host number of hcsshim's logical controller index: under Hyper-V
        through the controller's VMBus GUID (protocol.md 6.3); where there is no VMBus (QEMU)
        the index counts the virtio-scsi HBAs in PCI address order."""
        if not 0 <= controller < len(SCSI_CONTROLLER_GUIDS):
            raise hr.GcsError(hr.E_INVALIDARG, f"SCSI controller {controller} out of range (0-3)")
        if not os.path.isdir(self.sys("bus", "vmbus")):
            return self._virtio_scsi_host(controller)
        vmbus = self.sys("bus", "vmbus", "devices", SCSI_CONTROLLER_GUIDS[controller])
        try:
            entries = os.listdir(vmbus)
        except OSError:
            raise hr.GcsError(hr.ERROR_NOT_FOUND, f"SCSI controller {controller}: {vmbus} not found") from None
        for entry in entries:
            if entry.startswith("host") and entry[4:].isdigit():
                return int(entry[4:])
        raise hr.GcsError(hr.ERROR_NOT_FOUND, f"SCSI controller {controller}: no host entry in {vmbus}")

    def _virtio_scsi_host(self, controller: int) -> int:
        hosts = []  # (PCI path of the HBA, host number)
        base = self.sys("class", "scsi_host")
        try:
            names = os.listdir(base)
        except OSError:
            names = []
        for name in names:
            if not (name.startswith("host") and name[4:].isdigit()):
                continue
            try:
                with open(os.path.join(base, name, "proc_name")) as f:
                    if f.read().strip() != "virtio_scsi":
                        continue
            except OSError:
                continue
            # .../pci0000:00/0000:00:03.0/virtio2/host0/scsi_host/host0: the PCI devices on the way
            path = os.path.realpath(os.path.join(base, name))
            pci = tuple(part for part in path.split("/") if part.count(":") == 2 and "." in part)
            hosts.append((pci, int(name[4:])))
        hosts.sort()
        if controller >= len(hosts):
            raise hr.GcsError(hr.ERROR_NOT_FOUND, f"SCSI controller {controller}: the UVM has no VMBus and "
                                                  f"{len(hosts)} virtio-scsi controller(s)")
        return hosts[controller][1]

    def scsi_dir(self, host: int, lun: int) -> str:
        return self.sys("bus", "scsi", "devices", f"{host}:0:0:{lun}")

    async def scsi_device(self, controller: int, lun: int, partition: int = 0) -> str:
        host = self.scsi_host(controller)
        block = os.path.join(self.scsi_dir(host, lun), "block")

        def probe_disk() -> str | None:
            try:
                names = os.listdir(block)
            except OSError:
                return None
            if len(names) > 1:
                raise hr.GcsError(hr.E_FAIL, f"more than one block device under {block}: {names}")
            return names[0] if names else None

        name = await self._wait_for(f"device SCSI {host}:0:0:{lun} ({block})", probe_disk)
        if partition:
            part = f"{name}{partition}" if not name[-1].isdigit() else f"{name}p{partition}"
            part_dir = os.path.join(block, name, part)
            name = await self._wait_for(f"device partition {part} ({part_dir})",
                                        lambda: part if os.path.exists(part_dir) else None)
        path = self.dev(name)

        def probe_open() -> str | None:
            try:
                os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                return path
            except OSError:
                return None

        return await self._wait_for(f"device {path}", probe_open, blocking=True)

    def scsi_delete_path(self, controller: int, lun: int) -> str:
        return os.path.join(self.scsi_dir(self.scsi_host(controller), lun), "delete")

    def supports_dax(self, device: str) -> bool:
        name = os.path.basename(os.path.realpath(device))
        try:
            with open(self.sys("class", "block", name, "queue", "dax")) as f:
                return f.read().strip() == "1"
        except OSError:
            return False
