"""The native runtime, agent side: forks the container processes and talks to them over
three pipes (pid report, ready/error report, start signal).

The agent is single-threaded, so forking it is safe; the child runs `child.py` and
execs. Everything the child needs is imported before the fork.
"""
from __future__ import annotations

import json
import os

from gcs import aio, linux
from gcs.containers.native import child
from gcs.protocol import hresult as hr
from gcs.runtime.reaper import Reaper, exit_code


CLONE_NEWPID = 0x20000000


class InitHandle:
    def __init__(self, pid: int, start_w: int, err_r: int, status: aio.Future) -> None:
        self.pid = pid
        self.status = status  # the reaper's future for this pid: keep it, it resolves only once
        self.start_w = start_w
        self.err_r = err_r

    def close(self) -> None:
        for fd in (self.start_w, self.err_r):
            if fd >= 0:
                aio.get_loop().forget_fd(fd)
                os.close(fd)
        self.start_w = self.err_r = -1


async def _read_all(fd: int, stop_at: bytes | None = None) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while True:
        chunk = await aio.fd_read(fd, 4096)
        if not chunk:
            return data
        data += chunk
        if stop_at is not None and data.startswith(stop_at):
            return data


def _error_text(data: bytes) -> str:
    for line in data.splitlines():
        try:
            return json.loads(line)["error"]
        except (ValueError, KeyError, TypeError):
            continue
    return data.decode("utf-8", "replace").strip() or "the container process exited during setup"


class NativeRuntime:
    name = "native"

    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper

    async def _fork(self, target, plan: dict, keep: list[int], *pipes: int) -> tuple[int, int]:
        """Fork the intermediate process; returns (container process pid, error pipe)."""
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            middle = os.fork()
        except OSError:
            for fd in (pid_r, pid_w, err_r, err_w):
                os.close(fd)
            raise
        if middle == 0:  # the child: never returns
            try:
                os.close(pid_r)
                os.close(err_r)
                target(plan, pid_w, err_w, *pipes)
            finally:
                os._exit(1)
        self.reaper.watch(middle)  # reaped in the background; its pid report is what counts
        os.close(pid_w)
        os.close(err_w)
        for fd in keep:
            os.close(fd)  # the child's ends of its stdio and start pipe
        try:
            report = await _read_all(pid_r)
        finally:
            aio.get_loop().forget_fd(pid_r)
            os.close(pid_r)
        if not report.strip().isdigit():
            data = await _read_all(err_r)
            aio.get_loop().forget_fd(err_r)
            os.close(err_r)
            raise hr.GcsError(hr.E_FAIL, f"container setup failed: {_error_text(data)}")
        return int(report), err_r

    async def create(self, plan: dict, child_fds: list[int]) -> InitHandle:
        """Fork the init straight into its pid namespace and let it set everything up to
        the point of exec; it then waits for start().

        The agent enters the target pid namespace for its children around the one fork
        (unshare or setns with CLONE_NEWPID changes only where children go) and returns to
        its own right after, so the init costs a single fork of the agent's image.
        """
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid_ns = [path for kind, path in plan["namespaces"] if kind == "pid"]
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                if pid_ns and pid_ns[0]:
                    target = os.open(pid_ns[0], os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        linux.setns(target, CLONE_NEWPID)
                    finally:
                        os.close(target)
                elif pid_ns:
                    linux.unshare(CLONE_NEWPID)
                pid = os.fork()
                if pid == 0:  # the child: never returns
                    try:
                        os.close(err_r)
                        os.close(start_w)
                        child.init_main(plan, err_w, start_r)
                    finally:
                        os._exit(1)
            finally:
                if pid_ns:
                    linux.setns(own, CLONE_NEWPID)
        except OSError as err:
            for fd in (start_r, start_w, err_r, err_w):
                os.close(fd)
            raise hr.GcsError(hr.E_FAIL, f"container setup failed: pid namespace: {err.strerror or err}") from None
        finally:
            os.close(own)
            for fd in child_fds:
                os.close(fd)
        status = self.reaper.watch(pid)
        os.close(err_w)
        os.close(start_r)
        handle = InitHandle(pid, start_w, err_r, status)
        ready = await _read_all(err_r, stop_at=b"R")
        if ready != b"R":
            handle.close()
            if not status.done():
                os.kill(pid, 9)
            await status
            raise hr.GcsError(hr.E_FAIL, f"container setup failed: {_error_text(ready)}")
        return handle

    async def start(self, handle: InitHandle) -> None:
        """Let init exec; raises with the child's message if the exec fails."""
        try:
            os.write(handle.start_w, b"S")
            aio.get_loop().forget_fd(handle.start_w)
            os.close(handle.start_w)
            handle.start_w = -1
            data = await _read_all(handle.err_r)  # EOF without data: exec succeeded (close-on-exec)
        finally:
            handle.close()
        if data:
            raise hr.GcsError(hr.E_FAIL, f"starting the container process failed: {_error_text(data)}")

    async def exec(self, plan: dict, child_fds: list[int]) -> tuple[int, aio.Future]:
        """Start a process in a running container; returns its pid and exit-status future."""
        pid, err_r = await self._fork(child.exec_main, plan, child_fds)
        status = self.reaper.watch(pid)
        try:
            data = await _read_all(err_r)
        finally:
            aio.get_loop().forget_fd(err_r)
            os.close(err_r)
        if data:
            code = exit_code(await status)
            raise hr.GcsError(hr.E_FAIL, f"exec in the container failed (exit {code}): {_error_text(data)}")
        return pid, status
