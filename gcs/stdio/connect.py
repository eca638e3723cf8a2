"""Dialling the host's stdio ports for a process (protocol.md 5.1)."""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Optional

from gcs.protocol.hresult import E_FAIL, E_INVALIDARG, GcsError
from gcs.protocol.messages import ProcessParameters, StdioPorts


class StdioConnections:
    """The connections for stdin, stdout and stderr; None for a stream not requested."""

    def __init__(self, socks: list[Optional[socket.socket]]) -> None:
        self.stdin, self.stdout, self.stderr = socks

    def all(self) -> list[socket.socket]:
        return [s for s in (self.stdin, self.stdout, self.stderr) if s is not None]

    def close(self) -> None:
        for sock in self.all():
            sock.close()


async def dial_stdio(transport, params: ProcessParameters, ports: StdioPorts) -> StdioConnections:
    """Dial the requested streams in the order stdin, stdout, stderr."""
    wanted = ((params.create_stdin, ports.stdin, "stdin"),
              (params.create_stdout, ports.stdout, "stdout"),
              (params.create_stderr, ports.stderr, "stderr"))
    socks: list[Optional[socket.socket]] = []
    try:
        for requested, port, name in wanted:
            if not requested:
                socks.append(None)
                continue
            if port == 0:
                raise GcsError(E_INVALIDARG, f"{name} pipe requested without a port in VsockStdioRelaySettings")
            try:
                socks.append(await transport.dial(port))
            except OSError as err:
                raise GcsError(E_FAIL, f"failed to connect {name} to port {port}: {err.strerror or err}") from None
    except BaseException:
        for sock in socks:
            if sock is not None:
                sock.close()
        raise
    return StdioConnections(socks)
