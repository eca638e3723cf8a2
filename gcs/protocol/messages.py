"""Typed request shapes, response/notification builders and reply encoding (sans-IO).

Requests are decoded with Go's rules (fields.py). Replies are built with hcsshim's exact
field names, integers as JSON integers, uint32 fields never negative, and the whole
message kept under the host's 64 KiB limit.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .fields import Obj, decode_json
from .framing import HEADER_SIZE, HOST_MAX_MESSAGE
from .hresult import E_FAIL, INVALID_JSON, GcsError, to_int32
from .ids import RequestId

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
UINT32_MAX = 0xFFFFFFFF
INFINITE_TIMEOUT = UINT32_MAX


def is_guid(value: Any) -> bool:
    return isinstance(value, str) and bool(_GUID.match(value))


# --- requests ------------------------------------------------------------------------------
@dataclass
class Request:
    """Fields every host request carries (protocol.md 1.6)."""

    container_id: str = ""
    activity_id: str = ""

    @classmethod
    def from_obj(cls, obj: Obj) -> "Request":
        return cls(**_base(obj))


def _base(obj: Obj) -> dict[str, str]:
    return {"container_id": obj.str("ContainerId"), "activity_id": obj.str("ActivityId")}


@dataclass
class NegotiateProtocolRequest(Request):
    minimum_version: int = 0
    maximum_version: int = 0

    @classmethod
    def from_obj(cls, obj: Obj) -> "NegotiateProtocolRequest":
        return cls(**_base(obj), minimum_version=obj.uint("MinimumVersion"),
                   maximum_version=obj.uint("MaximumVersion"))


@dataclass
class CreateRequest(Request):
    container_config: Optional[Obj] = None

    @classmethod
    def from_obj(cls, obj: Obj) -> "CreateRequest":
        return cls(**_base(obj), container_config=obj.json_string("ContainerConfig"))


@dataclass
class StdioPorts:
    stdin: int = 0
    stdout: int = 0
    stderr: int = 0


@dataclass
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


@dataclass
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


@dataclass
class WaitForProcessRequest(Request):
    process_id: int = 0
    timeout_ms: int = 0

    @classmethod
    def from_obj(cls, obj: Obj) -> "WaitForProcessRequest":
        return cls(**_base(obj), process_id=obj.uint("ProcessId"), timeout_ms=obj.uint("TimeoutInMs"))


@dataclass
class SignalProcessRequest(Request):
    process_id: int = 0
    signal: int = 0  # 0 (or no Options at all) means SIGKILL

    @classmethod
    def from_obj(cls, obj: Obj) -> "SignalProcessRequest":
        options = obj.obj("Options")
        return cls(**_base(obj), process_id=obj.uint("ProcessId"),
                   signal=options.int("Signal", 64) if options is not None else 0)


@dataclass
class ResizeConsoleRequest(Request):
    process_id: int = 0
    height: int = 0
    width: int = 0

    @classmethod
    def from_obj(cls, obj: Obj) -> "ResizeConsoleRequest":
        return cls(**_base(obj), process_id=obj.uint("ProcessId"),
                   height=obj.uint("Height", 16), width=obj.uint("Width", 16))


@dataclass
class GetPropertiesRequest(Request):
    property_types: list[str] = field(default_factory=list)

    @classmethod
    def from_obj(cls, obj: Obj) -> "GetPropertiesRequest":
        query = obj.str("Query")
        types: list[str] = []
        if query:
            types = Obj.parse(query, "GetProperties.Query").str_list("PropertyTypes")
        return cls(**_base(obj), property_types=types)


@dataclass
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


REQUEST_TYPES: dict[int, type[Request]] = {
    RequestId.NEGOTIATE_PROTOCOL: NegotiateProtocolRequest,
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
    name = RequestId(ident).name if ident in REQUEST_TYPES else f"0x{ident:08x}"
    obj = Obj.parse(payload, f"message {name}")
    return REQUEST_TYPES[ident].from_obj(obj)


def peek_envelope(payload: bytes) -> tuple[str, str]:
    """Best-effort ContainerId/ActivityId of a payload that may not decode fully."""
    try:
        obj = Obj(decode_json(payload, "envelope"), "envelope")
    except GcsError:
        return "", ""
    cid, aid = obj.raw("ContainerId"), obj.raw("ActivityId")
    return (cid if isinstance(cid, str) else "", aid if isinstance(aid, str) else "")


# --- replies ------------------------------------------------------------------------------
def response(activity_id: str, **fields: Any) -> dict[str, Any]:
    """A success reply: Result 0, the request's ActivityId echoed when it is a GUID."""
    reply: dict[str, Any] = {"Result": 0}
    if is_guid(activity_id):
        reply["ActivityId"] = activity_id
    reply.update(fields)
    return reply


def error_response(activity_id: str, err: BaseException) -> dict[str, Any]:
    if isinstance(err, GcsError):
        hresult, text = err.hresult, str(err)
    else:
        hresult, text = E_FAIL, f"HRESULT 0x{E_FAIL:08x}: {err}"
    code = to_int32(hresult)
    reply: dict[str, Any] = {"Result": code}
    if is_guid(activity_id):
        reply["ActivityId"] = activity_id
    reply["ErrorMessage"] = text
    reply["ErrorRecords"] = [{
        "Result": code,
        "Message": text,
        "ModuleName": "gcs",
        "FileName": "",
        "Line": UINT32_MAX,
    }]
    return reply


def negotiate_response(activity_id: str, version: int) -> dict[str, Any]:
    return response(activity_id, Version=version, Capabilities={
        "SupportedSchemaVersions": [{"Major": 2, "Minor": 1}],
        "RuntimeOsType": "Linux",
        "GuestDefinedCapabilities": {
            "NamespaceAddRequestSupported": True,
            "SignalProcessSupported": True,
            "DumpStacksSupported": True,
            "DeleteContainerStateSupported": True,
        },
    })


NOTIFY_GRACEFUL, NOTIFY_FORCED, NOTIFY_UNEXPECTED = "GracefulExit", "ForcedExit", "UnexpectedExit"


def container_notification(container_id: str, activity_id: str, kind: str,
                           result_info: Optional[dict] = None) -> dict[str, Any]:
    note: dict[str, Any] = {
        "ContainerId": container_id,
        # The host decodes this as a GUID and has no omitempty: always send a valid one.
        "ActivityId": activity_id if is_guid(activity_id) else "00000000-0000-0000-0000-000000000000",
        "Type": kind,
        "Operation": "None",
        "Result": 0,
    }
    if result_info is not None:
        note["ResultInfo"] = encode_json(result_info)  # JSON-in-string
    return note


# Fields whose text may be cut so a reply fits the host's 64 KiB frame limit.
_SHRINKABLE = ("GuestStacks", "ErrorMessage")
_TRUNCATED = "\n...[truncated]"


def encode_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_reply(reply: dict[str, Any], limit: int = HOST_MAX_MESSAGE - HEADER_SIZE) -> bytes:
    """Serialize a reply, shortening long text fields until it fits in `limit` bytes."""
    data = encode_json(reply).encode()
    while len(data) > limit:
        excess = len(data) - limit
        shrunk = False
        for key in _SHRINKABLE:
            value = reply.get(key)
            if isinstance(value, str) and len(value) > len(_TRUNCATED):
                reply[key] = _shrink(value, excess)
                shrunk = True
                break
        if not shrunk:
            for record in reply.get("ErrorRecords") or []:
                msg = record.get("Message")
                if isinstance(msg, str) and len(msg) > len(_TRUNCATED):
                    record["Message"] = _shrink(msg, excess)
                    shrunk = True
                    break
        if not shrunk:
            raise ValueError(f"reply of {len(data)} bytes cannot be shortened below {limit}")
        data = encode_json(reply).encode()
    return data


def _shrink(text: str, excess: int) -> str:
    # ASCII-escaped JSON: one character may take up to 12 bytes (\uXXXX\uXXXX for a pair).
    keep = max(0, len(text) - max(excess, 64) - len(_TRUNCATED))
    if keep and len(text[:keep].encode("ascii", "backslashreplace")) != keep:
        keep = max(0, keep - excess * 6)
    return text[:keep] + _TRUNCATED
