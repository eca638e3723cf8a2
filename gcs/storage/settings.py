"""ModifySettings settings for the storage resource types (protocol.md 3.10.1-3.10.5),
decoded with Go's rules: every field optional, zero when absent."""
from __future__ import annotations

from gcs.record import field, record
from typing import Optional

from gcs.protocol.fields import Obj


@record
class MappingInfo:
    offset: int
    size: int


@record
class VPMemDevice:
    device_number: int = 0
    mount_path: str = ""
    mapping: Optional[MappingInfo] = None

    @classmethod
    def from_obj(cls, o: Obj) -> "VPMemDevice":
        info = o.obj("MappingInfo")
        return cls(o.uint("DeviceNumber"), o.str("MountPath"),
                   MappingInfo(info.uint("DeviceOffsetInBytes", 64), info.uint("DeviceSizeInBytes", 64))
                   if info is not None else None)


@record
class MappedVirtualDisk:
    mount_path: str = ""
    controller: int = 0
    lun: int = 0
    partition: int = 0
    read_only: bool = False
    encrypted: bool = False
    options: list[str] = field(default_factory=list)
    block_dev: bool = False
    ensure_filesystem: bool = False
    filesystem: str = ""

    @classmethod
    def from_obj(cls, o: Obj) -> "MappedVirtualDisk":
        return cls(o.str("MountPath"), o.uint("Controller", 8), o.uint("Lun", 8), o.uint("Partition", 64),
                   o.bool("ReadOnly"), o.bool("Encrypted"), o.str_list("Options"), o.bool("BlockDev"),
                   o.bool("EnsureFilesystem"), o.str("Filesystem"))


@record
class SCSIDevice:
    controller: int = 0
    lun: int = 0

    @classmethod
    def from_obj(cls, o: Obj) -> "SCSIDevice":
        return cls(o.uint("Controller", 8), o.uint("Lun", 8))


@record
class CombinedLayers:
    container_id: str = ""
    root_path: str = ""
    layers: list[str] = field(default_factory=list)
    scratch_path: str = ""

    @classmethod
    def from_obj(cls, o: Obj) -> "CombinedLayers":
        return cls(o.str("ContainerID"), o.str("ContainerRootPath"),
                   [layer.str("Path") for layer in o.obj_list("Layers")], o.str("ScratchPath"))


@record
class MappedDirectory:
    mount_path: str = ""
    port: int = 0
    share_name: str = ""
    read_only: bool = False

    @classmethod
    def from_obj(cls, o: Obj) -> "MappedDirectory":
        return cls(o.str("MountPath"), o.int("Port"), o.str("ShareName"), o.bool("ReadOnly"))
