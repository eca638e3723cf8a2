"""AF_VSOCK transport, for the agent inside a VM (never on a machine whose own
hypervisor owns CID 2)."""
from __future__ import annotations

import errno

import _socket  # not `socket`: its enums cost ~0.28 s of start-up under TCG

from gcs import aio
from vmbus.transport import Transport

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

VMADDR_CID_ANY = 0xFFFFFFFF
VMADDR_CID_HOST = 2
# hcsshim's guest retries a connect that timed out 10 times, 100 ms apart.
CONNECT_RETRIES = 10
RETRY_DELAY = 0.1


class VsockTransport(Transport):
    name = "vsock"

    def __init__(self, cid: int = VMADDR_CID_HOST) -> None:
        self.cid = cid

    def _socket(self) -> socket.socket:
        return _socket.socket(_socket.AF_VSOCK, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK)

    async def dial(self, port: int) -> socket.socket:
        for attempt in range(CONNECT_RETRIES + 1):
            sock = self._socket()
            try:
                await aio.sock_connect(sock, (self.cid, port))
                return sock
            except OSError as err:
                sock.close()
                if err.errno != errno.ETIMEDOUT or attempt == CONNECT_RETRIES:
                    raise
            await aio.sleep(RETRY_DELAY)
        raise AssertionError("unreachable")

    def listen(self, port: int) -> socket.socket:
        sock = self._socket()
        try:
            sock.bind((VMADDR_CID_ANY, port))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        return sock

    async def accept(self, listener: socket.socket) -> socket.socket:
        import socket  # listening for the host is rare (--bridge-listen): pay for the wrapper then

        while True:
            try:
                fd, _ = listener._accept()
                break
            except (BlockingIOError, InterruptedError):
                await aio.wait_readable(listener.fileno())
        conn = socket.socket(fileno=fd)
        conn.setblocking(False)
        return conn
