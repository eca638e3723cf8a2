"""HRESULTs used on the bridge and the exception that carries one (protocol.md 4.2)."""
from __future__ import annotations

E_NOTIMPL = 0x80004001
E_FAIL = 0x80004005
E_INVALIDARG = 0x80070057
INSUFFICIENT_BUFFER = 0x8007007A  # HRESULT_FROM_WIN32(ERROR_INSUFFICIENT_BUFFER): a reply over 64 KiB
ERROR_NOT_FOUND = 0x80070490
VMCOMPUTE_TIMEOUT = 0xC0370109
UNKNOWN_MESSAGE = 0xC037010B
UNSUPPORTED_PROTOCOL_VERSION = 0xC037010C
INVALID_JSON = 0xC037010D
SYSTEM_NOT_FOUND = 0xC037010E
ALREADY_EXISTS = 0xC037010F
INVALID_STATE = 0x80370105
SYSTEM_ALREADY_STOPPED = 0xC0370110


def to_int32(hresult: int) -> int:
    """HRESULTs travel as signed 32-bit integers in JSON."""
    hresult &= 0xFFFFFFFF
    return hresult - 0x100000000 if hresult & 0x80000000 else hresult


class GcsError(Exception):
    """An error that becomes a bridge error response with `hresult`."""

    def __init__(self, hresult: int, message: str) -> None:
        super().__init__(message)
        self.hresult = hresult & 0xFFFFFFFF
        self.message = message

    def __str__(self) -> str:
        return f"HRESULT 0x{self.hresult:08x}: {self.message}"


def not_found(what: str) -> GcsError:
    return GcsError(ERROR_NOT_FOUND, what)


def invalid_json(what: str) -> GcsError:
    return GcsError(INVALID_JSON, what)
