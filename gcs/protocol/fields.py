"""Decoding JSON objects the way Go's encoding/json fills a struct.

* keys match exactly first, then case-insensitively (Go folds case when decoding);
* a missing key or `null` leaves the zero value;
* a value of the wrong JSON type is an error (HRESULT 0xC037010D, invalid JSON);
* integers must be integral JSON numbers within the field's range (1.0 is not an int,
  -1 is not a uint32), booleans must be true/false;
* a document nesting deeper than `jsoncodec.MAX_DEPTH` is invalid JSON (Go: past 10000).
"""
from __future__ import annotations

from . import jsoncodec

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any, Optional

from .hresult import invalid_json

_MISSING = object()


def decode_json(raw: bytes | str, what: str) -> Any:
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        return jsoncodec.loads(text)
    except UnicodeDecodeError as err:
        raise invalid_json(f"failed to unmarshal JSON in {what}: invalid UTF-8 at byte {err.start}") from None
    except (ValueError, RecursionError) as err:  # RecursionError: only where the stack is nearly full
        raise invalid_json(f"failed to unmarshal JSON in {what}: {err}") from None


class Obj:
    """A decoded JSON object with Go-style typed accessors."""

    __slots__ = ("data", "where", "_folded")

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise invalid_json(f"{where}: expected a JSON object, got {_kind(data)}")
        self.data = data
        self.where = where
        self._folded: Optional[dict[str, str]] = None

    @classmethod
    def parse(cls, raw: bytes | str, where: str) -> "Obj":
        return cls(decode_json(raw, where), where)

    def raw(self, name: str) -> Any:
        data = self.data
        if name in data:
            return data[name]
        if self._folded is None:
            folded: dict[str, str] = {}
            for key in data:
                folded.setdefault(key.casefold(), key)
            self._folded = folded
        key = self._folded.get(name.casefold())
        return data[key] if key is not None else _MISSING

    def has(self, name: str) -> bool:
        value = self.raw(name)
        return value is not _MISSING and value is not None

    def _err(self, name: str, expected: str, value: Any):
        return invalid_json(
            f"failed to unmarshal JSON in {self.where}: field {name}: expected {expected}, got {_kind(value)}")

    def str(self, name: str) -> str:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return ""
        if not isinstance(value, str):
            raise self._err(name, "a string", value)
        return value

    def _int(self, name: str, lo: int, hi: int, expected: str) -> int:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._err(name, expected, value)
        if not lo <= value <= hi:
            raise invalid_json(
                f"failed to unmarshal JSON in {self.where}: field {name}: {value} overflows {expected}")
        return value

    def uint(self, name: str, bits: int = 32) -> int:
        return self._int(name, 0, (1 << bits) - 1, f"uint{bits}")

    def int(self, name: str, bits: int = 32) -> int:
        return self._int(name, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, f"int{bits}")

    def bool(self, name: str) -> bool:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return False
        if not isinstance(value, bool):
            raise self._err(name, "a boolean", value)
        return value

    def obj(self, name: str) -> Optional["Obj"]:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, dict):
            raise self._err(name, "an object", value)
        return Obj(value, f"{self.where}.{name}")

    def str_list(self, name: str) -> list[str]:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._err(name, "an array of strings", value)
        return list(value)

    def obj_list(self, name: str) -> list["Obj"]:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._err(name, "an array of objects", value)
        return [Obj(v, f"{self.where}.{name}[{i}]") for i, v in enumerate(value)]

    def str_map(self, name: str) -> dict[str, str]:
        value = self.raw(name)
        if value is _MISSING or value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self._err(name, "an object of strings", value)
        return dict(value)

    def json_string(self, name: str) -> Optional["Obj"]:
        """A JSON-in-string field: a string whose contents are a JSON object.

        Absent or null gives None; present but empty or not an object is invalid JSON,
        as `json.Unmarshal` of the string would be in Go.
        """
        value = self.raw(name)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, str):
            raise self._err(name, "a JSON document in a string", value)
        return Obj.parse(value, f"{self.where}.{name}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def peek_envelope(payload: bytes) -> tuple[str, str]:
    """Best-effort ContainerId/ActivityId of a payload that may not decode fully."""
    try:
        obj = Obj(decode_json(payload, "envelope"), "envelope")
    except Exception:  # noqa: BLE001 - any undecodable payload simply has no envelope
        return "", ""
    cid, aid = obj.raw("ContainerId"), obj.raw("ActivityId")
    return (cid if isinstance(cid, str) else "", aid if isinstance(aid, str) else "")
