"""Guest memory as the vhost-user front-end shares it: regions of guest-physical addresses,
each backed by an mmap of a passed fd, with QEMU's own virtual address for each region
(vring addresses arrive as QEMU virtual addresses and must be translated).

Every access is bounds-checked: a descriptor pointing outside the mapped memory raises
GuestMemoryError instead of reading or writing anything.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass


class GuestMemoryError(Exception):
    pass


@dataclass
class Region:
    guest_addr: int   # guest-physical start
    size: int
    user_addr: int    # the front-end's (QEMU's) virtual address of the region
    mapping: mmap.mmap | memoryview
    offset: int = 0   # where the region starts inside the mapping

    def contains(self, gpa: int, length: int) -> bool:
        return self.guest_addr <= gpa and gpa + length <= self.guest_addr + self.size


class GuestMemory:
    def __init__(self) -> None:
        self.regions: list[Region] = []

    def add(self, region: Region) -> None:
        if region.size <= 0:
            raise GuestMemoryError("memory region with no size")
        for other in self.regions:
            if region.guest_addr < other.guest_addr + other.size and other.guest_addr < region.guest_addr + region.size:
                raise GuestMemoryError("overlapping memory regions")
        self.regions.append(region)

    def clear(self) -> None:
        for region in self.regions:
            if isinstance(region.mapping, mmap.mmap):
                region.mapping.close()
        self.regions = []

    def _find(self, gpa: int, length: int) -> Region:
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest range {gpa:#x}+{length}")
        for region in self.regions:
            if region.contains(gpa, length):
                return region
        raise GuestMemoryError(f"guest range {gpa:#x}+{length} is outside guest memory")

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy view of guest memory; the whole range must lie in one region."""
        region = self._find(gpa, length)
        start = region.offset + gpa - region.guest_addr
        return memoryview(region.mapping)[start:start + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def translate_user(self, user_addr: int, length: int = 1) -> int:
        """Front-end virtual address -> guest-physical address (for vring addresses)."""
        for region in self.regions:
            if region.user_addr <= user_addr and user_addr + length <= region.user_addr + region.size:
                return region.guest_addr + (user_addr - region.user_addr)
        raise GuestMemoryError(f"front-end address {user_addr:#x}+{length} is not in any memory region")
