"""A byte stream to the host: a socket, or the agent's stdin/stdout (`--bridge-stdio`)."""
from __future__ import annotations

import os

import _socket  # not `socket`: its enums cost start-up time under TCG

from gcs import aio

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


class Conn:
    """Non-blocking read/write ends; `read_fd` and `write_fd` may be the same fd."""

    def __init__(self, read_fd: int, write_fd: int, owner: object = None, label: str = "") -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._owner = owner  # keeps a socket object alive
        self.label = label
        self.closed = False
        os.set_blocking(read_fd, False)
        if write_fd != read_fd:
            os.set_blocking(write_fd, False)

    @classmethod
    def from_socket(cls, sock: socket.socket, label: str) -> "Conn":
        return cls(sock.fileno(), sock.fileno(), sock, label)

    async def read(self, n: int) -> bytes:
        return await aio.fd_read(self.read_fd, n)

    def write_some(self, data: memoryview) -> int:
        """Write without blocking; 0 when the peer is not ready for more."""
        try:
            return os.write(self.write_fd, data)
        except (BlockingIOError, InterruptedError):
            return 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        loop = aio.get_loop()
        for fd in {self.read_fd, self.write_fd}:
            loop.forget_fd(fd)
        if isinstance(self._owner, _socket.socket):
            self._owner.close()
        else:
            # stdio: leave fds 0/1 open (something must occupy them) but signal EOF upstream.
            pass
