"""JSON for the bridge and the log, straight on CPython's C accelerator (`_json`).

The `json` package imports `re` and compiles its patterns at import time: ~0.15 s of the
agent's start-up under TCG, all before NegotiateProtocol can be answered. The C scanner and
encoder it wraps need none of that; the results are the same as `json.loads` and
`json.dumps(separators=(",", ":"))`.
"""
from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

_WHITESPACE = " \t\n\r"


class _ScanContext:
    """What `_json.make_scanner` reads from its context (json.decoder.JSONDecoder's fields)."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")  # NaN, Infinity (as Go's decoder says)


_scan = _json.make_scanner(_ScanContext())


def loads(text: str) -> Any:
    """One JSON value; ValueError (json.JSONDecodeError where the C scanner raises) if not."""
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a value at character {stop.value}") from None
    except SystemError:
        # The C scanner raises json.decoder.JSONDecodeError, and finds that class only once
        # json.decoder is imported: import it (malformed input only) and scan again, once.
        import sys
        if "json.decoder" in sys.modules:
            raise
        import json.decoder  # noqa: F401
        return loads(text)
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data at character {end + len(text[end:]) - len(text[end:].lstrip(_WHITESPACE))}")
    return value


def _no_default(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def make_encoder(default: Optional[Callable[[Any], Any]] = None, allow_nan: bool = False) -> Callable[[Any], str]:
    """A compact, ASCII-only encoder (the host's and logrus's readers take either)."""
    encode = _json.make_encoder(None, default or _no_default, _json.encode_basestring_ascii, None, ":", ",",
                                False, False, allow_nan)

    def dumps(obj: Any) -> str:
        return "".join(encode(obj, 0))

    return dumps


dumps = make_encoder()
