"""Relay between a process's stdio pipes and the host's connections (protocol.md 5.2).

stdin: connection -> pipe; when the host half-closes, the pipe's write end is closed so the
process reads EOF. stdout/stderr: pipe -> connection; at pipe EOF the connection is
half-closed (SHUT_WR), then one read waits for the host's close, then it is closed. The
exit code is released only when all of this is done, so no output is ever lost.
"""
from __future__ import annotations

import os

import _socket  # not `socket`: its enums cost start-up time under TCG

from gcs import aio
from gcs.log import log
from gcs.stdio.connect import StdioConnections

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

CHUNK = 1 << 17


class PipeRelay:
    def __init__(self, stdin_w: int | None, stdout_r: int | None, stderr_r: int | None,
                 conns: StdioConnections) -> None:
        self.conns = conns
        self._fds = [fd for fd in (stdin_w, stdout_r, stderr_r) if fd is not None]
        for fd in self._fds:
            os.set_blocking(fd, False)
        self._stdin_w = stdin_w
        self._in = aio.spawn(self._copy_in(stdin_w, conns.stdin), "stdin") if stdin_w is not None else None
        self._outs = [aio.spawn(self._copy_out(fd, sock), name)
                      for fd, sock, name in ((stdout_r, conns.stdout, "stdout"), (stderr_r, conns.stderr, "stderr"))
                      if fd is not None]
        self.closed = False

    async def _copy_in(self, fd: int, sock: socket.socket | None) -> None:
        try:
            if sock is not None:
                while True:
                    data = await aio.sock_recv(sock, CHUNK)
                    if not data:
                        break
                    await aio.fd_write_all(fd, data)
        except OSError:
            pass
        finally:
            self._close_fd(fd)

    async def _copy_out(self, fd: int, sock: socket.socket | None) -> None:
        try:
            while True:
                data = await aio.fd_read(fd, CHUNK)
                if not data:
                    break
                if sock is not None:
                    try:
                        await aio.sock_sendall(sock, data)
                    except OSError:
                        sock = None  # the host is gone: keep draining so the process never blocks
        finally:
            self._close_fd(fd)
        if sock is not None:
            try:
                sock.shutdown(_socket.SHUT_WR)
                extra = await aio.wait_for(aio.sock_recv(sock, 1), 5.0)
                if extra:
                    log.warning("unexpected data in socket after output")
            except (OSError, aio.TimeoutError_):
                pass

    def _close_fd(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            aio.get_loop().forget_fd(fd)
            os.close(fd)

    async def finish(self) -> None:
        """After the process exited: stop stdin, drain the outputs, close everything."""
        if self._in is not None:
            self._in.cancel()
            if self._stdin_w is not None:
                self._close_fd(self._stdin_w)
        for task in self._outs:
            await task
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in [self._in, *self._outs]:
            if task is not None:
                task.cancel()
        for fd in list(self._fds):
            self._close_fd(fd)
        loop = aio.get_loop()
        for sock in self.conns.all():
            loop.forget_fd(sock.fileno())
            sock.close()
