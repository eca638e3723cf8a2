"""Receiving file descriptors over a Unix socket, close-on-exec.

`socket.recv_fds` ignores its flags argument (CPython 3.11), so the descriptors it returns
are inheritable: a pty master or a pipe end would leak into every process started later.
"""
from __future__ import annotations

import array
import socket


def recv_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(maxfds * fds.itemsize),
                                                socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)
