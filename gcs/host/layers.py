"""A layer tar -> an ext4 layer image, the way hcsshim's tar2ext4 makes LCOW layers for vPMEM.

The tar is unpacked as root into a private directory (owners, modes, times, hard links,
devices, fifos, xattrs kept; no entry may write outside it), OCI whiteouts become overlayfs
ones (`.wh.NAME` -> a 0:0 character device NAME, `.wh..wh..opq` -> trusted.overlay.opaque=y
on the directory), and `mkfs.ext4 -d` builds the image from it: 4 KiB blocks, no journal,
no inline data, as DAX wants. Images are cached by layer digest.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from typing import IO

from gcs.host.oci import ImageError, Layer
from gcs.host.progress import Counting, Progress

BLOCK = 4096
MIB = 1 << 20
MIN_IMAGE = 2 * MIB
ALIGN = 2 * MIB  # a virtio-pmem device maps its image in 2 MiB subsections
INODE_SIZE = 256  # room for in-inode xattrs (whiteouts, opaque markers) and ns timestamps
OPAQUE = ".wh..wh..opq"
WHITEOUT = ".wh."


def layer_image(layer: Layer, cache_dir: str, progress: "Progress | None" = None) -> str:
    """`<cache_dir>/<digest-hex>.ext4` for `layer`, built on first use (what it is doing and
    how far on `progress`, when given)."""
    algo, _, hexd = layer.digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ImageError(f"layer {layer.digest}: not a sha256 digest")
    final = os.path.join(cache_dir, hexd + ".ext4")
    if os.path.isfile(final):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    # Private (0700) and in the cache directory: the image is renamed into place on the same
    # filesystem, so the final name only ever holds a complete image.
    work = tempfile.mkdtemp(prefix=f".{hexd[:16]}-", dir=cache_dir)
    try:
        tree = os.path.join(work, "root")
        os.mkdir(tree, 0o755)
        with layer.open() as stream:
            if progress is not None:
                # the tar's own size is known only when the blob is not compressed
                progress.step(f"unpacking layer {hexd[:12]}", layer.size if layer.compression == "tar" else None)
                stream = Counting(stream, progress)  # type: ignore[assignment]
            unpack(stream, tree, f"layer {layer.digest}")
        image = os.path.join(work, "image.ext4")
        if progress is not None:
            progress.step(f"writing the ext4 image of layer {hexd[:12]}")
        build_ext4(tree, image, f"layer {layer.digest}")
        if progress is not None:
            progress.end()
        os.replace(image, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


# -- unpacking ------------------------------------------------------------------------------

class _Strict(tarfile.TarInfo):
    """tarfile takes a truncated or garbled header after the first for the end of the archive;
    for a layer that would silently drop files, so it is an error here."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            raise tarfile.ReadError(f"bad header at byte {tar.offset}: {e}") from None


class _Unpack:
    def __init__(self, root: str, label: str) -> None:
        self.root, self.label = root, label
        self.dirs: dict[str, tarfile.TarInfo] = {}  # metadata last: children change mtimes
        self.opaque: set[str] = set()

    def fail(self, name: str, why: str) -> ImageError:
        return ImageError(f"{self.label}: tar entry {name!r}: {why}")

    def parts(self, name: str, entry: str | None = None) -> list[str]:
        """The path components of an entry's name (or of its hard link target), refusing
        anything that could leave the root."""
        what = name if entry is None else entry
        of = "" if entry is None else f"hard link target {name!r}: "
        if name.startswith("/"):
            raise self.fail(what, of + "absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.fail(what, of + "path with '..'")
        return parts

    def parent(self, name: str, parts: list[str], create: bool) -> str:
        """The host path of the entry's directory. Every component must be a real directory:
        never a symlink (an earlier entry could point it anywhere)."""
        path = self.root
        for p in parts:
            path = os.path.join(path, p)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise self.fail(name, f"{p!r} does not exist") from None
                os.mkdir(path)  # a tar that skips parent entries
                os.chmod(path, 0o755)  # whatever the umask
                continue
            if stat.S_ISLNK(st.st_mode):
                raise self.fail(name, f"goes through the symlink {p!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise self.fail(name, f"{p!r} is not a directory")
        return path

    def clear(self, path: str) -> None:
        """A later entry replaces an earlier one of the same name (tar semantics)."""
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        else:
            return
        for d in [d for d in self.dirs if d == path or d.startswith(path + "/")]:
            del self.dirs[d]
        self.opaque = {d for d in self.opaque if not (d == path or d.startswith(path + "/"))}

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self.parts(m.name)
        if not parts:  # the layer's own root
            if m.isdir():
                self.dirs[self.root] = m
            return
        name = parts[-1]
        pdir = self.parent(m.name, parts[:-1], create=True)
        if name == OPAQUE:
            self.opaque.add(pdir)
            return
        if name.startswith(WHITEOUT + WHITEOUT):  # other aufs bookkeeping (.wh..wh.plnk, ...)
            return
        if name.startswith(WHITEOUT):
            if name[len(WHITEOUT):] in ("", ".", ".."):
                raise self.fail(m.name, "whiteout of no name")
            path = os.path.join(pdir, name[len(WHITEOUT):])
            self.clear(path)
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))  # overlayfs' whiteout
            return
        path = os.path.join(pdir, name)
        if m.isdir():
            if not (os.path.isdir(path) and not os.path.islink(path)):
                self.clear(path)
                os.mkdir(path, 0o700)
            self.dirs[path] = m
            return
        self.clear(path)
        if m.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out, tar.extractfile(m) as src:  # type: ignore[union-attr]
                shutil.copyfileobj(src, out, MIB)
        elif m.issym():
            os.symlink(m.linkname, path)  # any target: it is never followed while unpacking
        elif m.islnk():
            tparts = self.parts(m.linkname, m.name)
            if not tparts:
                raise self.fail(m.name, "hard link to the root")
            target = os.path.join(self.parent(m.name, tparts[:-1], create=False), tparts[-1])
            if not os.path.lexists(target) or (os.path.isdir(target) and not os.path.islink(target)):
                raise self.fail(m.name, f"hard link to {m.linkname!r}, which is no earlier file")
            os.link(target, path, follow_symlinks=False)  # shares the target's metadata
            return
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise self.fail(m.name, f"unsupported entry type {m.type!r}")
        self.meta(path, m)

    def meta(self, path: str, m: tarfile.TarInfo) -> None:
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        if not m.issym():
            os.chmod(path, stat.S_IMODE(m.mode))  # after chown, which clears set-id bits
        for key, value in m.pax_headers.items():  # after chown, which drops security.capability
            if not key.startswith("SCHILY.xattr."):
                continue
            xname = key[len("SCHILY.xattr."):]
            if xname.startswith("trusted.overlay."):
                continue  # only whiteout conversion may steer overlayfs
            try:
                os.setxattr(path, xname, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as e:
                if m.issym() and e.errno == errno.EPERM:  # user.* is refused on symlinks
                    continue
                raise self.fail(m.name, f"cannot set xattr {xname}: {e.strerror}") from None
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        for path, m in self.dirs.items():
            self.meta(path, m)
        if self.root not in self.dirs:
            os.chmod(self.root, 0o755)
        for path in self.opaque:
            os.setxattr(path, "trusted.overlay.opaque", b"y")


def unpack(stream: IO[bytes], root: str, label: str = "layer") -> None:
    """Unpack a layer tar into the empty directory `root`, as root, with OCI whiteouts turned
    into overlayfs ones; reads `stream` to its end (where a layer's digest is checked)."""
    u = _Unpack(root, label)
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_Strict) as tar:
            for m in tar:
                u.entry(tar, m)
        while stream.read(MIB):
            pass
        u.finish()
    except ImageError:
        raise
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ImageError(f"{label}: corrupt tar ({e})") from None
    except OSError as e:
        raise ImageError(f"{label}: cannot unpack {os.path.relpath(e.filename or root, root)}: "
                         f"{e.strerror}") from None


# -- the image ------------------------------------------------------------------------------

def estimate_size(tree: str) -> tuple[int, int]:
    """(image bytes, inode count) for a tree: data blocks (hard links once), directory and
    long-symlink blocks, xattr blocks, the inode table, plus ~25% slack; 2 MiB-aligned."""
    seen: set[int] = set()
    blocks, inodes = 0, 1
    for dirpath, dirnames, filenames in os.walk(tree):
        names = dirnames + filenames
        entry_bytes = sum(8 + (len(os.fsencode(n)) + 3) // 4 * 4 for n in names) + 24
        blocks += -(-entry_bytes * 4 // 3 // BLOCK)  # htree leaves are not full
        for n in names:
            path = os.path.join(dirpath, n)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            inodes += 1
            if stat.S_ISREG(st.st_mode):
                data = -(-st.st_size // BLOCK)
                blocks += data + data // 32768  # extent blocks: one for each 128 MiB, generous
            elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:  # longer targets leave the inode
                blocks += 1
            xattrs = os.listxattr(path, follow_symlinks=False)
            if sum(len(x) + 16 for x in xattrs) + sum(
                    len(os.getxattr(path, x, follow_symlinks=False)) for x in xattrs) > 96:
                blocks += 1  # does not fit in the inode
    inodes = (inodes + 16) * 5 // 4  # + reserved inodes and lost+found, + slack
    size = (blocks * BLOCK + inodes * INODE_SIZE) * 5 // 4 + MIB  # + superblocks, bitmaps
    return max(MIN_IMAGE, -(-size // ALIGN) * ALIGN), inodes


def build_ext4(tree: str, image: str, label: str = "layer") -> int:
    """mkfs.ext4 -d: the layer image of `tree` at `image`; returns its size in bytes."""
    size, inodes = estimate_size(tree)
    cmd = ["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-N", str(inodes),
           "-O", "^has_journal,^inline_data,^resize_inode", "-E", "lazy_itable_init=0,nodiscard",
           "-m", "0", "-d", tree, image, f"{size // 1024}k"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise ImageError("mkfs.ext4 is not installed (apt-get install e2fsprogs)") from None
    except subprocess.CalledProcessError as e:
        raise ImageError(f"{label}: mkfs.ext4 failed: {(e.stderr or e.stdout).strip()}") from None
    return size
