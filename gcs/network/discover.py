"""Finding the link a NIC Add names (protocol.md 3.10.6 step 3): by its VMBus instance id
through sysfs where that exists (Hyper-V), else by MAC address (QEMU's virtio-net, a test's
veth), waiting a bounded time for a NIC that is still being hot-added."""
from __future__ import annotations

import os
import time

from gcs import aio
from gcs.protocol import hresult as hr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

    from gcs.network.netlink import Link, Netlink
    from gcs.protocol.messages import NetworkAdapter

POLL = 0.02  # seconds between looks while waiting


def normal_mac(mac: str) -> str:
    """"00-15-5D-AB-CD-EF" (the host's way) -> "00:15:5d:ab:cd:ef"; "" if not a MAC."""
    parts = mac.replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(ch in "0123456789abcdef" for ch in p) for p in parts):
        return ""
    return ":".join(parts)


def vmbus_ifname(sys_root: str, instance_id: str, vpci: bool) -> str:
    """The interface name sysfs gives the VMBus device, "" while there is none."""
    base = os.path.join(sys_root, "sys/bus/vmbus/devices", instance_id.lower())
    try:
        if not vpci:
            names = os.listdir(os.path.join(base, "net"))
            return names[0] if len(names) == 1 else ""
        for pci in (e for e in os.listdir(base) if e.startswith("pci")):
            for bus in os.listdir(os.path.join(base, pci)):
                net = os.path.join(base, pci, bus, "net")
                if os.path.isdir(net):
                    names = os.listdir(net)
                    if len(names) == 1:
                        return names[0]
    except OSError:
        pass
    return ""


def pick(nl: Netlink, adapter: NetworkAdapter, sys_root: str, taken: set[int]) -> Optional[Link]:
    """The adapter's link among those of `nl`'s namespace, if it is there yet."""
    name = vmbus_ifname(sys_root, adapter.id, adapter.vpci_assigned) if adapter.id else ""
    if name:  # sysfs shows the namespace it was mounted in: the name must be one of ours too
        link = nl.by_name(name)
        if link is not None and link.index not in taken:
            return link
    mac = normal_mac(adapter.mac_address)
    if mac:
        # Stacked devices (VLANs, bridges, bonds) share their lower link's MAC: take the NIC itself.
        found = [link for link in nl.by_mac(mac) if link.index not in taken
                 and link.kind not in ("vlan", "macvlan", "ipvlan", "bridge", "bond")]
        if found:
            return found[0]
    return None


async def find(nl: Netlink, adapter: NetworkAdapter, sys_root: str, taken: Callable[[], set[int]],
               timeout: float) -> Link:
    deadline = time.monotonic() + timeout
    while True:
        link = pick(nl, adapter, sys_root, taken())
        if link is not None:
            return link
        if time.monotonic() >= deadline:
            raise hr.GcsError(hr.E_FAIL, f"Network adapter {adapter.id!r} (MAC {adapter.mac_address or 'none'}) "
                              f"not found within {timeout:g} s")
        await aio.sleep(POLL)
