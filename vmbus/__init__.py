"""Transports between the host and the agent: AF_VSOCK in a VM, hybrid (Unix socket) vsock
elsewhere, plus the hvsock service-GUID helpers the Windows host side uses."""
