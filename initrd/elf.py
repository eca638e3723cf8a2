"""Just enough ELF reading for the image build: a shared object's DT_NEEDED names and its
runtime path, and a kernel module's .modinfo (depends=, softdep=). No binutils or kmod
needed on the build machine."""
from __future__ import annotations

import struct

DT_NEEDED, DT_STRTAB, DT_RUNPATH = 1, 5, 29
PT_DYNAMIC = 2


class ElfError(Exception):
    pass


class Elf:
    """A 64-bit little-endian ELF file (all this project builds for)."""

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self.data = f.read()
        if self.data[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file")
        if self.data[4] != 2 or self.data[5] != 1:
            raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
        self.path = path
        (self.phoff, self.shoff, _, _, self.phentsize, self.phnum, self.shentsize, self.shnum,
         self.shstrndx) = struct.unpack_from("<QQIHHHHHH", self.data, 0x20)

    def _sections(self) -> list[tuple[int, int, int, int]]:
        """(name offset, type, file offset, size) of every section header."""
        out = []
        for i in range(self.shnum):
            name, kind, _, _, offset, size = struct.unpack_from("<IIQQQQ", self.data, self.shoff + i * self.shentsize)
            out.append((name, kind, offset, size))
        return out

    def section(self, wanted: str) -> bytes | None:
        sections = self._sections()
        if not sections:
            return None
        _, _, strtab, _ = sections[self.shstrndx]
        for name, _, offset, size in sections:
            end = self.data.index(b"\0", strtab + name)
            if self.data[strtab + name:end].decode() == wanted:
                return self.data[offset:offset + size]
        return None

    def _vaddr_to_offset(self, vaddr: int) -> int:
        for i in range(self.phnum):
            kind, _, offset, addr, _, filesz = struct.unpack_from("<IIQQQQ", self.data, self.phoff + i * self.phentsize)
            if kind == 1 and addr <= vaddr < addr + filesz:  # PT_LOAD
                return vaddr - addr + offset
        raise ElfError(f"{self.path}: address 0x{vaddr:x} is in no loaded segment")

    def dynamic(self) -> tuple[list[str], list[str]]:
        """(DT_NEEDED names, DT_RUNPATH entries); empty for a static executable."""
        for i in range(self.phnum):
            kind, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", self.data, self.phoff + i * self.phentsize)
            if kind != PT_DYNAMIC:
                continue
            entries = [struct.unpack_from("<qQ", self.data, offset + j) for j in range(0, filesz, 16)]
            strtab = next((v for t, v in entries if t == DT_STRTAB), None)
            if strtab is None:
                return [], []
            base = self._vaddr_to_offset(strtab)

            def string(at: int) -> str:
                end = self.data.index(b"\0", base + at)
                return self.data[base + at:end].decode()

            needed = [string(v) for t, v in entries if t == DT_NEEDED]
            runpath = [p for t, v in entries if t == DT_RUNPATH for p in string(v).split(":") if p]
            return needed, runpath
        return [], []


def needed(path: str) -> list[str]:
    return Elf(path).dynamic()[0]


def modinfo(path: str) -> dict[str, list[str]]:
    """A kernel module's .modinfo key=value strings, values grouped by key."""
    raw = Elf(path).section(".modinfo") or b""
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False
