"""Overlay rootfs mounts that work with any number of layers.

mount(2) takes at most one page of options, so a long lowerdir list (hcsshim#940: ~4 KiB
of layer paths) fails upstream. Past that size the lower layers are named through a
private directory of one-character-or-so symlinks (`0`, `1`, ...) and mounted from inside
it, so the option string stays short whatever the layer paths are; overlayfs resolves the
symlinks at mount time and the directory is removed afterwards. This works on every
kernel (the new mount API's `lowerdir+` needs 6.8).
"""
from __future__ import annotations

import os
import tempfile

from gcs.mountflags import MS_BIND, MS_RDONLY, MS_REMOUNT
from gcs.storage import mounts

MOUNT_DATA_LIMIT = 4000  # one page minus room for the kernel's own additions


def overlay_options(layers: list[str], upper: str | None, work: str | None) -> str:
    data = "lowerdir=" + ":".join(_escape(p) for p in layers)
    if upper and work:
        data += f",upperdir={_escape(upper)},workdir={_escape(work)}"
    return data


def _escape(path: str) -> str:
    # overlayfs splits lowerdir on ':' and options on ','; both must be escaped.
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def mount_overlay(target: str, layers: list[str], upper: str | None, work: str | None,
                  scratch_dir: str) -> None:
    flags = 0 if upper else MS_RDONLY
    if len(layers) == 1 and not upper:
        # overlayfs wants two lower layers without an upper one; a read-only bind is the same view.
        mounts.mount(layers[0], target, None, MS_BIND)
        try:
            mounts.mount("", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        except BaseException:
            mounts.unmount(target)
            raise
        return
    data = overlay_options(layers, upper, work)
    if len(data) <= MOUNT_DATA_LIMIT:
        mounts.mount("overlay", target, "overlay", flags, data)
        return
    links = tempfile.mkdtemp(prefix=".ovl-", dir=scratch_dir)
    names = [str(i) for i in range(len(layers))]
    made: list[str] = []
    saved = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        targets = list(zip(names, layers)) + ([("u", upper), ("w", work)] if upper and work else [])
        for name, path in targets:
            os.symlink(path, os.path.join(links, name))
            made.append(name)
        # cwd is the process's: this runs on the loop thread, whose own calls never wait in
        # between, and worker threads use absolute paths only
        os.chdir(links)
        mounts.mount("overlay", target, "overlay", flags,
                     overlay_options(names, "u" if upper else None, "w" if work else None))
    finally:
        os.fchdir(saved)
        os.close(saved)
        _remove_links(links, made)


def _remove_links(links: str, names: list[str]) -> None:
    """Remove the short-name directory: only the symlinks made in it, never a tree walk
    (nothing else can be in it, and an rmtree of a directory is unbounded work)."""
    for name in names:
        try:
            os.unlink(os.path.join(links, name))
        except OSError:
            pass
    try:
        os.rmdir(links)
    except OSError:
        pass
