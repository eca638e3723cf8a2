"""Networking of the UVM's pods (protocol.md 3.10.6, 6.7, 6.8): the namespace records, NICs
found, moved and configured over netlink (pyroute2), and the counters GetProperties reports.

Nothing here imports pyroute2 at module level: it costs ~160 ms and ~25 MB, paid only once a
network request comes (netlink.py is the one module that imports it)."""
from __future__ import annotations

import os
import sys


def pyroute2_present() -> bool:
    """Whether pyroute2 could be imported, without importing it (start-up must not pay)."""
    if "pyroute2" in sys.modules:
        return True
    # __init__.pyc alone in the UVM image (sourceless bytecode)
    return any(os.path.isfile(os.path.join(p or ".", "pyroute2", init)) for p in sys.path
               for init in ("__init__.py", "__init__.pyc"))


def in_initial_netns() -> bool:
    """True in the machine's (or UVM's) initial network namespace. Global net.core sysctls exist
    there only, and /proc/sys/net shows the reader's own namespace."""
    return os.path.exists("/proc/sys/net/core/netdev_max_backlog")
