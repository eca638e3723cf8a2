"""An adapter's addresses and routes checked and put in netlink terms before anything
changes (protocol.md 6.8): a bad address or prefix is E_INVALIDARG at Add, not a link left
half-configured."""
from __future__ import annotations

import ipaddress
import socket

from gcs.protocol import hresult as hr
from gcs.record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gcs.protocol.messages import NetworkAdapter

POLICY_TABLE = 101       # upstream's table for policy-based routing
POLICY_PRIORITY = 5      # ... and its source rule's priority
LOW_METRIC = 500         # a route's metric on a secondary adapter when it has none
_DEFAULT_PREFIXES = ("0.0.0.0/0", "::/0")
_EMPTY_GATEWAYS = ("0.0.0.0", "::")


@record
class Address:
    family: int
    address: str
    prefix: int


@record
class Route:
    family: int
    dst: str       # "" for a default route
    gateway: str   # "" for an on-link route
    metric: int


@record
class Plan:
    addresses: list
    routes: list


def _family(ip) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def plan(adapter: NetworkAdapter) -> Plan:
    addresses = []
    for c in adapter.ip_configs:
        try:
            ip = ipaddress.ip_address(c.address)
        except ValueError:
            raise hr.GcsError(hr.E_INVALIDARG, f"Network adapter {adapter.id!r}: invalid IP address "
                              f"{c.address[:64]!r}") from None
        if ip.is_unspecified or c.prefix_length > ip.max_prefixlen:
            raise hr.GcsError(hr.E_INVALIDARG, f"Network adapter {adapter.id!r}: invalid address "
                              f"{c.address}/{c.prefix_length}")
        addresses.append(Address(_family(ip), str(ip), c.prefix_length))
    routes = []
    for r in adapter.routes:
        if r.destination_prefix in _DEFAULT_PREFIXES and r.next_hop in _EMPTY_GATEWAYS:
            continue  # upstream: no default gateway for this adapter
        try:
            gateway = ipaddress.ip_address(r.next_hop) if r.next_hop else None
            dst = None
            if r.destination_prefix not in _DEFAULT_PREFIXES:
                dst = ipaddress.ip_network(r.destination_prefix, strict=False)
        except ValueError:
            raise hr.GcsError(hr.E_INVALIDARG, f"Network adapter {adapter.id!r}: invalid route "
                              f"{r.destination_prefix[:64]!r} via {r.next_hop[:64]!r}") from None
        if gateway is None and dst is None:
            raise hr.GcsError(hr.E_INVALIDARG, f"Network adapter {adapter.id!r}: a route needs a destination "
                              "or a next hop")
        versions = {x.version for x in (gateway, dst) if x is not None}
        if r.destination_prefix in _DEFAULT_PREFIXES:
            versions.add(4 if r.destination_prefix == "0.0.0.0/0" else 6)
        if len(versions) != 1:
            raise hr.GcsError(hr.E_INVALIDARG, f"Network adapter {adapter.id!r}: route {r.destination_prefix} "
                              f"via {r.next_hop}: mixed address families")
        family = socket.AF_INET if versions == {4} else socket.AF_INET6
        routes.append(Route(family, str(dst) if dst is not None else "", str(gateway) if gateway else "", r.metric))
    return Plan(addresses, routes)


def host_prefix(family: int) -> int:
    return 32 if family == socket.AF_INET else 128
