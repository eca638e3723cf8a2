"""The netlink calls networking makes, over pyroute2's IPRoute (the only importer of pyroute2).

pyroute2 0.7.2 both in the UVM (Debian bookworm's) and in the host's venv (requirements.txt):
only its sync IPRoute, over a socket we open ourselves (`fileno=`, so no helper process is
forked to reach another namespace), with attributes read through get_attr()."""
from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import types

from gcs import linux
from gcs.network.netns import entered


def _import_iproute_alone():
    """IPRoute without what pyroute2 loads around it. Its package __init__ loads every entry
    point of its distribution through importlib.metadata (NDB, IPDB, the CLI: sqlite3 and
    more), and pyroute2.lab, a hook for mocking in pyroute2's own tests that every IPRoute
    class inherits, imports unittest.mock and with it asyncio. IPRoute needs neither: the
    package becomes a bare namespace for its submodules, and lab a no-op (what it is anyway
    while its use_mock is False, the default). Measured here: ~10 MB and ~60-110 ms less
    (~35 MB and ~0.25 s for the plain import)."""
    import importlib.util
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None:
            raise ImportError("No module named 'pyroute2'", name="pyroute2")
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)  # its __init__ not run
    if "pyroute2.lab" not in sys.modules:
        lab = types.ModuleType("pyroute2.lab", "pyroute2's mocking hook, left out (use_mock is False)")
        lab.LAB_API = type("LAB_API", (), {})
        lab.registry, lab.use_mock = [], False
        sys.modules["pyroute2.lab"] = lab
    from pyroute2.iproute import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    return IPRoute, NetlinkError


IPRoute, NetlinkError = _import_iproute_alone()

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

NETLINK_ROUTE = 0
IFF_UP = 1
__all__ = ["Netlink", "NetlinkError", "Link"]


class Link:
    """What is needed of one link: its index, name, MAC, MTU, flags and counters."""

    __slots__ = ("index", "name", "mac", "mtu", "up", "kind", "stats")

    def __init__(self, msg) -> None:
        self.index: int = msg["index"]
        self.name: str = msg.get_attr("IFLA_IFNAME") or ""
        self.mac: str = (msg.get_attr("IFLA_ADDRESS") or "").lower()
        self.mtu: int = msg.get_attr("IFLA_MTU") or 0
        self.up: bool = bool(msg["flags"] & IFF_UP)
        info = msg.get_attr("IFLA_LINKINFO")
        self.kind: str = (info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""
        self.stats = msg.get_attr("IFLA_STATS64")

    @classmethod
    def found(cls, index: int, name: str, mac: str, kind: str) -> "Link":
        """A link known from ioctls: index, name, MAC and kind only."""
        link = cls.__new__(cls)
        link.index, link.name, link.mac, link.kind = index, name, mac, kind
        link.mtu, link.up, link.stats = 0, False, None
        return link


def _socket_in(netns_fd: Optional[int]) -> int:
    """A NETLINK_ROUTE socket of the given namespace (None: ours): made while this thread is
    in that namespace, it stays bound to it."""
    if netns_fd is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE).detach()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(netns_fd, linux.CLONE_NEWNET)
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                 NETLINK_ROUTE).detach()
        finally:
            linux.setns(own, linux.CLONE_NEWNET)
    finally:
        os.close(own)


SIOCGIFMTU, SIOCGIFHWADDR, SIOCETHTOOL, ETHTOOL_GDRVINFO = 0x8921, 0x8927, 0x8946, 3
# Drivers (ethtool's names) of the devices stacked on a NIC, with their netlink kinds.
STACKED_DRIVERS = {"802.1Q VLAN Support": "vlan", "macvlan": "macvlan", "ipvlan": "ipvlan", "bridge": "bridge",
                   "bonding": "bond"}


def _ioctl_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)


def _names_and_macs(sock: socket.socket) -> list[tuple[int, str, str]]:
    """(index, name, MAC) of every link of this thread's namespace, through ioctls: a few
    microseconds a link, where a netlink dump costs pyroute2 ~0.25 ms a link to parse."""
    found = []
    for index, name in socket.if_nameindex():
        try:
            raw = fcntl.ioctl(sock, SIOCGIFHWADDR, struct.pack("16s16x", name.encode()))
        except OSError:
            continue  # gone meanwhile
        found.append((index, name, ":".join(f"{b:02x}" for b in raw[18:24])))
    return found


def _driver(sock: socket.socket, name: str) -> str:
    """The link's driver as ethtool names it ("" if it has none to tell)."""
    info = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GDRVINFO), 196)  # struct ethtool_drvinfo
    try:
        fcntl.ioctl(sock, SIOCETHTOOL, struct.pack("16sP16x", name.encode(), ctypes.addressof(info)))
    except OSError:
        return ""
    return info.raw[4:36].split(b"\0", 1)[0].decode(errors="replace")


class Netlink:
    """RTNETLINK in one network namespace (when `netns_fd` is None: the calling thread's, which
    then must stay in it, as lookups by MAC go through ioctls of that thread)."""

    def __init__(self, netns_fd: Optional[int] = None) -> None:
        self.netns_fd = netns_fd
        fd = _socket_in(netns_fd)
        try:
            self.ipr = IPRoute(fileno=fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- links ---------------------------------------------------------------------------
    def links(self) -> list[Link]:
        return [Link(m) for m in self.ipr.get_links()]

    def link(self, index: int) -> Link:
        return Link(list(self.ipr.get_links(index))[0])

    def index_of(self, name: str) -> int:
        """The index of link `name` here, 0 if there is none: one ioctl (made from inside the
        namespace for another one), not a netlink message for pyroute2 to parse."""
        try:
            if self.netns_fd is None:
                return socket.if_nametoindex(name)
            with entered(self.netns_fd):
                return socket.if_nametoindex(name)
        except OSError:
            return 0

    def by_name(self, name: str) -> Optional[Link]:
        index = self.index_of(name)
        try:
            return self.link(index) if index else None
        except (NetlinkError, IndexError):
            return None  # gone meanwhile

    def by_mac(self, mac: str) -> list[Link]:
        """The links with this MAC; in our own namespace found by ioctls alone, their kind a
        stacked device's (vlan, bridge...) from the driver ethtool names, else the driver's."""
        if self.netns_fd is not None:
            return [link for link in self.links() if link.mac == mac]
        sock = _ioctl_socket()
        try:
            found = []
            for index, name, link_mac in _names_and_macs(sock):
                if link_mac == mac:
                    driver = _driver(sock, name)
                    found.append(Link.found(index, name, mac, STACKED_DRIVERS.get(driver, driver)))
            return found
        finally:
            sock.close()

    def mtu_of(self, name: str) -> int:
        """A link's MTU in our own namespace, by one ioctl."""
        sock = _ioctl_socket()
        try:
            return struct.unpack_from("i", fcntl.ioctl(sock, SIOCGIFMTU, struct.pack("16s16x", name.encode())), 16)[0]
        finally:
            sock.close()

    def set_down(self, index: int) -> None:
        self.ipr.link("set", index=index, state="down")

    def set_up(self, index: int) -> None:
        self.ipr.link("set", index=index, state="up")

    def set_mtu(self, index: int, mtu: int) -> None:
        self.ipr.link("set", index=index, mtu=mtu)

    def move(self, index: int, netns_fd: int, name: str = "", mtu: int = 0, up: bool = False) -> None:
        """Into another namespace (the kernel takes the link down for it), there renamed when
        `name` is given (a name taken there), its MTU set, and up: one message, the kernel
        applies it in that order."""
        extra: dict = {"ifname": name} if name else {}
        if mtu:
            extra["mtu"] = mtu
        if up:
            extra["state"] = "up"
        self.ipr.link("set", index=index, net_ns_fd=netns_fd, **extra)

    # --- addresses, routes, rules ---------------------------------------------------------
    def add_address(self, index: int, address: str, prefix: int, family: int) -> None:
        self.ipr.addr("add", index=index, address=address, prefixlen=prefix, family=family)

    def addresses(self, index: int) -> list[tuple[str, int]]:
        return [(m.get_attr("IFA_ADDRESS"), m["prefixlen"]) for m in self.ipr.get_addr(index=index)]

    def flush_addresses(self, index: int) -> None:
        for m in list(self.ipr.get_addr(index=index)):
            try:
                self.ipr.addr("del", index=index, address=m.get_attr("IFA_ADDRESS"), prefixlen=m["prefixlen"],
                              family=m["family"])
            except NetlinkError:
                pass  # an IPv6 link-local one may go with its link

    def add_route(self, index: int, family: int, dst: str, gateway: str, metric: int, table: int) -> None:
        route = {"family": family, "oif": index, "priority": metric, "scope": 0}
        if dst:
            route["dst"] = dst
        if gateway:
            route["gateway"] = gateway
        if table:
            route["table"] = table
        self.ipr.route("add", **route)

    def add_rule(self, family: int, src: str, src_len: int, table: int, priority: int) -> None:
        self.ipr.rule("add", family=family, src=src, src_len=src_len, table=table, priority=priority)

    def del_rules_from(self, family: int, src: str) -> None:
        for m in list(self.ipr.get_rules(family=family)):
            if m.get_attr("FRA_SRC") == src:
                try:
                    self.ipr.rule("del", family=family, src=src, src_len=m["src_len"], table=m.get_attr("FRA_TABLE"),
                                  priority=m.get_attr("FRA_PRIORITY"))
                except NetlinkError:
                    pass
