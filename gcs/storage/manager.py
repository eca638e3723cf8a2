"""ModifySettings for storage: pmem layers, SCSI disks, overlay rootfs, Plan 9 shares.

Every mount the agent makes is recorded here, reference-counted by mount path, checked
against the overlays that use it before it may go, and torn down at shutdown. A failed
Add leaves nothing behind: directories it made and devices it set up are removed again.
Calls that can block (device reads, mounts and unmounts, 9p, the SCSI unplug) run on
worker threads (see offload), so one stuck device or host server never stalls the agent.
"""
from __future__ import annotations

import os
import socket
from gcs.record import field, record as record_class

from gcs import aio
from gcs.log import log
from gcs.mountflags import MS_BIND
from gcs.protocol import hresult as hr
from gcs.protocol.messages import ModifySettingsRequest
from gcs.runtime import command
from gcs.storage import fsdetect, guestpaths, mounts, offload, plan9
from gcs.storage.devices import DeviceResolver
from gcs.storage.overlay import mount_overlay
from gcs.storage.settings import (CombinedLayers, MappedDirectory, MappedVirtualDisk, SCSIDevice,
                                  VPMemDevice)

STORAGE_TYPES = {
    "VPMemDevice": (VPMemDevice, {"Add", "Remove"}),
    "MappedVirtualDisk": (MappedVirtualDisk, {"Add", "Remove"}),
    "SCSIDevice": (SCSIDevice, {"Remove"}),
    "CombinedLayers": (CombinedLayers, {"Add", "Remove"}),
    "MappedDirectory": (MappedDirectory, {"Add", "Remove"}),
}


@record_class
class Mount:
    kind: str          # pmem, scsi, blockdev, plan9
    path: str
    source: str        # the device (or share) it came from
    refs: int = 1
    created: list[str] = field(default_factory=list)
    dm_name: str = ""  # dm-linear device for a multi-mapped pmem layer
    scsi: tuple[int, int] | None = None  # (controller, lun)
    conn: socket.socket | None = None  # plan9: our end of the 9p connection, to hang up a stuck unmount


@record_class
class Overlay:
    root: str
    layers: list[str]
    scratch: str
    refs: int = 1
    created: list[str] = field(default_factory=list)
    bundle_bind: str = ""


class Storage:
    def __init__(self, resolver: DeviceResolver, transport, reaper) -> None:
        self.devices = resolver
        self.transport = transport
        self.reaper = reaper
        self.mounts: dict[str, Mount] = {}
        self.overlays: dict[str, Overlay] = {}
        self.bundle_binds: set[str] = set()  # bundle dirs bound onto a scratch's bundle/ by CombinedLayers
        self._locks: dict[str, aio.Lock] = {}
        self._busy: set[str] = set()  # paths a mount thread that outlived its request is still on

    def state(self) -> dict[str, int]:
        return {"storage_mounts": len(self.mounts), "overlays": len(self.overlays)}

    # --- dispatch -----------------------------------------------------------------------
    async def modify(self, req: ModifySettingsRequest) -> None:
        shape, allowed = STORAGE_TYPES[req.resource_type]
        if req.request_type not in allowed:
            raise hr.GcsError(hr.E_FAIL, f"the RequestType {req.request_type!r} is not supported "
                                         f"for {req.resource_type}")
        if req.settings is None:
            raise hr.GcsError(hr.E_INVALIDARG, f"{req.resource_type} {req.request_type}: missing Settings")
        settings = shape.from_obj(req.settings)
        handler = getattr(self, f"_{req.request_type.lower()}_{req.resource_type.lower()}")
        key = getattr(settings, "mount_path", None) or getattr(settings, "root_path", None) or req.resource_type
        lock = self._locks.setdefault(key, aio.Lock())
        try:
            async with lock:
                await handler(settings)
        finally:
            if not lock.locked() and not lock._waiters:
                self._locks.pop(key, None)

    def _check(self, path: str, what: str, final_symlink: bool = False) -> str:
        """guestpaths.check, without a stat of a mount point the agent holds: that stat asks
        the mounted filesystem (a 9p server that may never answer, on the loop thread), and
        a mount point cannot be swapped for a symlink while it is mounted."""
        norm = os.path.normpath(path) if path else path
        held = norm in self.mounts or norm in self.overlays
        return guestpaths.check(path, what, final_symlink=final_symlink or held)

    def _user_of(self, path: str) -> str | None:
        """The overlay root that uses path (as a layer or as its scratch), if any."""
        for overlay in self.overlays.values():
            for used in overlay.layers + ([overlay.scratch] if overlay.scratch else []):
                if guestpaths.is_within(used, path):
                    return overlay.root
        return None

    def _existing(self, path: str, source: str) -> bool:
        """True if path is already mounted from source (the retry is counted)."""
        current = self.mounts.get(path)
        if current is None:
            return False
        if current.source != source:
            raise hr.GcsError(hr.ALREADY_EXISTS, f"{path} is already mounted from {current.source}")
        current.refs += 1
        log.info("mount reference added", path=path, refs=current.refs)
        return True

    def _release(self, path: str, what: str) -> Mount | None:
        """Drop one reference; returns the record when the last one went (caller unmounts)."""
        record = self.mounts.get(path)
        if record is None:
            log.info("remove of a path that is not mounted", resource=what, path=path)
            return None
        user = self._user_of(path)
        if user is not None:
            raise hr.GcsError(hr.INVALID_STATE, f"{path} is in use by the overlay at {user}")
        record.refs -= 1
        if record.refs > 0:
            return None
        del self.mounts[path]
        return record

    # --- VPMemDevice --------------------------------------------------------------------
    async def _add_vpmemdevice(self, s: VPMemDevice) -> None:
        path = self._check(s.mount_path, "VPMemDevice MountPath")
        device = await self.devices.pmem(s.device_number)
        if self._existing(path, _pmem_source(device, s)):
            return
        source, dm_name = device, ""
        if s.mapping is not None:
            dm_name = f"dm-linear-pmem{s.device_number}-{s.mapping.offset}-{s.mapping.size}"
            source = await self._dm_linear(dm_name, device, s.mapping.offset, s.mapping.size)
        try:
            found = await self.devices.contents(source)
            if found is None or found.fstype != "ext4":
                raise hr.GcsError(hr.E_FAIL, f"{source} (vPMEM {s.device_number}) holds no ext4 filesystem "
                                             f"({found.name if found else 'the device is blank'})")
            await self.devices.filesystem("ext4")
            created = mounts.make_dirs(path, 0o700)
            data = "noload,dax=always" if self.devices.supports_dax(source) else "noload"
            await self._mount_disk(source, path, "ext4", _RDONLY, data, [], created)
        except BaseException:
            if dm_name:
                await self._dm_remove(dm_name)
            raise
        self.mounts[path] = Mount("pmem", path, _pmem_source(device, s), created=created, dm_name=dm_name)
        log.info("mounted vPMEM layer", device=device, path=path, dax="dax" in data)

    async def _remove_vpmemdevice(self, s: VPMemDevice) -> None:
        path = self._check(s.mount_path, "VPMemDevice MountPath")
        record = self._release(path, "VPMemDevice")
        if record is not None:
            await self._unmount(record)

    async def _dm_linear(self, name: str, device: str, offset: int, size: int) -> str:
        if offset % 512 or size % 512 or size == 0:
            raise hr.GcsError(hr.E_INVALIDARG, f"MappingInfo offset {offset} / size {size} not in 512-byte sectors")
        from gcs.storage import devmapper
        await self.devices.device_mapper()
        try:
            return devmapper.create_linear(name, device, offset // 512, size // 512)
        except OSError as err:
            raise hr.GcsError(hr.E_FAIL, f"dm-linear {name} over {device}: {err.strerror or err}") from None

    async def _dm_remove(self, name: str) -> None:
        from gcs.storage import devmapper
        try:
            devmapper.remove(name)
        except OSError as err:
            log.warning("device-mapper remove failed", device=name, error=err.strerror or str(err))

    # --- MappedVirtualDisk / SCSIDevice -------------------------------------------------
    async def _add_mappedvirtualdisk(self, s: MappedVirtualDisk) -> None:
        device = await self.devices.scsi_device(s.controller, s.lun, s.partition)
        if not s.mount_path:
            return  # attach only
        path = self._check(s.mount_path, "MappedVirtualDisk MountPath", final_symlink=s.block_dev)
        if self._existing(path, device):
            return
        if s.encrypted:
            raise hr.GcsError(hr.E_NOTIMPL, "encrypted SCSI disks (dm-crypt) are not supported by this agent build")
        if s.block_dev:
            created = mounts.make_dirs(os.path.dirname(path), 0o700)
            try:
                os.symlink(device, path)
            except OSError as err:
                mounts.remove_dirs(created)
                raise hr.GcsError(hr.E_FAIL, f"symlink {path} -> {device}: {err.strerror}") from None
            self.mounts[path] = Mount("blockdev", path, device, created=created, scsi=(s.controller, s.lun))
            return
        fstype = await self._scsi_filesystem(device, s)
        await self.devices.filesystem(fstype)
        created = mounts.make_dirs(path, 0o700)
        await self._mount_disk(device, path, fstype, _RDONLY if s.read_only else 0, "noload" if s.read_only else "",
                               s.options, created)
        self.mounts[path] = Mount("scsi", path, device, created=created, scsi=(s.controller, s.lun))
        log.info("mounted SCSI disk", device=device, path=path, read_only=s.read_only, fstype=fstype)

    async def _scsi_filesystem(self, device: str, s: MappedVirtualDisk) -> str:
        """The type to mount the disk as; with EnsureFilesystem a blank disk is formatted first.
        A disk that holds anything else than the requested filesystem is never formatted."""
        found = await self.devices.contents(device)
        what = f"{device} (SCSI {s.controller}:{s.lun})"
        if s.ensure_filesystem:
            wanted = s.filesystem or "ext4"
            if found is None:
                if s.read_only:
                    raise hr.GcsError(hr.E_INVALIDARG, f"{device}: cannot format a disk mounted read-only")
                await self._format(device, wanted)
                return wanted
            if not fsdetect.compatible(found, wanted):
                raise hr.GcsError(hr.INVALID_STATE, f"{what} already holds {found.name}, not the requested {wanted}: "
                                                    "refusing to format it (EnsureFilesystem formats blank disks only)")
            return wanted
        if found is not None and found.known and s.filesystem and not fsdetect.compatible(found, s.filesystem):
            raise hr.GcsError(hr.INVALID_STATE, f"{what} holds {found.name}, not the requested {s.filesystem}")
        if s.filesystem:
            return s.filesystem  # a blank disk or unknown contents: the mount says what is wrong
        if found is None:
            raise hr.GcsError(hr.E_FAIL, f"{what} holds no filesystem (the disk is blank) and no Filesystem was given")
        if not found.fstype:
            raise hr.GcsError(hr.E_FAIL, f"{what} holds {found.name}, not a filesystem that can be mounted, "
                                         "and no Filesystem was given")
        return found.fstype

    async def _mount_disk(self, device: str, path: str, fstype: str, flags: int, data: str,
                          options: list[str], created: list[str]) -> None:
        """Mount a block device on a worker thread (it reads the device); on failure the
        directories made for it go again. A mount that ends after its request was abandoned
        (the agent shutting down) is undone."""
        async def undo(_: object) -> None:
            await offload.call(mounts.unmount, path)
            mounts.remove_dirs(created)

        try:
            await offload.call(mounts.mount_disk, device, path, fstype, flags, data, options, undo=undo)
        except BaseException:
            mounts.remove_dirs(created)
            raise

    async def _format(self, device: str, fstype: str) -> None:
        if fstype == "ext4":
            argv = ["mkfs.ext4", "-q", "-F", device]
        elif fstype == "xfs":
            argv = ["mkfs.xfs", "-f", device]
        else:
            raise hr.GcsError(hr.E_INVALIDARG, f"cannot format {device} as {fstype!r} (ext4 or xfs)")
        log.info("formatting disk", device=device, fstype=fstype)
        await command.check(self.reaper, argv, timeout=240)

    async def _remove_mappedvirtualdisk(self, s: MappedVirtualDisk) -> None:
        if not s.mount_path:
            return
        path = self._check(s.mount_path, "MappedVirtualDisk MountPath", final_symlink=s.block_dev)
        record = self._release(path, "MappedVirtualDisk")
        if record is not None:
            await self._unmount(record)

    async def _remove_scsidevice(self, s: SCSIDevice) -> None:
        for record in self.mounts.values():
            if record.scsi == (s.controller, s.lun):
                raise hr.GcsError(hr.INVALID_STATE, f"SCSI {s.controller}:{s.lun} is still mounted at {record.path}")
        delete = self.devices.scsi_delete_path(s.controller, s.lun)
        try:
            # the write returns once the kernel has removed the disk (it flushes its cache)
            await offload.call(_write_file, delete, "1\n")
        except FileNotFoundError:
            return  # already gone
        except OSError as err:
            raise hr.GcsError(hr.E_FAIL, f"unplug SCSI {s.controller}:{s.lun} ({delete}): {err.strerror}") from None
        log.info("unplugged SCSI device", controller=s.controller, lun=s.lun)

    # --- CombinedLayers -----------------------------------------------------------------
    async def _add_combinedlayers(self, s: CombinedLayers) -> None:
        root = self._check(s.root_path, "CombinedLayers ContainerRootPath")
        if not s.layers:
            raise hr.GcsError(hr.E_INVALIDARG, "CombinedLayers: no layers")
        layers = [self._check(p, f"CombinedLayers Layers[{i}]") for i, p in enumerate(s.layers)]
        scratch = self._check(s.scratch_path, "CombinedLayers ScratchPath") if s.scratch_path else ""
        existing = self.overlays.get(root)
        if existing is not None:
            if existing.layers != layers or existing.scratch != scratch:
                raise hr.GcsError(hr.ALREADY_EXISTS, f"an overlay with other layers is already mounted at {root}")
            existing.refs += 1
            return
        for layer in layers:
            if not os.path.isdir(layer):
                raise hr.GcsError(hr.ERROR_NOT_FOUND, f"layer {layer} does not exist")
            if guestpaths.is_within(layer, root) or guestpaths.is_within(root, layer):
                raise hr.GcsError(hr.E_INVALIDARG, f"layer {layer} and rootfs {root} overlap")
        created: list[str] = []
        bundle_bind = ""
        try:
            upper = work = None
            if scratch:
                upper, work = os.path.join(scratch, "upper"), os.path.join(scratch, "work")
                created += mounts.make_dirs(upper, 0o755)
                created += mounts.make_dirs(work, 0o755)
                bundle = os.path.dirname(root)
                if not guestpaths.is_within(scratch, bundle):
                    # v2 layout: the bundle lives on the scratch disk (protocol.md 3.10.4 step 3)
                    source = os.path.join(scratch, "bundle")
                    created += mounts.make_dirs(source, 0o755)
                    created += mounts.make_dirs(bundle, 0o755)
                    mounts.mount(source, bundle, None, MS_BIND)
                    bundle_bind = bundle
                    self.bundle_binds.add(bundle)
            created += mounts.make_dirs(root, 0o755)
            await self.devices.filesystem("overlay")
            mount_overlay(root, layers, upper, work, "/run")
        except BaseException:
            if bundle_bind:
                mounts.unmount(bundle_bind)
                self.bundle_binds.discard(bundle_bind)
            mounts.remove_dirs(created)
            raise
        self.overlays[root] = Overlay(root, layers, scratch, created=created, bundle_bind=bundle_bind)
        log.info("mounted overlay rootfs", path=root, layers=len(layers), writable=bool(scratch))

    async def _remove_combinedlayers(self, s: CombinedLayers) -> None:
        root = self._check(s.root_path, "CombinedLayers ContainerRootPath")
        overlay = self.overlays.get(root)
        if overlay is None:
            log.info("remove of an overlay that is not mounted", path=root)
            return
        if overlay.refs > 1:
            overlay.refs -= 1
            return
        await offload.call(mounts.unmount, root)  # syncs the scratch's dirty data: off the loop
        del self.overlays[root]
        try:
            os.rmdir(root)
        except OSError:
            pass
        if overlay.bundle_bind:
            await self._unbind_bundle(overlay.bundle_bind)
        log.info("unmounted overlay rootfs", path=root, bundle_bind=overlay.bundle_bind)

    async def _unbind_bundle(self, bundle: str) -> None:
        """Undo the bundle bind an overlay's Add made (it holds the scratch disk busy). The
        directory stays: the bundle's files are DeleteContainerState's to remove."""
        if bundle not in self.bundle_binds:
            return
        if mounts.is_mountpoint(bundle):
            await offload.call(mounts.unmount, bundle)
        self.bundle_binds.discard(bundle)

    def release_bundle(self, root: str) -> None:
        """DeleteContainerState's part: drop the bundle bind made for an overlay at root. (In
        the v1 layout the bundle is the scratch disk's own mount, which is not ours to drop.)"""
        bundle = os.path.dirname(root)
        if bundle in self.bundle_binds and mounts.is_mountpoint(bundle):
            mounts.unmount(bundle)
        self.bundle_binds.discard(bundle)

    # --- MappedDirectory (Plan 9) -------------------------------------------------------
    async def _add_mappeddirectory(self, s: MappedDirectory) -> None:
        path = self._check(s.mount_path, "MappedDirectory MountPath")
        source = f"9p:{s.port}:{s.share_name}"
        if self._existing(path, source):
            return
        if path in self._busy:
            raise hr.GcsError(hr.INVALID_STATE, f"{path}: the mount of an earlier request that failed "
                                                "is still in progress; retry later")
        if not 0 < s.port <= 0xFFFFFFFF:
            raise hr.GcsError(hr.E_INVALIDARG, f"MappedDirectory: invalid port {s.port}")
        created = mounts.make_dirs(path, 0o700)
        try:
            sock = await self._dial_plan9(s.port)
            await self._mount_plan9(path, sock, s, created)
        except BaseException:
            mounts.remove_dirs(created)
            raise
        self.mounts[path] = Mount("plan9", path, source, created=created, conn=sock)
        log.info("mounted Plan 9 share", path=path, share=s.share_name, read_only=s.read_only)

    async def _dial_plan9(self, port: int) -> socket.socket:
        try:
            sock = await self.transport.dial(port)
        except OSError as err:
            raise hr.GcsError(hr.E_FAIL, f"connect to the Plan 9 server on port {port}: "
                                         f"{err.strerror or err}") from None
        try:
            sock.setblocking(True)  # the kernel's 9p client reads and writes it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, plan9.BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, plan9.BUFFER)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _mount_plan9(self, path: str, sock: socket.socket, s: MappedDirectory, created: list[str]) -> None:
        """Mount over sock, bounded by the device wait; on failure sock is (or will be) closed."""
        try:
            await self.devices.filesystem("9p")
        except BaseException:
            sock.close()
            raise
        data = plan9.mount_data(sock.fileno(), s.read_only, s.share_name)
        await plan9.mount(path, sock, _RDONLY if s.read_only else 0, data, self.devices.wait, created, self._busy)

    async def _remove_mappeddirectory(self, s: MappedDirectory) -> None:
        path = self._check(s.mount_path, "MappedDirectory MountPath")
        record = self._release(path, "MappedDirectory")
        if record is not None:
            await self._unmount(record)

    # --- common -------------------------------------------------------------------------
    async def _unmount(self, record: Mount) -> None:
        if record.kind == "blockdev":
            try:
                os.unlink(record.path)
            except FileNotFoundError:
                pass
        else:
            try:
                await self._unmount_path(record)
            except hr.GcsError:
                self.mounts[record.path] = record  # still mounted: keep tracking it
                record.refs = 1
                raise
            if record.conn is not None:
                record.conn.close()
        mounts.remove_dirs(record.created or [record.path])
        if record.dm_name:
            await self._dm_remove(record.dm_name)
        log.info("unmounted", kind=record.kind, path=record.path)

    async def _unmount_path(self, record: Mount) -> None:
        if record.kind == "plan9":
            await plan9.unmount(record.path, record.conn, self.devices.wait)
        else:
            await offload.call(mounts.unmount, record.path)  # writes back dirty data: off the loop

    def teardown(self) -> None:
        """Unmount everything the agent mounted: overlays first, then the rest, newest first."""
        for root, overlay in reversed(list(self.overlays.items())):
            for target in (root, overlay.bundle_bind):
                if target:
                    try:
                        mounts.unmount(target)
                    except hr.GcsError as err:
                        log.warning("teardown: unmount failed", path=target, error=str(err))
        self.overlays.clear()
        for bundle in self.bundle_binds:
            if mounts.is_mountpoint(bundle):
                try:
                    mounts.unmount(bundle)
                except hr.GcsError as err:
                    log.warning("teardown: unmount failed", path=bundle, error=str(err))
        self.bundle_binds.clear()
        for path, record in reversed(list(self.mounts.items())):
            if record.conn is not None:
                plan9.hang_up(record.conn)  # the VM is going: a server that stopped answering must not hold it
            try:
                if record.kind == "blockdev":
                    os.unlink(path)
                else:
                    mounts.unmount(path)
            except (OSError, hr.GcsError) as err:
                log.warning("teardown: unmount failed", path=path, error=str(err))
            if record.conn is not None:
                record.conn.close()
        self.mounts.clear()


_RDONLY = 1


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _pmem_source(device: str, s: VPMemDevice) -> str:
    if s.mapping is None:
        return device
    return f"{device}@{s.mapping.offset}+{s.mapping.size}"
