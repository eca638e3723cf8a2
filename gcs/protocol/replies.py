"""Replies and notifications the agent sends, and their encoding (sans-IO).

hcsshim's exact field names, integers as JSON integers, uint32 fields never negative,
ActivityId a GUID or absent, and every message under the host's 64 KiB limit.
"""
from __future__ import annotations

from . import jsoncodec
from .framing import HEADER_SIZE, HOST_MAX_MESSAGE
from .hresult import E_FAIL, GcsError, to_int32

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

UINT32_MAX = 0xFFFFFFFF


_HEX = frozenset("0123456789abcdefABCDEF")


def is_guid(value: Any) -> bool:
    """8-4-4-4-12 hex digits (no `re`: it costs start-up time the first reply cannot wait for)."""
    return (isinstance(value, str) and len(value) == 36 and [len(p) for p in value.split("-")] == [8, 4, 4, 4, 12]
            and _HEX.issuperset(value.replace("-", "")))


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
    return jsoncodec.dumps(obj)


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
