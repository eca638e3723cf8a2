"""Replies and notifications the agent sends, and their encoding (sans-IO).

hcsshim's exact field names, integers as JSON integers, uint32 fields never negative,
ActivityId a GUID or absent, and every message under the host's 64 KiB limit.
"""
from __future__ import annotations

from . import jsoncodec
from .framing import HEADER_SIZE, HOST_MAX_MESSAGE
from .hresult import E_FAIL, INSUFFICIENT_BUFFER, GcsError, to_int32

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
        hresult, text = E_FAIL, f"HRESULT 0x{E_FAIL:08x}: {_describe(err)}"
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


def _describe(err: BaseException) -> str:
    try:
        return str(err)
    except Exception:  # noqa: BLE001 - a broken __str__ must not cost the request its reply
        return type(err).__name__


# What the agent offers (protocol.md 2.3, 9.5). The host acts on each one: the agent clears
# any it cannot serve (NamespaceAddRequestSupported without working networking) before it
# answers NegotiateProtocol.
GUEST_CAPABILITIES: dict[str, bool] = {
    "NamespaceAddRequestSupported": True,
    "SignalProcessSupported": True,
    "DumpStacksSupported": True,
    "DeleteContainerStateSupported": True,
}


def negotiate_response(activity_id: str, version: int) -> dict[str, Any]:
    return response(activity_id, Version=version, Capabilities={
        "SupportedSchemaVersions": [{"Major": 2, "Minor": 1}],
        "RuntimeOsType": "Linux",
        "GuestDefinedCapabilities": {k: v for k, v in GUEST_CAPABILITIES.items() if v},  # Go's omitempty
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


# Fields whose text may be cut so a reply fits the host's 64 KiB frame limit. Nothing else is
# cut: Properties is JSON-in-string (cut, it would not decode, and the host drops the bridge)
# and any other field is data the host relies on whole.
_SHRINKABLE = ("GuestStacks", "ErrorMessage")
_TRUNCATED = "\n...[truncated]"
REPLY_LIMIT = HOST_MAX_MESSAGE - HEADER_SIZE


class ReplyTooLarge(ValueError):
    """A reply that stays over the limit with every shrinkable field cut."""


def encode_json(obj: Any) -> str:
    return jsoncodec.dumps(obj)


def encode_reply(reply: dict[str, Any], limit: int = REPLY_LIMIT, activity_id: str = "") -> bytes:
    """The reply's payload, never over `limit` bytes and never an exception (see fit_reply)."""
    return fit_reply(reply, limit, activity_id)[0]


def fit_reply(reply: dict[str, Any], limit: int = REPLY_LIMIT,
              activity_id: str = "") -> tuple[bytes, Optional[GcsError]]:
    """(payload, the error it was replaced with, or None).

    Long text fields are shortened until the reply fits. A reply that still does not fit, or
    cannot be encoded at all (a handler bug: a value JSON cannot carry), becomes an error reply
    for the same request that says why: the host must get exactly one reply it can read.
    `activity_id` is the request's, echoed in a replacement (a reply's own is used if absent).
    """
    try:
        if not isinstance(reply, dict):
            raise TypeError(f"a reply is a JSON object, not {type(reply).__name__}")
        return _shrink_to_fit(reply, limit), None
    except ReplyTooLarge as err:
        # HRESULT_FROM_WIN32(ERROR_INSUFFICIENT_BUFFER): what happened, the answer does not fit
        # the host's buffer. No host path special-cases it, so hcsshim fails the one call as it
        # would for E_FAIL, and logs tell it from a handler's own failure.
        failure = GcsError(INSUFFICIENT_BUFFER, str(err))
    except (TypeError, ValueError, RecursionError) as err:  # not JSON (an object, NaN, a cycle)
        failure = GcsError(E_FAIL, f"the reply could not be encoded as JSON: {err}")
    if not activity_id and isinstance(reply, dict):
        activity_id = reply.get("ActivityId") or ""
    return _shrink_to_fit(error_response(activity_id, failure), limit), failure


def _shrink_to_fit(reply: dict[str, Any], limit: int) -> bytes:
    data = encode_json(reply).encode()
    size = len(data)
    while len(data) > limit:
        if not _shrink_one(reply, len(data) - limit):
            raise ReplyTooLarge(f"the reply of {size} bytes does not fit in a host message "
                                f"(at most {limit} bytes of payload, 64 KiB with the header)")
        data = encode_json(reply).encode()
    return data


def _shrink_one(reply: dict[str, Any], excess: int) -> bool:
    """Shorten the first long text field; False when there is none."""
    for key in _SHRINKABLE:
        value = reply.get(key)
        if isinstance(value, str) and len(value) > len(_TRUNCATED):
            reply[key] = _shrink(value, excess)
            return True
    for record in reply.get("ErrorRecords") or []:
        msg = record.get("Message") if isinstance(record, dict) else None
        if isinstance(msg, str) and len(msg) > len(_TRUNCATED):
            record["Message"] = _shrink(msg, excess)
            return True
    return False


def encode_notification(note: dict[str, Any], limit: int = REPLY_LIMIT) -> tuple[Optional[bytes], str]:
    """(payload or None, what was given up, or "").

    The optional ResultInfo is the only part that can grow: past the limit the notification goes
    without it. One that still cannot be sent whole is not sent at all: the host drops the bridge
    on a notification it cannot read, while a missing one costs it a 30 s wait (protocol.md 9.3).
    """
    try:
        data = encode_json(note).encode()
        if len(data) <= limit:
            return data, ""
        if "ResultInfo" in note:
            size = len(data)
            note = {k: v for k, v in note.items() if k != "ResultInfo"}
            data = encode_json(note).encode()
            if len(data) <= limit:
                return data, f"ResultInfo left out: the notification of {size} bytes exceeds the limit of {limit}"
        return None, f"not sent: the notification of {len(data)} bytes exceeds the limit of {limit} bytes"
    except (TypeError, ValueError, RecursionError) as err:
        return None, f"not sent: the notification could not be encoded as JSON: {err}"


def _shrink(text: str, excess: int) -> str:
    # ASCII-escaped JSON: one character may take up to 12 bytes (\uXXXX\uXXXX for a pair).
    keep = max(0, len(text) - max(excess, 64) - len(_TRUNCATED))
    if keep and len(text[:keep].encode("ascii", "backslashreplace")) != keep:
        keep = max(0, keep - excess * 6)
    return text[:keep] + _TRUNCATED
