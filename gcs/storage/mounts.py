"""mount/umount with errors that say what failed, and directories made for mounts that
are removed again when the mount fails or goes away."""
from __future__ import annotations

import errno
import os

from gcs import linux
from gcs.mountflags import PROPAGATION_FLAGS
from gcs.protocol import hresult as hr

UMOUNT_ATTEMPTS = 5


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    try:
        linux.mount(source, target, fstype, flags, data)
    except OSError as err:
        raise hr.GcsError(hr.E_FAIL, f"mount {source} on {target} ({fstype or 'bind'}): "
                                     f"{os.strerror(err.errno)}") from None


def unmount(target: str) -> None:
    """Unmount every mount stacked on target (upstream repeats until EINVAL, at most 5 times)."""
    for attempt in range(UMOUNT_ATTEMPTS):
        try:
            linux.umount(target)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOENT):
                return
            if attempt == 0:
                raise hr.GcsError(hr.E_FAIL, f"unmount {target}: {os.strerror(err.errno)}") from None
            return


def mount_disk(source: str, target: str, fstype: str, flags: int, data: str, options: list[str]) -> None:
    """Mount a block device, then apply the propagation `options` as remounts; nothing stays
    mounted on failure. It reads the device (and may replay a journal): run it off the loop."""
    mount(source, target, fstype, flags, data)
    try:
        for option in options:
            flag = PROPAGATION_FLAGS.get(option)
            if flag is not None:
                mount("", target, None, flag)
    except BaseException:
        unmount(target)
        raise


def is_mountpoint(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def make_dirs(path: str, mode: int) -> list[str]:
    """mkdir -p; returns the directories it created, deepest last (for rollback)."""
    created: list[str] = []
    missing: list[str] = []
    cur = path
    while not os.path.isdir(cur):
        if os.path.lexists(cur):
            raise hr.GcsError(hr.E_FAIL, f"{cur} exists and is not a directory")
        missing.append(cur)
        cur = os.path.dirname(cur)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        except OSError as err:
            remove_dirs(created)
            raise hr.GcsError(hr.E_FAIL, f"mkdir {directory}: {err.strerror}") from None
        created.append(directory)
    return created


def remove_dirs(created: list[str]) -> None:
    """Remove directories made by make_dirs, deepest first, if they are empty."""
    for directory in reversed(created):
        try:
            os.rmdir(directory)
        except OSError:
            return
