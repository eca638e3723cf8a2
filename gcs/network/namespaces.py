"""The UVM's network namespaces as the host knows them (hcsshim's hcsv2/network.go): a record
per NamespaceID (case-insensitive) with its adapters, the pod network namespace the sandbox or
standalone container made or joined, and the moves in and out of it.

Adapters added before the sandbox's Create wait in the record and move in at Create; those
added after move at once. Only adapters not yet moved are moved (upstream re-walks them all).
A failed move leaves nothing half-configured: the link goes back to the UVM namespace."""
from __future__ import annotations

import os

from gcs import aio
from gcs.containers import hostfiles
from gcs.log import log
from gcs.network.netns import Netns, NETNS_DIR
from gcs.protocol import hresult as hr
from gcs.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from gcs.network import addressing
    from gcs.network.netlink import Netlink
    from gcs.protocol.messages import NetworkAdapter
    from gcs.runtime.reaper import Reaper

NIC_WAIT = 5.0  # seconds an Add waits for its NIC to appear (upstream's)
DHCP_TIMEOUT = 30.0  # upstream's bound on udhcpc
# The image's udhcpc event script (upstream's path), else this checkout's (local mode).
DHCP_SCRIPTS = ("/sbin/udhcpc_config.script",
                os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "initrd", "init", "udhcpc_config.script"))

# How a container's spec asks for its network (Networks.attach).
NEW, JOIN, HOST = "new", "join", "host"


@record
class Nic:
    adapter: NetworkAdapter
    plan: addressing.Plan
    name: str            # its interface name (kept across moves)
    index: int           # in the namespace it is in now
    assigned: bool = False
    lease_servers: list = field(default_factory=list)  # DNS of its DHCP lease, if any
    lease_searches: list = field(default_factory=list)


@record
class PodNamespace:
    id: str
    nics: list = field(default_factory=list)
    owner: str = ""                  # the sandbox or standalone container using it
    bundle: str = ""                 # ...whose resolv.conf follows the adapters
    netns: Optional[Netns] = None    # None with the owner attached: the UVM's own (host network)
    attached: bool = False

    def find(self, adapter_id: str) -> Optional[Nic]:
        return next((n for n in self.nics if n.adapter.id.lower() == adapter_id.lower()), None)


def _file_name(nsid: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in nsid)[:100].lstrip(".")
    return safe or "_"


class Networks:
    def __init__(self, reaper: Reaper, sys_root: str = "/", wait: float = NIC_WAIT, refused: str = "",
                 netns_dir: str = NETNS_DIR, uvm_etc: str = "") -> None:
        self.reaper = reaper
        self.uvm_etc = uvm_etc  # in a UVM "/etc": the host configuring its namespace sets its DNS
        self.sys_root, self.wait, self.refused, self.netns_dir = sys_root, wait, refused, netns_dir
        self.namespaces: dict[str, PodNamespace] = {}
        self.lock = aio.Lock()
        self._uvm_fd = -1
        self._uvm_nl: Optional[Netlink] = None
        # Netlinks of the worker threads that move and configure adapters (under self.lock):
        # the UVM's (None) and each pod namespace's, kept (opening one costs ~0.3-0.8 ms).
        self._worker_nl: dict[Optional[str], Netlink] = {}

    # --- helpers ------------------------------------------------------------------------------
    @property
    def uvm_fd(self) -> int:
        if self._uvm_fd < 0:
            self._uvm_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return self._uvm_fd

    @property
    def uvm_netlink(self) -> Netlink:
        """Netlink in the UVM namespace, for the event loop's thread (which never leaves it)."""
        if self._uvm_nl is None:
            from gcs.network.netlink import Netlink  # the first network request pays for pyroute2
            self._uvm_nl = Netlink(None)
        return self._uvm_nl

    @staticmethod
    def _load_pyroute2() -> None:
        """The import alone (~0.15 s natively, ~1.5-2 s under TCG), in a worker thread: the
        event loop goes on serving the other requests meanwhile."""
        import gcs.network.netlink  # noqa: F401

    def _taken(self) -> set[int]:
        """Links of the UVM namespace that an adapter record already claims."""
        return {n.index for ns in self.namespaces.values() for n in ns.nics if not (n.assigned and ns.netns)}

    def _by_owner(self, cid: str) -> Optional[PodNamespace]:
        return next((ns for ns in self.namespaces.values() if ns.owner == cid), None)

    def state(self) -> dict[str, int]:
        return {"network_namespaces": len(self.namespaces),
                "network_adapters": sum(len(ns.nics) for ns in self.namespaces.values())}

    # --- ModifySettings Network ---------------------------------------------------------------
    async def modify(self, request_type: str, adapter: NetworkAdapter) -> None:
        if request_type == "Add":
            await self.add(adapter)
        elif request_type == "Remove":
            self.remove(adapter)
        else:
            raise hr.GcsError(hr.E_FAIL, f"Network: the RequestType {request_type!r} is not supported")

    async def add(self, adapter: NetworkAdapter) -> None:
        if self.refused:
            raise hr.GcsError(hr.E_NOTIMPL, self.refused)
        if not adapter.namespace_id or not adapter.id:
            raise hr.GcsError(hr.E_INVALIDARG, "Network Add: NamespaceID and ID are required")
        from gcs.network import addressing, discover  # ipaddress: only once an adapter comes
        plan = addressing.plan(adapter)  # before anything changes: a bad address is E_INVALIDARG
        if not adapter.ip_configs:
            _dhcp_command("")  # no DHCP client here: E_NOTIMPL before anything changes
        key = adapter.namespace_id.lower()
        ns = self.namespaces.get(key) or PodNamespace(key)
        self._check_new(ns, adapter)
        self.namespaces[key] = ns
        try:
            if self._uvm_nl is None:
                await aio.run_in_thread(self._load_pyroute2)
            link = await discover.find(self.uvm_netlink, adapter, self.sys_root, self._taken, self.wait)
            async with self.lock:
                self._check_new(ns, adapter)
                nic = Nic(adapter, plan, link.name, link.index)
                if ns.attached:
                    await self._assign(ns, nic, low_metric=adapter.policy_based_routing and bool(ns.nics))
                ns.nics.append(nic)
        finally:
            if not ns.nics and not ns.attached and self.namespaces.get(key) is ns:
                del self.namespaces[key]  # a failed first Add leaves no empty record behind
        if ns.attached:
            self._write_resolv(ns)
        log.info("network adapter added", namespace=key, adapter=adapter.id, ifname=nic.name,
                 moved=nic.assigned, container=ns.owner or None)

    def _check_new(self, ns: PodNamespace, adapter: NetworkAdapter) -> None:
        if ns.find(adapter.id) is not None:
            raise hr.GcsError(hr.ALREADY_EXISTS, f"adapter with id {adapter.id!r} already present in namespace "
                              f"{ns.id!r}")
        searches, servers = _dns(ns.nics, adapter)
        hostfiles.resolv_conf(searches, servers)  # more than 6 search domains: refused now

    def remove(self, adapter: NetworkAdapter) -> None:
        """Drops the record only, as upstream: the host removes the NIC itself."""
        ns = self.namespaces.get(adapter.namespace_id.lower())
        nic = ns.find(adapter.id) if ns is not None else None
        if nic is None:
            log.warning("network adapter removal of an unknown namespace or adapter: nothing to do",
                        namespace=adapter.namespace_id, adapter=adapter.id)
            return
        ns.nics.remove(nic)
        if ns.attached:
            self._write_resolv(ns)
        elif not ns.nics:
            del self.namespaces[ns.id]
        log.info("network adapter removed", namespace=ns.id, adapter=adapter.id, ifname=nic.name)

    # --- moves ----------------------------------------------------------------------------------
    def _worker_netlink(self, ns: Optional[PodNamespace]) -> Netlink:
        """In a worker thread, under self.lock: the kept Netlink of the UVM (None) or of a pod."""
        from gcs.network.netlink import Netlink
        key = ns.id if ns is not None else None
        nl = self._worker_nl.get(key)
        if nl is None:
            nl = self._worker_nl[key] = Netlink(ns.netns.fd if ns is not None and ns.netns is not None else None)
        return nl

    def _move_and_configure(self, ns: PodNamespace, nic: Nic, low_metric: bool) -> int:
        from gcs.network import configure
        return configure.move_and_configure(self.uvm_fd, self._worker_netlink(None),
                                            self._worker_netlink(ns) if ns.netns is not None else None,
                                            nic.index, nic.name, nic.adapter, nic.plan, low_metric)

    async def _assign(self, ns: PodNamespace, nic: Nic, low_metric: bool) -> None:
        from gcs.network import configure
        try:
            nic.index = await aio.run_in_thread(self._move_and_configure, ns, nic, low_metric)
        except configure.ConfigureError as err:
            raise hr.GcsError(hr.E_FAIL, f"Network adapter {nic.adapter.id!r} ({nic.name}): {err}") from None
        nic.assigned = True
        if not nic.adapter.ip_configs:
            try:
                await self._lease(ns, nic)
            except BaseException:
                await self._unassign(ns, nic)
                raise

    async def _lease(self, ns: PodNamespace, nic: Nic) -> None:
        """DHCP for an adapter without IPConfigs: udhcpc in the adapter's namespace, bounded
        like upstream's (30 s); its event script configures the lease and reports it."""
        from gcs.runtime import command
        argv = _dhcp_command(nic.name)
        code, output = await command.run(self.reaper, argv, DHCP_TIMEOUT,
                                         netns_fd=ns.netns.fd if ns.netns is not None else None)
        if code != 0 or "lease ip=" not in output:
            raise hr.GcsError(hr.E_FAIL, f"Network adapter {nic.adapter.id!r} ({nic.name}): no DHCP lease "
                              f"(udhcpc exit code {code}): {output.strip()[-300:]}")
        fields = dict(line[len("lease "):].partition("=")[::2] for line in output.splitlines()
                      if line.startswith("lease ") and "=" in line)
        nic.lease_servers = fields.get("dns", "").split()
        nic.lease_searches = fields.get("search", "").split()
        log.info("network adapter leased by DHCP", ifname=nic.name, address=fields.get("ip", ""),
                 router=fields.get("router", ""))

    async def _unassign(self, ns: PodNamespace, nic: Nic) -> None:
        from gcs.network import configure
        target = ns.netns.fd if ns.netns is not None else None
        await aio.run_in_thread(configure.undo, self.uvm_fd, target, nic.name, nic.plan)
        nic.assigned = False
        nic.index = self.uvm_netlink.index_of(nic.name) or nic.index

    # --- containers -------------------------------------------------------------------------------
    def resolv_conf(self, nsid: str) -> str:
        ns = self.namespaces.get(nsid.lower())
        return hostfiles.resolv_conf(*_dns(ns.nics)) if ns is not None else ""

    def _write_resolv(self, ns: PodNamespace) -> None:
        content = self.resolv_conf(ns.id)
        if ns.bundle:
            hostfiles.rewrite_resolv(ns.bundle, content)
        if ns.attached and ns.netns is None and self.uvm_etc:  # host network: the UVM's own DNS too
            hostfiles.rewrite_resolv(self.uvm_etc, content)

    def pod_path(self, cid: str) -> str:
        """The path of the network namespace container `cid` made for its pod, or ""."""
        ns = self._by_owner(cid)
        return ns.netns.path if ns is not None and ns.netns is not None else ""

    async def attach(self, nsid: str, cid: str, bundle: str, mode: str, path: str = "") -> str:
        """At a sandbox's or standalone container's Create: make (NEW) or open (JOIN) its
        network namespace, or use the UVM's (HOST), and move in the adapters waiting for it.
        Returns the path the spec must name for NEW."""
        if self.refused:
            log.warning("network namespace not set up", namespace=nsid, reason=self.refused)
            return ""
        key = nsid.lower()
        async with self.lock:
            ns = self.namespaces.get(key) or PodNamespace(key)
            if ns.owner:
                raise hr.GcsError(hr.E_FAIL, f"network namespace {nsid!r} is already used by container {ns.owner!r}")
            netns = None
            try:
                if mode == NEW:
                    netns = await aio.run_in_thread(self._create_netns, _file_name(key))
                elif mode == JOIN:
                    netns = Netns.open(path)
            except OSError as err:
                raise hr.GcsError(hr.E_FAIL, f"network namespace {nsid!r}: {err}") from None
            self.namespaces[key] = ns
            ns.owner, ns.bundle, ns.netns, ns.attached = cid, bundle, netns, True
            try:
                for i, nic in enumerate(ns.nics):
                    if not nic.assigned:
                        await self._assign(ns, nic, low_metric=nic.adapter.policy_based_routing and i > 0)
            except BaseException:
                await self._release(ns)
                raise
        if mode == HOST and self.uvm_etc:
            self._write_resolv(ns)
        log.info("network namespace attached", namespace=key, container=cid, mode=mode,
                 adapters=[n.name for n in ns.nics])
        return netns.path if mode == NEW and netns is not None else ""

    def _create_netns(self, name: str) -> Netns:
        stale = os.path.join(self.netns_dir, name)
        if os.path.lexists(stale):  # left by an agent before us (it restarted): not anyone's now
            Netns(stale, -1, owned=True).close()
        return Netns.create(name, self.netns_dir)

    async def detach(self, cid: str) -> None:
        """At DeleteContainerState of the owner (or its failed Create): adapters back to the UVM
        namespace, the namespace unmounted, the record dropped unless adapters remain."""
        ns = self._by_owner(cid)
        if ns is None:
            return
        async with self.lock:
            await self._release(ns)
        if ns.nics:
            log.warning("network namespace contains adapters: its record stays", namespace=ns.id,
                        adapters=[n.adapter.id for n in ns.nics])
        elif self.namespaces.get(ns.id) is ns:
            del self.namespaces[ns.id]

    async def _release(self, ns: PodNamespace) -> None:
        for nic in ns.nics:
            if nic.assigned:
                await self._unassign(ns, nic)
        nl = self._worker_nl.pop(ns.id, None)
        if nl is not None:
            nl.close()
        if ns.netns is not None:
            ns.netns.close()
        ns.owner, ns.bundle, ns.netns, ns.attached = "", "", None, False

    def teardown(self) -> None:
        for ns in self.namespaces.values():
            if ns.netns is not None:
                ns.netns.close()
        for nl in [self._uvm_nl, *self._worker_nl.values()]:
            if nl is not None:
                nl.close()
        self._worker_nl.clear()
        if self._uvm_fd >= 0:
            os.close(self._uvm_fd)
            self._uvm_fd = -1


def _dns(nics, adding: Optional[NetworkAdapter] = None) -> tuple[list[str], list[str]]:
    """Search domains and servers of a namespace's adapters in order (the host's, then what
    a DHCP lease gave), with an adapter being added last."""
    searches: list[str] = []
    servers: list[str] = []
    for a, lease in [*((n.adapter, n) for n in nics), *([(adding, None)] if adding else [])]:
        searches += a.dns_suffix.split(",") if a.dns_suffix else []
        servers += a.dns_servers.split(",") if a.dns_servers else []
        if lease is not None:
            searches += lease.lease_searches
            servers += lease.lease_servers
    return searches, servers


def _dhcp_command(ifname: str) -> list[str]:
    """udhcpc's command line (upstream's, plus -n: give up at once after its tries, not retry
    until killed), or E_NOTIMPL where no client or event script exists."""
    import shutil
    script = next((p for p in DHCP_SCRIPTS if os.access(p, os.X_OK)), "")
    client = ["udhcpc"] if shutil.which("udhcpc") else ["busybox", "udhcpc"] if shutil.which("busybox") else []
    if not script or not client:
        raise hr.GcsError(hr.E_NOTIMPL, "the adapter has no IPConfigs and needs DHCP, which this agent cannot do "
                          f"here: {'no udhcpc (busybox)' if not client else 'no ' + DHCP_SCRIPTS[0]}")
    return [*client, "-q", "-n", "-i", ifname, "-s", script]
