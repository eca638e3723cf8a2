"""dm-linear devices through the device-mapper ioctls (linux/dm-ioctl.h), as hcsshim's Go GCS
does: no dmsetup in the image, no process per layer, and no udev needed for the node, which
we make ourselves at /dev/mapper/<name> (a UVM runs no udev)."""
from __future__ import annotations

import fcntl
import os
import stat
import struct

DM_VERSION = (4, 0, 0)
DM_NAME_LEN, DM_UUID_LEN = 128, 129
# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags,
# event_nr, padding, dev, name, uuid, data[7]
HEADER = struct.Struct(f"=3IIIIiIIIQ{DM_NAME_LEN}s{DM_UUID_LEN}s7s")
# struct dm_target_spec: sector_start, length, status, next, target_type[16]
TARGET = struct.Struct("=QQiI16s")
DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD = 3, 4, 6, 9
DM_READONLY_FLAG = 1
CONTROL = "/dev/mapper/control"


def _ioctl_number(command: int) -> int:
    return (3 << 30) | (HEADER.size << 16) | (0xFD << 8) | command  # _IOWR(0xfd, command, dm_ioctl)


def _call(command: int, name: str, flags: int = 0, payload: bytes = b"", targets: int = 0) -> tuple[int, ...]:
    size = HEADER.size + len(payload)
    buf = bytearray(HEADER.pack(*DM_VERSION, size, HEADER.size, targets, 0, flags, 0, 0, 0,
                                name.encode(), b"", b"") + payload)
    fd = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _ioctl_number(command), buf)
    finally:
        os.close(fd)
    return HEADER.unpack_from(buf)


def _decode_dev(dev: int) -> tuple[int, int]:
    """The kernel's huge_encode_dev: minor's low byte, major, then minor's high bits."""
    return (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def create_linear(name: str, device: str, offset_sectors: int, size_sectors: int, read_only: bool = True) -> str:
    """A dm-linear device over a sector range of `device`; returns its /dev/mapper path."""
    if len(name) >= DM_NAME_LEN:
        raise ValueError(f"device-mapper name too long: {name}")
    fields = _call(DM_DEV_CREATE, name)
    major, minor = _decode_dev(fields[10])  # dev, after version[3] and seven u32 fields
    try:
        params = f"{device} {offset_sectors}".encode() + b"\0"
        params += b"\0" * (-(TARGET.size + len(params)) % 8)
        spec = TARGET.pack(0, size_sectors, 0, 0, b"linear") + params
        _call(DM_TABLE_LOAD, name, DM_READONLY_FLAG if read_only else 0, spec, targets=1)
        _call(DM_DEV_SUSPEND, name)  # without DM_SUSPEND_FLAG: resume, the table goes live
        path = f"/dev/mapper/{name}"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.mknod(path, stat.S_IFBLK | 0o600, os.makedev(major, minor))
    except BaseException:
        remove(name)
        raise
    return path


def remove(name: str) -> None:
    try:
        os.unlink(f"/dev/mapper/{name}")
    except FileNotFoundError:
        pass
    _call(DM_DEV_REMOVE, name)
