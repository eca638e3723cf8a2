"""Message identifiers of the hcsshim bridge (protocol.md 1.2, 1.3)."""
from __future__ import annotations


TYPE_MASK = 0xF0000000
CATEGORY_MASK = 0x0FF00000
ID_MASK = 0x000FFF00
VERSION_MASK = 0x000000FF

TYPE_REQUEST = 0x10000000
TYPE_RESPONSE = 0x20000000
TYPE_NOTIFICATION = 0x30000000


class RequestId:
    """Request identifiers, plain ints (an IntEnum costs start-up time before the first reply)."""

    CREATE = 0x10100101
    START = 0x10100201
    SHUTDOWN_GRACEFUL = 0x10100301
    SHUTDOWN_FORCED = 0x10100401
    EXECUTE_PROCESS = 0x10100501
    WAIT_FOR_PROCESS = 0x10100601
    SIGNAL_PROCESS = 0x10100701
    RESIZE_CONSOLE = 0x10100801
    GET_PROPERTIES = 0x10100901
    MODIFY_SETTINGS = 0x10100A01
    NEGOTIATE_PROTOCOL = 0x10100B01
    DUMP_STACKS = 0x10100C01
    DELETE_CONTAINER_STATE = 0x10100D01
    # Known to hcsshim, not handled by a Linux GCS (answered E_NOTIMPL).
    UPDATE_CONTAINER = 0x10100E01
    LIFECYCLE_NOTIFICATION = 0x10100F01
    MODIFY_SERVICE_SETTINGS = 0x10200101


NOTIFICATION_CONTAINER = 0x30100101

PROTOCOL_VERSION = 4
BRIDGE_PORT = 0x40000000
NULL_CONTAINER_ID = "00000000-0000-0000-0000-000000000000"
ZERO_GUID = NULL_CONTAINER_ID


def response_id(request_id: int) -> int:
    """The reply to any request, known or not: the type nibble becomes 2."""
    return TYPE_RESPONSE | (request_id & ~TYPE_MASK & 0xFFFFFFFF)


def message_type(ident: int) -> int:
    return ident & TYPE_MASK


_NAMES = {value: name for name, value in vars(RequestId).items() if name.isupper()}
REQUEST_IDS = tuple(_NAMES)  # every request id hcsshim knows


def request_name(ident: int) -> str:
    """The name of a known request id (ValueError for any other)."""
    try:
        return _NAMES[ident]
    except KeyError:
        raise ValueError(f"0x{ident:08x} is not a known request id") from None


def describe(ident: int) -> str:
    return _NAMES.get(ident) or f"0x{ident:08x}"

# Requests a Linux GCS answers with something other than E_NOTIMPL.
HANDLED_REQUESTS = frozenset({
    RequestId.CREATE, RequestId.START, RequestId.SHUTDOWN_GRACEFUL, RequestId.SHUTDOWN_FORCED,
    RequestId.EXECUTE_PROCESS, RequestId.WAIT_FOR_PROCESS, RequestId.SIGNAL_PROCESS,
    RequestId.RESIZE_CONSOLE, RequestId.GET_PROPERTIES, RequestId.MODIFY_SETTINGS,
    RequestId.NEGOTIATE_PROTOCOL, RequestId.DUMP_STACKS, RequestId.DELETE_CONTAINER_STATE,
})
