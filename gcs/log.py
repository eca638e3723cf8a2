"""Structured logs: one JSON object per line on stderr (logrus JSONFormatter shape).

The host parses the GCS's stderr (vsock port 109) as a stream of JSON objects with
`time` (RFC 3339, nanoseconds), `level` and `msg`; the first non-JSON byte makes it stop
reading logs. So nothing else may be written to this fd. Callers pass fields, never
whole environments or secrets: the helpers below summarise processes instead.
"""
from __future__ import annotations

import os
import time

from gcs.protocol.jsoncodec import make_encoder

TYPE_CHECKING = False  # typing costs ~10 ms of start-up; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Any

_encode = make_encoder(default=str, allow_nan=True)
LEVELS = {"trace": 0, "debug": 1, "info": 2, "warning": 3, "warn": 3, "error": 4, "fatal": 5, "panic": 6}


class Logger:
    def __init__(self, fd: int = 2, level: str = "info") -> None:
        self.fd = fd
        self.threshold = LEVELS.get(level.lower(), 2)

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.threshold

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        ns = time.time_ns()
        sec, frac = divmod(ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"
        record = {"time": stamp, "level": "warning" if level == "warn" else level, "msg": msg}
        for key, value in fields.items():
            # logrus keeps the three standard keys for itself; clashing fields get a prefix.
            record["fields." + key if key in record else key] = value
        line = _encode(record) + "\n"
        try:
            os.write(self.fd, line.encode())
        except OSError:
            pass  # a broken log stream must never take the agent down

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log("warning", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)


log = Logger()


def configure(level: str = "info", fd: int = 2) -> None:
    log.fd = fd
    log.threshold = LEVELS.get(level.lower(), 2)


def describe_command(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """What may be logged about a command: its program and sizes, not its arguments or env."""
    fields: dict[str, Any] = {"program": argv[0] if argv else "", "argc": len(argv)}
    if env is not None:
        fields["env_count"] = len(env)
    return fields
