"""A reproducible initramfs: the "newc" cpio format written from a directory tree.

Same tree, same bytes: entries sorted by path, fixed mtime, owner root, inode numbers in
order, no hard links; device nodes (which a non-root build could not create on disk) are
given as extra entries.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

MAGIC = b"070701"


@dataclass(frozen=True)
class Node:
    """A device node to add: path inside the archive, S_IFCHR/S_IFBLK | permissions, numbers."""
    path: str
    mode: int
    major: int
    minor: int


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int], name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = MAGIC + b"".join(b"%08X" % v for v in fields) + name + b"\0"
    return head + b"\0" * (-len(head) % 4)


def _entries(root: str) -> list[str]:
    """Every path under root, relative, parents before children, in byte order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out, key=lambda p: p.split(os.sep))


def write(root: str, out_path: str, mtime: int = 0, nodes: tuple[Node, ...] = ()) -> int:
    """Write the archive of root (plus nodes) to out_path; returns its size."""
    extra = {n.path.strip("/"): n for n in nodes}
    paths = sorted(set(_entries(root)) | set(extra), key=lambda p: p.split(os.sep))
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as out:
        ino = 0
        for rel in paths:
            ino += 1
            name = rel.encode()
            node = extra.get(rel)
            if node is not None:
                out.write(_header(ino, node.mode, 1, mtime, 0, (node.major, node.minor), name))
                continue
            full = os.path.join(root, rel)
            st = os.lstat(full)
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out.write(_header(ino, stat.S_IFDIR | perm, 2, mtime, 0, (0, 0), name))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(full).encode()
                out.write(_header(ino, stat.S_IFLNK | 0o777, 1, mtime, len(target), (0, 0), name))
                out.write(target + b"\0" * (-len(target) % 4))
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    data = f.read()
                out.write(_header(ino, stat.S_IFREG | perm, 1, mtime, len(data), (0, 0), name))
                out.write(data + b"\0" * (-len(data) % 4))
            else:
                raise ValueError(f"{full}: only directories, files and symlinks go into the image")
        out.write(_header(ino + 1, 0, 1, 0, 0, (0, 0), b"TRAILER!!!"))
        size = out.tell()
        pad = -size % 512
        out.write(b"\0" * pad)
    os.replace(tmp, out_path)
    return size + pad


def read(path: str) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of every entry: for tests and for the size report."""
    with open(path, "rb") as f:
        blob = f.read()
    out, pos = [], 0
    while True:
        if blob[pos:pos + 6] != MAGIC:
            raise ValueError(f"{path}: bad cpio header at {pos}")
        fields = [int(blob[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, blob[data_start:data_start + size]))
        pos = data_start + size + (-size % 4)
