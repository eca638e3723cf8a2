"""Moving one adapter into a namespace and configuring it there, upstream's order
(protocol.md 6.8): down, move, MTU - EncapOverhead, up, addresses (+ the policy rule),
routes with the on-link gateway fallback. Runs in a worker thread: it only makes netlink
calls, and the move alone takes the kernel ~15-20 ms here (RCU grace periods)."""
from __future__ import annotations

import errno

from gcs.log import log
from gcs.network import addressing
from gcs.network.netlink import Netlink, NetlinkError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from gcs.protocol.messages import NetworkAdapter


class ConfigureError(Exception):
    """A netlink step failed: what was being done, and the kernel's errno."""

    def __init__(self, step: str, err: BaseException) -> None:
        code = getattr(err, "code", None) or getattr(err, "errno", None)
        reason = errno.errorcode.get(code, "") if isinstance(code, int) else ""
        super().__init__(f"{step}: {err}" + (f" ({reason})" if reason and reason not in str(err) else ""))


def _step(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except (NetlinkError, OSError) as err:
        raise ConfigureError(what, err) from None


def move_and_configure(uvm_fd: int, uvm: Netlink, target: Optional[Netlink], index: int, name: str,
                       adapter: NetworkAdapter, plan: addressing.Plan, low_metric: bool) -> int:
    """The link's index in the target namespace (`target` None: configured in place, in the
    UVM's). Both Netlinks are the caller's, kept across adapters; `uvm` is of this thread's
    namespace. On failure the link is back in the UVM namespace, down and without addresses."""
    if target is None:
        try:
            _set_mtu_and_up(uvm, index, name, adapter, plan)
            _add_addresses_and_routes(uvm, index, name, plan, low_metric)
            return index
        except BaseException:
            undo(uvm_fd, None, name, plan)
            raise
    mtu = 0
    if adapter.encap_overhead:
        try:
            mtu = uvm.mtu_of(name) - adapter.encap_overhead
        except OSError as err:
            raise ConfigureError(f"read the MTU of {name}", err) from None
    # One message for down, move, MTU and up: the kernel closes the link to move it and
    # applies the rest in the new namespace, in upstream's order, without a round trip each.
    what = f"move {name} into the pod namespace" + (f" with MTU {mtu}" if mtu else "") + \
        (" and up" if plan.addresses else "")
    try:
        _step(what, uvm.move, index, target.netns_fd, "", mtu, bool(plan.addresses))
        index = target.index_of(name)  # the same unless taken there
        if not index:
            raise ConfigureError(f"find {name} after the move", OSError(errno.ENODEV, "no such device"))
        _add_addresses_and_routes(target, index, name, plan, low_metric)
        return index
    except BaseException:
        undo(uvm_fd, target.netns_fd, name, plan)
        raise


def _set_mtu_and_up(ns: Netlink, index: int, name: str, adapter: NetworkAdapter, plan: addressing.Plan) -> None:
    if adapter.encap_overhead:
        try:
            mtu = ns.link(index).mtu - adapter.encap_overhead
        except (NetlinkError, OSError, IndexError) as err:
            raise ConfigureError(f"read the MTU of {name}", err) from None
        _step(f"set the MTU of {name} to {mtu}", ns.set_mtu, index, mtu)
    if plan.addresses:
        _step(f"set {name} up", ns.set_up, index)


def _add_addresses_and_routes(ns: Netlink, index: int, name: str, plan: addressing.Plan, low_metric: bool) -> None:
    table = 0
    for a in plan.addresses:
        _step(f"add {a.address}/{a.prefix} to {name}", ns.add_address, index, a.address, a.prefix, a.family)
        if low_metric:  # packets from this address leave through this adapter
            _step(f"add the rule from {a.address} lookup {addressing.POLICY_TABLE}", ns.add_rule, a.family,
                  a.address, addressing.host_prefix(a.family), addressing.POLICY_TABLE, addressing.POLICY_PRIORITY)
            table = addressing.POLICY_TABLE
    for r in plan.routes:
        metric = addressing.LOW_METRIC if low_metric and r.metric == 0 else r.metric
        what = f"add the route {r.dst or 'default'} via {r.gateway or 'link'} dev {name} metric {metric}"
        try:
            ns.add_route(index, r.family, r.dst, r.gateway, metric, table)
        except NetlinkError as err:
            if err.code != errno.ENETUNREACH or not r.gateway:
                raise ConfigureError(what, err) from None
            # A gateway outside the adapter's subnets: make it on-link, then again (upstream).
            log.info("gateway outside the adapter's subnets: adding it on-link", ifname=name, gateway=r.gateway)
            _step(f"add {r.gateway} to {name}", ns.add_address, index, r.gateway,
                  addressing.host_prefix(r.family), r.family)
            _step(what, ns.add_route, index, r.family, r.dst, r.gateway, metric, table)


def undo(uvm_fd: int, target_fd: Optional[int], name: str, plan: addressing.Plan) -> None:
    """Best effort, for a failed or ended assignment: the link down, its addresses and rules
    gone, and back in the UVM namespace."""
    try:
        with Netlink(target_fd) as ns:
            index = ns.index_of(name)
            if not index:
                return
            ns.set_down(index)
            ns.flush_addresses(index)
            for a in plan.addresses:
                ns.del_rules_from(a.family, a.address)
            if target_fd is not None:
                ns.move(index, uvm_fd)
    except (NetlinkError, OSError) as err:
        log.error("could not return an adapter to the UVM namespace", ifname=name, error=str(err))
