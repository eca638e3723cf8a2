"""A minimal synchronous host end for benchmarks: no reader thread, so a round trip
measures the agent and the socket, not thread hand-offs in the client."""
from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

from gcs.protocol.ids import NULL_CONTAINER_ID, RequestId

HEADER = struct.Struct("<IIQ")


class SyncBridge:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.fd = sock.fileno()
        self.seq = 0

    def _read_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = os.read(self.fd, n - len(buf))
            if not chunk:
                raise EOFError("bridge closed")
            buf += chunk
        return buf

    def call(self, ident: int, container_id: str = NULL_CONTAINER_ID, **fields: Any) -> dict[str, Any]:
        body = json.dumps({"ContainerId": container_id, "ActivityId": NULL_CONTAINER_ID, **fields},
                          separators=(",", ":")).encode() + b"\n"
        seq = self.seq
        self.seq += 1
        os.write(self.fd, HEADER.pack(ident, 16 + len(body), seq) + body)
        while True:
            ident_r, size, seq_r = HEADER.unpack(self._read_exact(16))
            reply = json.loads(self._read_exact(size - 16))
            if seq_r == seq and ident_r & 0xF0000000 == 0x20000000:
                if reply["Result"] != 0:
                    raise RuntimeError(reply.get("ErrorMessage"))
                return reply

    def negotiate(self) -> dict[str, Any]:
        return self.call(RequestId.NEGOTIATE_PROTOCOL, "", MinimumVersion=4, MaximumVersion=4)

    def exec(self, argv: list[str], **params: Any) -> int:
        pp = {"CommandArgs": argv, "WorkingDirectory": "/", "Environment": {"PATH": "/usr/bin:/bin"}, **params}
        relay = params.pop("_relay", {})
        return self.call(RequestId.EXECUTE_PROCESS, Settings={"ProcessParameters": json.dumps(pp),
                                                              "VsockStdioRelaySettings": relay})["ProcessId"]

    def wait(self, pid: int) -> int:
        return self.call(RequestId.WAIT_FOR_PROCESS, ProcessId=pid, TimeoutInMs=0xFFFFFFFF)["ExitCode"]
