"""Dispatches bridge requests to the parts of the agent that carry them out.

Requests on the null container id address the UVM itself; everything else addresses a
container. Container support arrives with the runtime; until then container ids are
simply unknown (0xC037010E), which the host treats as "gone" where that is benign.
"""
from __future__ import annotations

import sys

from gcs import aio
from gcs.log import log
from gcs.protocol import hresult as hr
from gcs.protocol.ids import NULL_CONTAINER_ID, RequestId
from gcs.protocol.replies import response

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable

    from gcs.containers.manager import Containers
    from gcs.network.namespaces import Networks
    from gcs.protocol.messages import (CreateRequest, ExecuteProcessRequest, GetPropertiesRequest, ModifySettingsRequest,
                                       Request, ResizeConsoleRequest, SignalProcessRequest,
                                       WaitForProcessRequest)
    from gcs.protocol.session import IncomingRequest
    from gcs.runtime.reaper import Reaper
    from gcs.runtime.uvm_processes import UvmProcessTable
    from gcs.storage.manager import Storage

WARM_UP_GAP = 0.001    # between warm-up steps: time for the loop to read what came in
WARM_UP_RETRY = 0.02   # while a request is in flight


def _import_messages() -> None:
    import gcs.protocol.messages  # noqa: F401 - every request is parsed by it


# ModifySettings resource types a Linux GCS knows (protocol.md 3.10); the storage ones.
STORAGE_RESOURCE_TYPES = {"MappedVirtualDisk", "SCSIDevice", "VPMemDevice", "CombinedLayers", "MappedDirectory"}
HOST_RESOURCE_TYPES = {
    "MappedVirtualDisk", "SCSIDevice", "VPMemDevice", "CombinedLayers", "MappedDirectory",
    "Network", "VPCIDevice", "ContainerConstraints", "PodCgroupMemoryLimit",
    "SecurityPolicy", "SecurityPolicyFragment",
}


def _network_refusal(local: bool) -> str:
    """Why this agent cannot serve networking, or "" (checked without importing pyroute2)."""
    from gcs import network
    if not network.pyroute2_present():
        return "networking needs pyroute2, which this agent cannot import"
    if local and network.in_initial_netns():
        # Never move or configure the links of the machine a local-mode agent runs on.
        return "local mode in the machine's own network namespace: run the agent in a network namespace of its own"
    return ""


class Agent:
    def __init__(self, transport, reaper: Reaper, on_shutdown: Callable[[str], None],
                 dev_root: str = "/", sys_root: str = "/", device_wait: float = 30.0,
                 notify: Callable[[dict], None] | None = None, runtime: str = "native",
                 cgroup_base: str = "", nic_wait: float = 5.0) -> None:
        self.transport = transport
        self.reaper = reaper
        self._processes: UvmProcessTable | None = None
        self._storage: Storage | None = None
        self._device_args = (dev_root, sys_root, device_wait)
        self._containers: Containers | None = None
        self._network: Networks | None = None
        self._sys_root = sys_root
        self._nic_wait = nic_wait
        self.network_refused = _network_refusal(local=bool(cgroup_base))
        if self.network_refused:
            from gcs.protocol import replies
            replies.GUEST_CAPABILITIES["NamespaceAddRequestSupported"] = False  # only what works
        self.runtime_name = runtime
        self.cgroup_base = cgroup_base
        self.notify = notify or (lambda note: None)
        self.on_shutdown = on_shutdown
        self._handlers: dict[int, Callable[[Any], Awaitable[dict[str, Any]]]] = {
            RequestId.CREATE: self.create,
            RequestId.START: self.start,
            RequestId.SHUTDOWN_GRACEFUL: self.shutdown,
            RequestId.SHUTDOWN_FORCED: self.shutdown,
            RequestId.EXECUTE_PROCESS: self.execute_process,
            RequestId.WAIT_FOR_PROCESS: self.wait_for_process,
            RequestId.SIGNAL_PROCESS: self.signal_process,
            RequestId.RESIZE_CONSOLE: self.resize_console,
            RequestId.GET_PROPERTIES: self.get_properties,
            RequestId.MODIFY_SETTINGS: self.modify_settings,
            RequestId.DUMP_STACKS: self.dump_stacks,
            RequestId.DELETE_CONTAINER_STATE: self.delete_container_state,
        }
        self._shutdown_kind = ""

    @property
    def processes(self) -> UvmProcessTable:
        """The UVM process table, with the modules behind it loaded on first use."""
        if self._processes is None:
            from gcs.runtime.uvm_processes import UvmProcessTable
            self._processes = UvmProcessTable(self.reaper, self.transport)
        return self._processes

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            from gcs.storage.devices import DeviceResolver
            from gcs.storage.manager import Storage
            self._storage = Storage(DeviceResolver(*self._device_args), self.transport, self.reaper)
        return self._storage

    @property
    def network(self) -> Networks:
        """The network namespace records; pyroute2 itself loads with the first adapter."""
        if self._network is None:
            from gcs.network.namespaces import Networks
            self._network = Networks(self.reaper, self._sys_root, self._nic_wait, refused=self.network_refused,
                                     uvm_etc="" if self.cgroup_base else "/etc")  # never this machine's
        return self._network

    @property
    def containers(self) -> Containers:
        if self._containers is None:
            from gcs.containers.cgroups import Cgroups
            from gcs.containers.manager import Containers
            cgroups = Cgroups(self.cgroup_base)
            cgroups.setup()
            if self.runtime_name == "runc":
                from gcs.containers.runc import RuncRuntime
                runtime = RuncRuntime(self.reaper, cgroups.base)
            else:
                from gcs.containers.native.runtime import NativeRuntime
                runtime = NativeRuntime(self.reaper)
            self._containers = Containers(runtime, self.reaper, self.transport,
                                          lambda note: self.notify(note), lambda: self._storage, cgroups,
                                          lambda: self.network)
        return self._containers

    def teardown(self) -> None:
        """At shutdown: end the processes, then unmount everything the agent mounted."""
        if self._containers is not None:
            self._containers.teardown()
        if self._processes is not None:
            self._processes.kill_all()
        if self._storage is not None:
            self._storage.teardown()
        if self._network is not None:
            self._network.teardown()

    def warm_up(self, busy: Callable[[], bool] = lambda: False) -> None:
        """After NegotiateProtocol: load what later requests need, one step at a time and only
        while no request is being handled, so a request never waits for more than one step
        (under TCG each step takes 0.1-0.5 s). In a UVM (no local-mode cgroup base) this also
        sets up /gcs and /pods, protecting the agent, and starts the spawner."""
        steps: list[Callable[[], object]] = [lambda: self.processes, _import_messages]
        if not self.cgroup_base:
            steps += [self._warm_containers, self._prestart_runtime]
        loop = aio.get_loop()

        def step() -> None:
            if busy():
                loop.call_later(WARM_UP_RETRY, step)
                return
            steps.pop(0)()
            if steps:
                loop.call_later(WARM_UP_GAP, step)

        loop.call_later(WARM_UP_GAP, step)

    def _warm_containers(self) -> None:
        if self._containers is None:
            try:
                self.containers
            except Exception as err:  # noqa: BLE001 - a UVM without cgroups still serves processes
                log.error("cgroup setup failed", error=str(err))

    def _prestart_runtime(self) -> None:
        if self._containers is not None:
            self._containers.runtime.prestart()  # the first Create need not wait for it

    async def handle(self, incoming: IncomingRequest) -> dict[str, Any]:
        req = incoming.request
        if incoming.ident in (RequestId.SHUTDOWN_GRACEFUL, RequestId.SHUTDOWN_FORCED):
            self._shutdown_kind = "forced" if incoming.ident == RequestId.SHUTDOWN_FORCED else "graceful"
        return await self._handlers[incoming.ident](req)

    def state(self) -> dict[str, object]:
        """Sizes of everything the agent tracks (reported by DumpStacks, checked by tests)."""
        from gcs.stacks import open_fd_count
        loop = aio.get_loop()
        return {
            "uvm_processes": len(self._processes or ()),
            **(self._storage.state() if self._storage is not None else {"storage_mounts": 0, "overlays": 0}),
            **(self._containers.state() if self._containers is not None else {"containers": 0, "container_execs": 0}),
            **(self._network.state() if self._network is not None else {"network_namespaces": 0,
                                                                         "network_adapters": 0}),
            "network_loaded": int("pyroute2" in sys.modules),  # proves start-up did not pay for it
            "reaper_watches": self.reaper.watched,
            "orphans_reaped": self.reaper.orphans_reaped,
            "tasks": len(loop.tasks),
            "open_fds": open_fd_count(),
        }

    # --- container lookups ------------------------------------------------------------
    @staticmethod
    def _is_uvm(req: Request) -> bool:
        return req.container_id == NULL_CONTAINER_ID

    # --- handlers ---------------------------------------------------------------------
    async def create(self, req: CreateRequest) -> dict[str, Any]:
        if self._is_uvm(req):
            raise hr.GcsError(hr.INVALID_JSON, "the UVM itself cannot be created (SchemaVersion missing)")
        await self.containers.create(req.container_id, req.activity_id, req.container_config)
        return response(req.activity_id, SelectedProtocolVersion=0)

    async def start(self, req: Request) -> dict[str, Any]:
        return response(req.activity_id)  # upstream: a no-op; the init ExecuteProcess starts it

    async def shutdown(self, req: Request) -> dict[str, Any]:
        kind = self._shutdown_kind or "graceful"
        if not self._is_uvm(req):
            self.containers.shutdown(req.container_id, forced=kind == "forced")
            return response(req.activity_id)
        log.info("UVM shutdown requested", kind=kind)
        aio.get_loop().call_soon(self.on_shutdown, kind)
        return response(req.activity_id)

    async def execute_process(self, req: ExecuteProcessRequest) -> dict[str, Any]:
        if self._is_uvm(req) or req.params.create_in_uvm:
            pid = await self.processes.execute(req)
            return response(req.activity_id, ProcessId=pid)
        pid = await self.containers.execute(req)
        return response(req.activity_id, ProcessId=pid)

    async def wait_for_process(self, req: WaitForProcessRequest) -> dict[str, Any]:
        if self._is_uvm(req):
            code = await self.processes.wait(req.process_id, req.timeout_ms)
        else:
            code = await self.containers.wait(req.container_id, req.process_id, req.timeout_ms)
        return response(req.activity_id, ExitCode=code)

    async def signal_process(self, req: SignalProcessRequest) -> dict[str, Any]:
        if self._is_uvm(req):
            self.processes.signal(req.process_id, req.signal)
        else:
            self.containers.signal(req.container_id, req.process_id, req.signal)
        return response(req.activity_id)

    async def resize_console(self, req: ResizeConsoleRequest) -> dict[str, Any]:
        if self._is_uvm(req):
            self.processes.resize(req.process_id, req.height, req.width)
        else:
            self.containers.resize(req.container_id, req.process_id, req.height, req.width)
        return response(req.activity_id)

    async def get_properties(self, req: GetPropertiesRequest) -> dict[str, Any]:
        if self._is_uvm(req):
            raise hr.GcsError(hr.E_FAIL, "GetProperties is not supported against the UVM")
        return response(req.activity_id, Properties=self.containers.properties(req.container_id, req.property_types))

    async def modify_settings(self, req: ModifySettingsRequest) -> dict[str, Any]:
        if not self._is_uvm(req):
            self.containers.lookup(req.container_id)
            if req.resource_type != "ContainerConstraints":
                raise hr.GcsError(hr.E_FAIL, f"ResourceType {req.resource_type!r} is not supported for containers")
            self.containers.update_constraints(req.container_id, req.settings)
            return response(req.activity_id)
        if req.resource_type not in HOST_RESOURCE_TYPES:
            raise hr.GcsError(hr.E_FAIL, f"invalid ResourceType {req.resource_type!r}")
        if req.request_type not in ("Add", "Remove", "Update", "PreAdd"):
            raise hr.GcsError(hr.E_FAIL, f"the RequestType {req.request_type!r} is not supported")
        if req.resource_type in STORAGE_RESOURCE_TYPES:
            await self.storage.modify(req)
            return response(req.activity_id)
        if req.resource_type == "Network":
            from gcs.protocol.messages import NetworkAdapter
            await self.network.modify(req.request_type, NetworkAdapter.from_obj(req.settings))
            return response(req.activity_id)
        raise hr.GcsError(hr.E_NOTIMPL, f"ResourceType {req.resource_type!r} is not supported by this agent build")

    async def dump_stacks(self, req: Request) -> dict[str, Any]:
        from gcs.stacks import dump_stacks
        return response(req.activity_id, GuestStacks=dump_stacks(self.state()))

    async def delete_container_state(self, req: Request) -> dict[str, Any]:
        await self.containers.delete(req.container_id)
        return response(req.activity_id)
