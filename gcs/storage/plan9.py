"""Plan 9 (MappedDirectory) mounts and unmounts that a silent host server cannot stall.

mount(2) of 9p over `trans=fd` blocks until the server answers version and attach, and an
unmount blocks on the clunks it sends; a server that accepts the connection and never
answers would hold either forever. Both run on a worker thread under a bound. When the
bound runs out the agent hangs up its own end of the connection (shutdown(2) on the
socket it keeps for that): the kernel's 9p client sees the connection end, fails every
request in flight, and the blocked call returns. A mount that still completes after its
request failed is unmounted again, and its socket closed, when its thread ends.
"""
from __future__ import annotations

import socket

from gcs import aio
from gcs.log import log
from gcs.protocol import hresult as hr
from gcs.storage import mounts, offload

ABORT_GRACE = 2.0  # how long a call may take to return once its connection is hung up
BUFFER = 65536


def mount_data(fd: int, read_only: bool, share: str) -> str:
    data = f"trans=fd,rfdno={fd},wfdno={fd},msize={BUFFER}"
    if read_only:
        data += ",noload"
    if share:
        data += f",aname={share}"
    return data


def hang_up(sock: socket.socket) -> None:
    """End the connection under the kernel's 9p client; its waits then fail at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


async def mount(path: str, sock: socket.socket, flags: int, data: str, timeout: float,
                created: list[str], busy: set[str]) -> None:
    """Mount 9p at path over sock within timeout. The socket stays open while the thread
    may still use its fd number (a close would let the number be reused under it): on
    failure it is closed once the thread has ended, so the caller must not close it. While
    a thread that outlived its request is still in mount(2), path is in `busy`."""
    fut = aio.run_in_thread(mounts.mount, path, path, "9p", flags, data)
    try:
        if not await offload.settled(fut, timeout):
            log.warning("Plan 9 mount got no answer: hanging up", path=path, timeout_s=timeout)
            hang_up(sock)
            await offload.settled(fut, ABORT_GRACE)
            raise hr.GcsError(hr.VMCOMPUTE_TIMEOUT, f"mount of the Plan 9 share at {path}: the host's 9p server "
                                                    f"did not answer within {timeout:g}s")
        fut.result()
    except BaseException:
        if not fut.done():
            busy.add(path)

        def release() -> None:
            sock.close()
            busy.discard(path)

        offload.abandon(fut, "plan9-mount", _undo(path, created), release)
        raise


def _undo(path: str, created: list[str]):
    async def undo(_: object) -> None:
        await offload.call(mounts.unmount, path)
        mounts.remove_dirs(created)
        log.info("unmounted a Plan 9 share whose mount finished after its request failed", path=path)
    return undo


async def unmount(path: str, sock: socket.socket | None, timeout: float) -> None:
    """Unmount path; past timeout, hang up the connection so the clunks fail and it returns."""
    fut = aio.run_in_thread(mounts.unmount, path)
    if not await offload.settled(fut, timeout) and sock is not None:
        log.warning("Plan 9 unmount got no answer: hanging up", path=path, timeout_s=timeout)
        hang_up(sock)
        if not await offload.settled(fut, ABORT_GRACE):
            raise hr.GcsError(hr.VMCOMPUTE_TIMEOUT, f"unmount of the Plan 9 share at {path} did not complete")
    elif not fut.done():
        await fut  # no connection of ours to hang up (an older mount): wait for it
    fut.result()
