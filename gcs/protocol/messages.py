"""Typed request shapes (sans-IO), decoded with Go's rules (fields.py).

Loaded after NegotiateProtocol has been answered (the first reply does not need them).
"""
from __future__ import annotations

from gcs.record import field, record

from .fields import Obj
from .hresult import INVALID_JSON, GcsError
from .ids import RequestId, request_name

TYPE_CHECKING = False  # typing costs ~45 ms under TCG; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Optional

INFINITE_TIMEOUT = 0xFFFFFFFF

# --- requests ------------------------------------------------------------------------------
@record
class Request:
    """Fields every host request carries (protocol.md 1.6)."""

    container_id: str = ""
    activity_id: str = ""

    @classmethod
    def from_obj(cls, obj: Obj) -> "Request":
        return cls(**_base(obj))


def _base(obj: Obj) -> dict[str, str]:
    return {"container_id": obj.str("ContainerId"), "activity_id": obj.str("ActivityId")}


@record
class CreateRequest(Request):
    container_config: Optional[Obj] = None

    @classmethod
    def from_obj(cls, obj: Obj) -> "CreateRequest":
        return cls(**_base(obj), container_config=obj.json_string("ContainerConfig"))


@record
class StdioPorts:
    stdin: int = 0
    stdout: int = 0
    stderr: int = 0


@record
class ProcessParameters:
    command_line: str = ""
    command_args: list[str] = field(default_factory=list)
    working_directory: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    emulate_console: bool = False
    create_stdin: bool = False
    create_stdout: bool = False
    create_stderr: bool = False
    create_in_uvm: bool = False
    oci_process: Optional[Obj] = None

    @classmethod
    def from_obj(cls, obj: Obj) -> "ProcessParameters":
        return cls(
            command_line=obj.str("CommandLine"),
            command_args=obj.str_list("CommandArgs"),
            working_directory=obj.str("WorkingDirectory"),
            environment=obj.str_map("Environment"),
            emulate_console=obj.bool("EmulateConsole"),
            create_stdin=obj.bool("CreateStdInPipe"),
            create_stdout=obj.bool("CreateStdOutPipe"),
            create_stderr=obj.bool("CreateStdErrPipe"),
            create_in_uvm=obj.bool("CreateInUtilityVM"),
            oci_process=obj.obj("OciProcess"),
        )


@record
class ExecuteProcessRequest(Request):
    params: ProcessParameters = field(default_factory=ProcessParameters)
    ports: StdioPorts = field(default_factory=StdioPorts)

    @classmethod
    def from_obj(cls, obj: Obj) -> "ExecuteProcessRequest":
        settings = obj.obj("Settings")
        if settings is None:
            raise GcsError(INVALID_JSON, "ExecuteProcess: missing Settings")
        pp = settings.json_string("ProcessParameters")
        if pp is None:
            raise GcsError(INVALID_JSON, "ExecuteProcess: missing Settings.ProcessParameters")
        relay = settings.obj("VsockStdioRelaySettings")
        ports = StdioPorts()
        if relay is not None:
            ports = StdioPorts(relay.uint("StdIn"), relay.uint("StdOut"), relay.uint("StdErr"))
        return cls(**_base(obj), params=ProcessParameters.from_obj(pp), ports=ports)


@record
class WaitForProcessRequest(Request):
    process_id: int = 0
    timeout_ms: int = 0

    @classmethod
    def from_obj(cls, obj: Obj) -> "WaitForProcessRequest":
        return cls(**_base(obj), process_id=obj.uint("ProcessId"), timeout_ms=obj.uint("TimeoutInMs"))


@record
class SignalProcessRequest(Request):
    process_id: int = 0
    signal: int = 0  # 0 (or no Options at all) means SIGKILL

    @classmethod
    def from_obj(cls, obj: Obj) -> "SignalProcessRequest":
        options = obj.obj("Options")
        return cls(**_base(obj), process_id=obj.uint("ProcessId"),
                   signal=options.int("Signal", 64) if options is not None else 0)


@record
class ResizeConsoleRequest(Request):
    process_id: int = 0
    height: int = 0
    width: int = 0

    @classmethod
    def from_obj(cls, obj: Obj) -> "ResizeConsoleRequest":
        return cls(**_base(obj), process_id=obj.uint("ProcessId"),
                   height=obj.uint("Height", 16), width=obj.uint("Width", 16))


@record
class GetPropertiesRequest(Request):
    property_types: list[str] = field(default_factory=list)

    @classmethod
    def from_obj(cls, obj: Obj) -> "GetPropertiesRequest":
        query = obj.str("Query")
        types: list[str] = []
        if query:
            types = Obj.parse(query, "GetProperties.Query").str_list("PropertyTypes")
        return cls(**_base(obj), property_types=types)


@record
class ModifySettingsRequest(Request):
    request_type: str = "Add"
    resource_type: str = ""
    settings: Optional[Obj] = None

    @classmethod
    def from_obj(cls, obj: Obj) -> "ModifySettingsRequest":
        req = obj.obj("Request")
        if req is None:
            return cls(**_base(obj), resource_type="")
        return cls(**_base(obj), request_type=req.str("RequestType") or "Add",
                   resource_type=req.str("ResourceType"), settings=req.obj("Settings"))


# --- ModifySettings settings -----------------------------------------------------------------
@record
class IPConfig:
    address: str = ""
    prefix_length: int = 0


@record
class NetworkRoute:
    next_hop: str = ""
    destination_prefix: str = ""
    metric: int = 0


@record
class NetworkAdapter:
    """ModifySettings `Network` settings, hcsshim's LCOWNetworkAdapter (protocol.md 3.10.6)."""

    namespace_id: str = ""
    id: str = ""
    mac_address: str = ""
    dns_suffix: str = ""
    dns_servers: str = ""
    encap_overhead: int = 0
    vpci_assigned: bool = False
    ip_configs: list[IPConfig] = field(default_factory=list)
    routes: list[NetworkRoute] = field(default_factory=list)
    policy_based_routing: bool = False

    @classmethod
    def from_obj(cls, obj: Optional[Obj]) -> "NetworkAdapter":
        if obj is None:
            raise GcsError(INVALID_JSON, "Network: missing Settings")
        return cls(
            namespace_id=obj.str("NamespaceID"), id=obj.str("ID"), mac_address=obj.str("MacAddress"),
            dns_suffix=obj.str("DNSSuffix"), dns_servers=obj.str("DNSServerList"),
            encap_overhead=obj.uint("EncapOverhead", 16), vpci_assigned=obj.bool("VPCIAssigned"),
            ip_configs=[IPConfig(c.str("IPAddress"), c.uint("PrefixLength", 8)) for c in obj.obj_list("IPConfigs")],
            routes=[NetworkRoute(r.str("NextHop"), r.str("DestinationPrefix"), r.uint("Metric", 16))
                    for r in obj.obj_list("Routes")],
            policy_based_routing=obj.bool("PolicyBasedRouting"),
        )


REQUEST_TYPES: dict[int, type[Request]] = {
    RequestId.CREATE: CreateRequest,
    RequestId.START: Request,
    RequestId.SHUTDOWN_GRACEFUL: Request,
    RequestId.SHUTDOWN_FORCED: Request,
    RequestId.EXECUTE_PROCESS: ExecuteProcessRequest,
    RequestId.WAIT_FOR_PROCESS: WaitForProcessRequest,
    RequestId.SIGNAL_PROCESS: SignalProcessRequest,
    RequestId.RESIZE_CONSOLE: ResizeConsoleRequest,
    RequestId.GET_PROPERTIES: GetPropertiesRequest,
    RequestId.MODIFY_SETTINGS: ModifySettingsRequest,
    RequestId.DUMP_STACKS: Request,
    RequestId.DELETE_CONTAINER_STATE: Request,
}


def parse_request(ident: int, payload: bytes) -> Request:
    """Decode a request payload; raises GcsError (0xC037010D) on malformed input."""
    name = request_name(ident) if ident in REQUEST_TYPES else f"0x{ident:08x}"
    obj = Obj.parse(payload, f"message {name}")
    return REQUEST_TYPES[ident].from_obj(obj)
