"""Relay between a pty master and the host's stdio connections (protocol.md 5.3).

stdin-connection -> master and master -> stdout-connection. Stderr is unused with a tty;
its connection stays open and idle until the end. When the process exits, the stdin copy
is stopped, the output copy runs until the master reports EIO (every slave fd closed, all
output read), and only then are the connections closed and the exit code released.
"""
from __future__ import annotations

import os

import _socket  # not `socket`: its enums cost start-up time under TCG

from gcs import aio
from gcs.stdio.connect import StdioConnections

CHUNK = 65536


class TtyRelay:
    def __init__(self, master: int, conns: StdioConnections) -> None:
        self.master = master
        self.conns = conns
        self.closed = False
        self._in = aio.spawn(self._copy_in(), "tty-stdin") if conns.stdin is not None else None
        self._out = aio.spawn(self._copy_out(), "tty-stdout")

    async def _copy_in(self) -> None:
        sock = self.conns.stdin
        assert sock is not None
        try:
            while True:
                data = await aio.sock_recv(sock, CHUNK)
                if not data:
                    return  # host half-closed stdin
                await aio.fd_write_all(self.master, data)
        except OSError:
            return

    async def _copy_out(self) -> None:
        sock = self.conns.stdout
        while True:
            try:
                data = await aio.fd_read(self.master, CHUNK)
            except OSError:
                return
            if not data:
                return
            if sock is not None:
                try:
                    await aio.sock_sendall(sock, data)
                except OSError:
                    sock = None  # host went away: keep draining so the process never blocks

    async def finish(self) -> None:
        """Called once the process has exited: drain, then close everything."""
        if self._in is not None:
            self._in.cancel()
        await self._out
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._in, self._out):
            if task is not None:
                task.cancel()
        loop = aio.get_loop()
        loop.forget_fd(self.master)
        os.close(self.master)
        for sock in self.conns.all():
            loop.forget_fd(sock.fileno())
            try:
                sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
