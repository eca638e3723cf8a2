"""What a block device already holds, from the magic numbers at the start of it.

EnsureFilesystem formats only a device that holds nothing: a disk with any filesystem,
partition table, swap area, LUKS header or other data on it is never formatted behind the
host's back (upstream formats whatever is not ext4, so an xfs disk loses its data on every
Add). Everything the signatures below need lies in the first SIGNATURE_BYTES of a device.
"""
from __future__ import annotations

import os

from gcs.record import record

SIGNATURE_BYTES = 72 * 1024  # past btrfs's superblock at 64 KiB and iso9660's at 32 KiB
EXT_SUPERBLOCK = 1024
EXT_MAGIC = b"\x53\xef"  # le16 0xEF53 at superblock + 0x38
EXT4_INCOMPAT = 0x0040 | 0x0080 | 0x0200 | 0x0400 | 0x8000  # extents, 64bit, flex_bg, ea_inode, inline_data
EXT4_RO_COMPAT = 0x0008 | 0x0010 | 0x0020 | 0x0040 | 0x0400  # huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum
EXT3_COMPAT_JOURNAL = 0x0004
EXT_FAMILY = ("ext2", "ext3", "ext4")  # all mounted by the ext4 driver as "ext4"
# (offset, magic, name, type to mount it as or "" when it is not a filesystem)
SIGNATURES = (
    (0, b"LUKS\xba\xbe", "crypto_LUKS", ""),
    (0x4000, b"SKUL\xba\xbe", "crypto_LUKS", ""),  # LUKS2's second header copy
    (0, b"XFSB", "xfs", "xfs"),
    (0x10040, b"_BHRfS_M", "btrfs", "btrfs"),
    (0, b"hsqs", "squashfs", "squashfs"),
    (1024, b"\xe2\xe1\xf5\xe0", "erofs", "erofs"),
    (3, b"EXFAT   ", "exfat", "exfat"),
    (3, b"NTFS    ", "ntfs", ""),
    (0x8001, b"CD001", "iso9660", "iso9660"),
    (512, b"EFI PART", "a GPT partition table", ""),
    (512, b"LABELONE", "LVM2_member", ""),
    (0, b"\xfc\x4e\x2b\xa9", "linux_raid_member", ""),  # md superblock 1.1
    (4096, b"\xfc\x4e\x2b\xa9", "linux_raid_member", ""),  # md superblock 1.2
) + tuple((page - 10, magic, "swap", "") for page in (4096, 8192, 16384, 65536)
          for magic in (b"SWAPSPACE2", b"SWAP-SPACE"))


@record
class Found:
    name: str    # what blkid would call it (ext4, xfs, swap, ...), or a description
    fstype: str  # the filesystem type to mount it as; "" when it is not a filesystem
    known: bool = True  # False: nonzero data that no signature here matches


def identify(head: bytes) -> Found | None:
    """What the first bytes of a device hold; None when they are all zero (a blank device)."""
    ext = _ext(head)
    if ext is not None:
        return Found(ext, "ext4")
    for offset, magic, name, fstype in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return Found(name, fstype)
    if head[510:512] == b"\x55\xaa":  # a boot sector: FAT, or an MBR partition table
        if head[54:59] == b"FAT12" or head[54:59] == b"FAT16" or head[82:87] == b"FAT32":
            return Found("vfat", "vfat")
        return Found("a DOS partition table", "")
    if not head.strip(b"\0"):
        return None
    first = len(head) - len(head.lstrip(b"\0"))
    return Found(f"data of no known format (a nonzero byte at offset {first})", "", known=False)


def _ext(head: bytes) -> str | None:
    sb = head[EXT_SUPERBLOCK:EXT_SUPERBLOCK + 0x68]
    if len(sb) < 0x68 or sb[0x38:0x3A] != EXT_MAGIC:
        return None
    compat, incompat, ro_compat = (int.from_bytes(sb[o:o + 4], "little") for o in (0x5C, 0x60, 0x64))
    if incompat & EXT4_INCOMPAT or ro_compat & EXT4_RO_COMPAT:
        return "ext4"
    return "ext3" if compat & EXT3_COMPAT_JOURNAL else "ext2"


def read_head(device: str, size: int = SIGNATURE_BYTES) -> bytes:
    """The first `size` bytes of device (fewer if it is smaller). Blocks: run it off the loop."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        got = 0
        while got < size:
            chunk = os.pread(fd, size - got, got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def detect(device: str) -> Found | None:
    return identify(read_head(device))


def compatible(found: Found, wanted: str) -> bool:
    """Whether a device holding `found` can be mounted as `wanted` without formatting."""
    if found.fstype == "ext4":
        return wanted in EXT_FAMILY
    return bool(found.fstype) and found.fstype == wanted
