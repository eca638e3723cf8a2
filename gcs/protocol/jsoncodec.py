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

# The deepest nesting of arrays and objects `loads` accepts (Go's encoding/json: 10000). Here the
# C scanner and encoder recurse once per level, and a Python walk over the result (copying or
# re-encoding a spec) up to ~5 frames per level, all against the one recursion limit (1000 by
# default, which the caller's own frames, ~100 in the agent, share). 128 keeps every one of them
# far from it, whatever the stack depth of the caller; hcsshim's documents nest under 15 deep.
MAX_DEPTH = 128


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
    """One JSON value; ValueError (json.JSONDecodeError where the C scanner raises) if not,
    or if it nests deeper than MAX_DEPTH."""
    if text.count("[") + text.count("{") > MAX_DEPTH:  # C-level counts: the common request stops here
        check_depth(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a value at character {stop.value}") from None
    except RecursionError:
        # Unreachable after check_depth unless the caller's stack is already nearly full.
        raise ValueError("nesting too deep for the current stack") from None
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


# Structure only: '{' and '}' count as '[' and ']', quotes stay to find strings, all else goes.
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')
_PEEL_PASSES = 4  # a real document's brackets are mostly within a few levels of the innermost


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """ValueError if arrays/objects outside strings nest deeper than `limit`.

    All in C-level bytes operations but the last step: escapes go (a backslash pair, then an
    escaped quote), then every byte but quotes and brackets; brackets inside strings go with
    the strings; then empty pairs are peeled (each pass lowers the depth by one) and what is
    left is walked, stopping as soon as it passes the limit. Where the text is not JSON, the
    depth up to its first error (the scanner's) is still counted in full.
    """
    data = text.encode("utf-8", "surrogatepass")
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = data.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")  # strings without brackets
    if b'"' in marks:
        marks = b"".join(marks.split(b'"')[::2])  # strings with brackets
    if marks.count(b"[") <= limit:
        return
    peeled = 0
    while peeled < _PEEL_PASSES:
        shorter = marks.replace(b"[]", b"")
        if len(shorter) == len(marks):
            break
        marks, peeled = shorter, peeled + 1
    if _max_depth(marks, limit - peeled) > limit - peeled:
        raise ValueError(f"exceeded the maximum nesting depth of {limit}")


def _max_depth(marks: bytes, stop: int) -> int:
    """The deepest prefix of '[' and ']' marks, or the first depth past `stop`."""
    depth = deepest = 0
    for mark in marks:
        if mark == 0x5B:  # '['
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    break
        else:
            depth -= 1
    return deepest


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
