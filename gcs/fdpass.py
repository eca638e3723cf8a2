"""Passing file descriptors over a Unix socket (received close-on-exec), on `_socket`.

`socket.recv_fds` ignores its flags argument (CPython 3.11), so the descriptors it returns
are inheritable: a pty master or a pipe end would leak into every process started later.
"""
from __future__ import annotations

import struct

import _socket  # not `socket`: its enums cost start-up time under TCG

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


_INT = struct.Struct("i")


def send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> int:
    """socket.send_fds without the `socket` module (what the agent and the spawner share)."""
    payload = b"".join(_INT.pack(fd) for fd in fds)
    return sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, payload)] if fds else [])


def recv_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    fds: list[int] = []
    data, ancdata, _flags, _addr = sock.recvmsg(bufsize, _socket.CMSG_SPACE(maxfds * _INT.size),
                                                _socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            # C ints; not `array`, which drags collections.abc into the agent's start-up
            fds += (value for (value,) in _INT.iter_unpack(payload[:len(payload) - len(payload) % _INT.size]))
    return data, fds
