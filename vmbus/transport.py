"""What the agent needs from a transport: dial the host's port P, or listen on port P."""
from __future__ import annotations

# `socket` only for annotations: the module costs ~0.28 s of start-up under TCG (its enums).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


class Transport:
    """Base of the transports (an interface; not typing.Protocol, to keep start-up lean)."""

    name = "?"

    async def dial(self, port: int) -> socket.socket:
        """Connect to the host's port; returns a non-blocking, close-on-exec socket."""
        raise NotImplementedError

    def listen(self, port: int) -> socket.socket:
        """A listening socket for connections the host makes to our `port`."""
        raise NotImplementedError

    async def accept(self, listener: socket.socket) -> socket.socket:
        """The next connection on a listener made by `listen`."""
        raise NotImplementedError


def parse_transport(spec: str) -> Transport:
    """`vsock`, `vsock:CID` or `hybrid:PATH`."""
    kind, _, arg = spec.partition(":")
    if kind == "vsock":
        from .af_vsock import VsockTransport
        return VsockTransport(int(arg) if arg else 2)
    if kind == "hybrid":
        if not arg:
            raise ValueError("hybrid transport needs a path: hybrid:PATH")
        from .hybrid import HybridTransport
        return HybridTransport(arg)
    raise ValueError(f"unknown transport {spec!r} (expected vsock or hybrid:PATH)")
