"""Host tooling for storage: read-only layer images and scratch disks (ext4).

Layer images are what hcsshim's tar2ext4 makes for vPMEM: a bare ext4 filesystem starting
at byte 0, 4 KiB blocks, no journal and no inline data (so DAX can map every file).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile

BLOCK = 4096
MIN_IMAGE = 2 * 1024 * 1024


def _tree_size(root: str) -> tuple[int, int]:
    size, inodes = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        inodes += 1 + len(dirnames) + len(filenames)
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            size += (st.st_size + BLOCK - 1) // BLOCK * BLOCK
    return size, inodes


def make_layer_image(source: str, image: str, size: int | None = None) -> int:
    """Build `image` from a directory or a tar file; returns the image size in bytes."""
    tmp = None
    try:
        if os.path.isfile(source):
            tmp = tempfile.mkdtemp(prefix="layer-")
            with tarfile.open(source) as tar:
                tar.extractall(tmp, numeric_owner=True, filter="tar")
            source = tmp
        if not os.path.isdir(source):
            raise FileNotFoundError(f"layer source {source} is neither a directory nor a tar file")
        if size is None:
            data, inodes = _tree_size(source)
            size = max(MIN_IMAGE, (data + inodes * 512) * 5 // 4 + 1024 * 1024)
            size = (size + BLOCK - 1) // BLOCK * BLOCK
        if os.path.exists(image):
            os.unlink(image)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-O", "^has_journal,^inline_data,^resize_inode",
                        "-E", "lazy_itable_init=0,nodiscard", "-m", "0", "-d", source, image, str(size // 1024) + "k"],
                       check=True, capture_output=True)
        return size
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def make_scratch_image(image: str, size: int) -> None:
    """An empty ext4 scratch disk, formatted the way hcsshim formats scratch VHDs."""
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,nodiscard",
                    "-O", "^has_journal,sparse_super2,^resize_inode", image],
                   check=True, capture_output=True)


def attach_loop(image: str, read_only: bool = True, offset: int = 0, size: int = 0) -> str:
    """A loop device over image (or a byte range of it): what stands in for a hot-added disk."""
    args = ["losetup", "-f", "--show"] + (["-r"] if read_only else [])
    if offset or size:
        args += ["-o", str(offset)] + (["--sizelimit", str(size)] if size else [])
    return subprocess.run(args + [image], check=True, capture_output=True, text=True).stdout.strip()


def detach_loop(device: str, timeout: float = 5.0) -> bool:
    """Detach a loop device; an agent's mount namespace that is still going away keeps it
    busy for a moment, so this retries until `timeout`."""
    import time
    deadline = time.monotonic() + timeout
    while subprocess.run(["losetup", "-d", device], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
