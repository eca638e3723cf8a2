"""Host tooling for storage: read-only layer images and scratch disks (ext4).

Layer images are what hcsshim's tar2ext4 makes for vPMEM: a bare ext4 filesystem starting
at byte 0, 4 KiB blocks, no journal and no inline data (so DAX can map every file).
"""
from __future__ import annotations

import copy
import errno
import os
import shutil
import subprocess
import tarfile
import tempfile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gcs.host.progress import Progress

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


def make_layer_image(source: str, image: str, size: int | None = None,
                     progress: "Progress | None" = None) -> int:
    """Build `image` from a directory or a tar file; returns the image size in bytes."""
    if not os.path.exists(source):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", source)
    tmp = None
    try:
        if os.path.isfile(source):
            tmp = tempfile.mkdtemp(prefix="layer-")
            _unpack_tar(source, tmp, progress)
            source = tmp
        if not os.path.isdir(source):
            raise ValueError(f"layer source {source} is neither a directory nor a tar file")
        if size is None:
            data, inodes = _tree_size(source)
            size = max(MIN_IMAGE, (data + inodes * 512) * 5 // 4 + 1024 * 1024)
            size = (size + BLOCK - 1) // BLOCK * BLOCK
        if os.path.exists(image):
            os.unlink(image)
        if progress is not None:
            progress.step(f"writing {image} ({size >> 20} MiB, mkfs.ext4 -d)")
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-O", "^has_journal,^inline_data,^resize_inode",
                        "-E", "lazy_itable_init=0,nodiscard", "-m", "0", "-d", source, image, str(size // 1024) + "k"],
                       check=True, capture_output=True)
        if progress is not None:
            progress.end()
        return size
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _unpack_tar(source: str, dest: str, progress: "Progress | None") -> None:
    from gcs.host.progress import Counting

    with open(source, "rb") as raw:
        fileobj = raw
        if progress is not None:
            progress.step(f"unpacking {source}", os.fstat(raw.fileno()).st_size)
            fileobj = Counting(raw, progress)  # type: ignore[assignment]
        with tarfile.open(fileobj=fileobj) as tar:
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(dest, numeric_owner=True, filter="tar")
            else:  # Python before 3.11.4 (Debian bookworm's 3.11.2) has no filters: the same checks here
                tar.extractall(dest, members=_tar_filtered(tar, dest), numeric_owner=True)


def _tar_filtered(tar: tarfile.TarFile, dest: str):  # noqa: ANN202 - a generator of TarInfo
    """tarfile's "tar" filter for interpreters without it: leading slashes stripped, nothing
    outside `dest`, no setuid/setgid/sticky or group/other write bits."""
    root = os.path.realpath(dest)
    for member in tar:
        member = copy.copy(member)
        member.name = member.name.lstrip("/")
        target = os.path.realpath(os.path.join(root, member.name))
        if os.path.commonpath([root, target]) != root:
            raise ValueError(f"tar member {member.name!r} would be outside the layer")
        if not member.issym():
            member.mode &= 0o755
        yield member


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
