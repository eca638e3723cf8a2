"""Thin wrappers for Linux syscalls Python 3.11 lacks (mount, unshare, reboot).

Loaded only when needed: importing ctypes costs ~10 ms.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct

import _socket  # not `socket`: its enums cost the spawner memory
TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Optional

CLONE_PIDFD = 0x00001000
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000


RB_POWER_OFF = 0x4321FEDC

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.reboot.argtypes = [ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: Optional[str]) -> Optional[bytes]:
    return value.encode() if value is not None else None


def mount(source: Optional[str], target: str, fstype: Optional[str], flags: int = 0,
          data: Optional[str] = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def power_off() -> None:
    os.sync()
    _check(_libc.reboot(RB_POWER_OFF), "reboot(POWER_OFF)")


_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, 155)
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
# PyDLL keeps the GIL across the call, so a cloned child starts out holding it.
_clone = ctypes.PyDLL(None, use_errno=True).syscall
_clone.restype = ctypes.c_long
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root")


def ambient_caps(caps: list[int]) -> list[int]:
    """Set the ambient set to caps; returns those the kernel refused (not both permitted and
    inheritable), which runc also skips with a warning."""
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    return [cap for cap in caps if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0]


def clone_parent() -> tuple[int, int]:
    """fork(), except that the child becomes a child of our parent (CLONE_PARENT): its exit
    status goes to our parent's waitpid. Returns (pid, pidfd) in the parent, (0, -1) in the
    child; the pidfd (CLONE_PIDFD) names this very process, whatever happens to its pid.
    Only for a single-threaded caller whose child ends in exec or _exit (libc's and
    Python's at-fork hooks do not run)."""
    if _SYS_CLONE is None:
        raise OSError(38, f"clone: not wired for {os.uname().machine}")
    pidfd = ctypes.c_int(-1)
    # The pidfd comes back through the parent_tid argument (the third on every arch).
    pid = _clone(ctypes.c_long(_SYS_CLONE), ctypes.c_ulong(CLONE_PARENT | CLONE_PIDFD | 17),  # 17: SIGCHLD
                 None, ctypes.byref(pidfd), None, None)
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone: {os.strerror(err)}")
    return (pid, pidfd.value) if pid else (0, -1)


def loopback_up() -> None:
    """Bring up `lo` in the current network namespace (what runc's "loopback" network does
    for a new one)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 1
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        current = fcntl.ioctl(sock, siocgifflags, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack_from("16sH", current)[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))
    finally:
        sock.close()


# --- keyrings (keyctl(2); libkeyutils is not in the UVM) -------------------------------------
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(os.uname().machine, 250)
KEYCTL_SETPERM, KEYCTL_DESCRIBE, KEYCTL_JOIN_SESSION_KEYRING = 5, 6, 1


def _keyctl(op: int, *args) -> int:
    result = _libc.syscall(ctypes.c_long(_SYS_KEYCTL), ctypes.c_long(op), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"keyctl: {os.strerror(err)}")
    return result


def join_session_keyring(name: str) -> int:
    """Join the session keyring called name (made if none we may search has that name)."""
    return _keyctl(KEYCTL_JOIN_SESSION_KEYRING, ctypes.c_char_p(name.encode()))


def key_perm(serial: int) -> int:
    """A key's permission mask, from KEYCTL_DESCRIBE ("type;uid;gid;perm;description")."""
    buf = ctypes.create_string_buffer(512)
    _keyctl(KEYCTL_DESCRIBE, ctypes.c_long(serial), buf, ctypes.c_long(len(buf)))
    return int(buf.value.split(b";")[3], 16)


def set_key_perm(serial: int, perm: int) -> None:
    _keyctl(KEYCTL_SETPERM, ctypes.c_long(serial), ctypes.c_ulong(perm))


# --- opening a file inside a directory tree, as if it were the root ---------------------------
_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT = 0x02, 0x10


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2); OSError(ENOSYS) on kernels before 5.6."""
    how = struct.pack("QQQ", flags, 0, resolve)  # struct open_how: flags, mode, resolve
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(path.encode()),
                       ctypes.c_char_p(how), ctypes.c_size_t(len(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"openat2 {path}: {os.strerror(err)}")
    return fd
