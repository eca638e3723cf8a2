"""Pod network namespaces: made by the agent and bind-mounted at /run/netns/<id> (where
`ip netns` looks, handy in a UVM), so the spec can name them by path, adapters can move in
before or after the sandbox's init exists, and they outlive no DeleteContainerState."""
from __future__ import annotations

import contextlib
import os

from gcs import linux
from gcs.mountflags import MNT_DETACH, MS_BIND

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

NETNS_DIR = "/run/netns"


class Netns:
    """An open network namespace: `fd` for setns and netlink, `path` for the spec."""

    def __init__(self, path: str, fd: int, owned: bool) -> None:
        self.path, self.fd, self.owned = path, fd, owned

    @classmethod
    def create(cls, name: str, directory: str = NETNS_DIR) -> "Netns":
        """A new namespace with `lo` up, bind-mounted at directory/name."""
        os.makedirs(directory, mode=0o755, exist_ok=True)
        path = os.path.join(directory, name)
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.unshare(linux.CLONE_NEWNET)
            try:
                linux.loopback_up()
                linux.mount("/proc/thread-self/ns/net", path, None, MS_BIND)
            finally:
                linux.setns(own, linux.CLONE_NEWNET)  # this thread goes back whatever happened
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(own)
        try:
            return cls(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC), owned=True)
        except BaseException:
            _unmount(path)
            raise

    @classmethod
    def open(cls, path: str) -> "Netns":
        """One named by the spec (not ours to remove)."""
        return cls(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC), owned=False)

    def close(self) -> None:
        """Forget it; ours are unmounted too (the kernel frees it with its last process)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.owned:
            _unmount(self.path)
            self.owned = False


def anonymous() -> int:
    """A new namespace with `lo` up, held by the fd returned only (no mount): closing the fd
    frees it and the links in it. This thread stays where it was."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.unshare(linux.CLONE_NEWNET)
        try:
            linux.loopback_up()
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(own)


@contextlib.contextmanager
def entered(fd: int):
    """This thread in another network namespace for a while (what it starts is born there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(fd, linux.CLONE_NEWNET)
        try:
            yield
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(own)


def _unmount(path: str) -> None:
    try:
        linux.umount(path, MNT_DETACH)
    except OSError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass


def same(fd: int, other: Optional[int]) -> bool:
    if other is None:
        return False
    a, b = os.fstat(fd), os.fstat(other)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
