"""The netlink calls networking makes, over pyroute2's IPRoute (the only importer of pyroute2).

Written for both pyroute2 0.7 (Debian bookworm's, in the UVM) and 0.9 (the host's): only the
sync IPRoute calls the two share, a socket we open ourselves (`fileno=`, so no helper process
is forked to reach another namespace), and attributes read with get_attr()."""
from __future__ import annotations

import os
import socket

# From its submodule, not the package: in the UVM image pyroute2 0.7 ships without its
# dist-info, so `import pyroute2` loads none of its entry points (NDB, IPDB, the CLI: sqlite3,
# asyncio, ...) and the package namespace has no IPRoute (0.9 exports it either way).
from pyroute2.iproute import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from gcs import linux

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


class Netlink:
    """RTNETLINK in one network namespace (the agent's own when `netns_fd` is None)."""

    def __init__(self, netns_fd: Optional[int] = None) -> None:
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

    def by_name(self, name: str, index: int = 0) -> Optional[Link]:
        """`index`: where it probably is (a moved link keeps its index when it is free there),
        asked for alone before the whole table is dumped and parsed."""
        if index:
            try:
                link = self.link(index)
                if link.name == name:
                    return link
            except (NetlinkError, IndexError):
                pass
        return next((link for link in self.links() if link.name == name), None)

    def by_mac(self, mac: str) -> list[Link]:
        return [link for link in self.links() if link.mac == mac]

    def set_down(self, index: int) -> None:
        self.ipr.link("set", index=index, state="down")

    def set_up(self, index: int) -> None:
        self.ipr.link("set", index=index, state="up")

    def set_mtu(self, index: int, mtu: int) -> None:
        self.ipr.link("set", index=index, mtu=mtu)

    def move(self, index: int, netns_fd: int, name: str = "") -> None:
        """Into another namespace, renamed as well when `name` is given (a name taken there)."""
        if name:
            self.ipr.link("set", index=index, net_ns_fd=netns_fd, ifname=name)
        else:
            self.ipr.link("set", index=index, net_ns_fd=netns_fd)

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
