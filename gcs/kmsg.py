"""Kernel log lines relayed into the agent's log (`-kmsgLogLevel`), as the Go GCS's
internal/guest/kmsg does: every /dev/kmsg record of priority <= the level (4, warning, by
default) becomes an info line "kmsg read" with the same fields.

Like the Go GCS it reads the ring buffer from its start, so boot warnings arrive too. UVM
only (gcs/uvmsetup.py): on another machine /dev/kmsg is that machine's kernel log.
"""
from __future__ import annotations

import os

from gcs import aio
from gcs.log import log

PRIORITIES = ("Emerg", "Alert", "Crit", "Err", "Warning", "Notice", "Info", "Debug")
RECORD_MAX = 1 << 17  # the Go GCS's buffer: a record is at most a few KiB in practice
BATCH = 64  # records per wake-up, so a full ring buffer never holds up a request


def parse(record: str) -> dict | None:
    """`prio,seq,usec,flags[,...];message` (continuation lines after the message are
    key=value pairs the Go GCS also ignores). None when it is not that shape."""
    prefix, sep, rest = record.partition(";")
    parts = prefix.split(",", 4)
    if not sep or len(parts) < 4:
        return None
    try:
        syslog, seq, usec = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    return {"priority": syslog & 7, "facility": syslog >> 3, "seq": seq,
            "timesincebootmicro": usec, "flags": parts[3], "message": rest.split("\n", 1)[0].strip()}


class KmsgRelay:
    def __init__(self, level: int, path: str = "/dev/kmsg") -> None:
        self.level = level
        self.path = path
        self.fd = -1

    def start(self) -> None:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        aio.get_loop().add_reader(self.fd, self._on_readable)

    def stop(self) -> None:
        if self.fd >= 0:
            aio.get_loop().forget_fd(self.fd)
            os.close(self.fd)
            self.fd = -1

    def _on_readable(self) -> None:
        for _ in range(BATCH):  # the loop calls again while more is readable
            try:
                data = os.read(self.fd, RECORD_MAX)
            except BlockingIOError:
                return
            except BrokenPipeError:  # records overwritten before we read them: skip to the next
                log.warning("kmsg entry overwritten; skipping entry")
                continue
            except OSError as err:
                log.error("kmsg read failure", error=err.strerror or str(err))
                self.stop()
                return
            if not data:
                self.stop()
                return
            self._relay(data.decode("utf-8", "replace"))

    def _relay(self, record: str) -> None:
        entry = parse(record)
        if entry is None:
            log.error("failed to parse kmsg entry", line=record[:512])
        elif entry["priority"] <= self.level:
            entry["priority"] = PRIORITIES[entry["priority"]]
            log.info("kmsg read", **entry)
