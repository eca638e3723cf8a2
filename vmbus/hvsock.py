"""hvsock service GUIDs <-> vsock ports.

On Windows a Linux guest's vsock port P is reached through the Hyper-V socket service id
`<P as 8 hex digits>-facb-11e6-bd58-64006a7986d3` (hcsshim `VsockServiceID`).
"""
from __future__ import annotations

import re

VSOCK_TEMPLATE_SUFFIX = "-facb-11e6-bd58-64006a7986d3"
_SERVICE = re.compile(r"^\{?([0-9a-fA-F]{8})" + re.escape(VSOCK_TEMPLATE_SUFFIX) + r"\}?$", re.I)


def service_id(port: int) -> str:
    if not 0 <= port <= 0xFFFFFFFF:
        raise ValueError(f"vsock port {port} out of range")
    return f"{port:08x}{VSOCK_TEMPLATE_SUFFIX}"


def port_of(service: str) -> int:
    match = _SERVICE.match(service.strip())
    if not match:
        raise ValueError(f"{service!r} is not a vsock service id")
    return int(match.group(1), 16)
