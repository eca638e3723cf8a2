"""The checks hcsshim's host applies to every guest message (protocol.md 8.2, 9.1).

A real host tears the whole bridge down on any of these; the test client records them so
tests can assert the agent never commits one.
"""
from __future__ import annotations

import re
from typing import Any

HOST_MAX_MESSAGE = 0x10000
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_UINT32_FIELDS = ("ProcessId", "ExitCode", "Version", "SelectedProtocolVersion")
_STRING_FIELDS = ("Properties", "GuestStacks", "ErrorMessage")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_reply(size: int, payload: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if size > HOST_MAX_MESSAGE:
        problems.append(f"message of {size} bytes exceeds 64 KiB")
    result = payload.get("Result")
    if not _is_int(result) or not -(1 << 31) <= result < (1 << 31):
        problems.append(f"Result {result!r} is not an int32")
    if "ActivityId" in payload and not (isinstance(payload["ActivityId"], str) and _GUID.match(payload["ActivityId"])):
        problems.append(f"ActivityId {payload['ActivityId']!r} is not a GUID")
    for key in _UINT32_FIELDS:
        if key in payload and not (_is_int(payload[key]) and 0 <= payload[key] <= 0xFFFFFFFF):
            problems.append(f"{key} {payload[key]!r} is not a uint32")
    for key in _STRING_FIELDS:
        if key in payload and not isinstance(payload[key], str):
            problems.append(f"{key} must be a string")
    if payload.get("Properties") == "":
        problems.append("Properties must not be an empty string")
    for record in payload.get("ErrorRecords") or []:
        line = record.get("Line")
        if not (_is_int(line) and 0 <= line <= 0xFFFFFFFF):
            problems.append(f"ErrorRecords Line {line!r} is not a uint32")
        if not _is_int(record.get("Result")):
            problems.append("ErrorRecords Result is not an int")
    return problems


def check_notification(size: int, payload: dict[str, Any], known_containers: set[str]) -> list[str]:
    problems: list[str] = []
    if size > HOST_MAX_MESSAGE:
        problems.append(f"notification of {size} bytes exceeds 64 KiB")
    if not (isinstance(payload.get("ActivityId"), str) and _GUID.match(payload["ActivityId"])):
        problems.append("notification ActivityId is not a GUID")
    if "ResultInfo" in payload and not isinstance(payload["ResultInfo"], str):
        problems.append("ResultInfo must be a JSON string")
    if payload.get("ContainerId") not in known_containers:
        problems.append(f"notification for unknown container {payload.get('ContainerId')!r}")
    return problems
