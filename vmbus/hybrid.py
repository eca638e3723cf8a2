"""Hybrid vsock: vsock ports carried over Unix sockets (Firecracker / Cloud Hypervisor style).

* Guest -> host: connecting to the host's port P opens the Unix socket `PATH_P`.
* Host -> guest: the host connects to `PATH` and writes `CONNECT P\\n`; the side that owns
  `PATH` (a VMM's vsock device, or the agent itself in local mode) answers `OK P\\n` and the
  stream then belongs to the guest listener on port P.

The agent keeps an O_PATH handle on PATH's directory and names sockets through
/proc/self/fd, so the paths stay reachable after local mode mounts a private /run.
"""
from __future__ import annotations

import errno
import os
import time

import _socket  # not `socket`: its enums cost start-up (~6 ms here, ~10x under TCG)

from gcs import aio
from vmbus.transport import Transport

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

HANDSHAKE_TIMEOUT = 5.0
MAX_HANDSHAKE_LINE = 64


def port_path(path: str, port: int) -> str:
    return f"{path}_{port}"


def _unix_socket() -> socket.socket:
    return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK)


class HybridTransport(Transport):
    name = "hybrid"

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        directory, self.base = os.path.split(self.path)
        self._dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._ports: set[int] = set()

    def _name(self, leaf: str) -> str:
        return f"/proc/self/fd/{self._dirfd}/{leaf}"

    async def dial(self, port: int) -> socket.socket:
        sock = _unix_socket()
        try:
            await aio.sock_connect(sock, self._name(f"{self.base}_{port}"))
        except OSError:
            sock.close()
            raise
        return sock

    def listen(self, port: int) -> socket.socket:
        """Own PATH and accept `CONNECT port` handshakes for `port` on it."""
        sock = _unix_socket()
        name = self._name(self.base)
        try:
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
            sock.bind(name)
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._ports.add(port)
        return sock

    async def accept(self, listener: socket.socket) -> socket.socket:
        import socket  # listening for the host is rare (--bridge-listen): pay for the wrapper then

        while True:
            try:
                fd, _ = listener._accept()
            except (BlockingIOError, InterruptedError):
                await aio.wait_readable(listener.fileno())
                continue
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            try:
                port = await aio.wait_for(_read_connect(conn), HANDSHAKE_TIMEOUT)
                if port in self._ports:
                    await aio.sock_sendall(conn, f"OK {port}\n".encode())
                    return conn
            except (OSError, ValueError, aio.TimeoutError_):
                pass
            conn.close()


async def _read_connect(conn: socket.socket) -> int:
    line = b""
    while not line.endswith(b"\n"):
        chunk = await aio.sock_recv(conn, 1)  # byte by byte: nothing past the line is ours
        if not chunk or len(line) > MAX_HANDSHAKE_LINE:
            raise ValueError("bad CONNECT handshake")
        line += chunk
    verb, _, port = line.decode("ascii", "replace").strip().partition(" ")
    if verb != "CONNECT" or not port.isdigit():
        raise ValueError(f"bad CONNECT handshake {line!r}")
    return int(port)


# --- host side (blocking helpers for host tooling and tests) -------------------------------
def host_listen(path: str, port: int, backlog: int = 4) -> socket.socket:
    """Listen where a guest's connect to host port `port` arrives."""
    import socket
    name = port_path(path, port)
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(name)
    sock.listen(backlog)
    return sock


def host_connect(path: str, port: int, timeout: float = 5.0) -> socket.socket:
    """Connect to the guest's listener on `port` through PATH with the CONNECT handshake."""
    import socket
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            sock.connect(path)
            sock.sendall(f"CONNECT {port}\n".encode())
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(1)
                if not chunk:
                    raise ConnectionResetError(errno.ECONNRESET, "guest refused the connection")
                reply += chunk
            if not reply.startswith(b"OK "):
                raise ConnectionRefusedError(errno.ECONNREFUSED, f"handshake answered {reply!r}")
            sock.settimeout(None)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
        except BaseException:
            sock.close()
            raise
