"""The host end of the bridge: sends requests, matches replies by sequence id, collects
notifications, and checks every guest message the way hcsshim's host does.

Blocking API with a reader thread: host tooling and tests, not the agent.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import struct
import threading
from typing import Any, Optional

from gcs.host import strict
from gcs.protocol.ids import NULL_CONTAINER_ID, RequestId, ZERO_GUID

HEADER = struct.Struct("<IIQ")
TYPE_RESPONSE = 0x20000000
TYPE_NOTIFICATION = 0x30000000


def counters(guest_stacks: str) -> dict[str, int]:
    """The "name: N" lines of the agent's DumpStacks text: what it holds (containers,
    processes, fds, network records...), for checks that nothing was left."""
    values = {}
    for line in guest_stacks.splitlines():
        key, sep, value = line.partition(": ")
        if sep and value.strip().isdigit():
            values[key.strip()] = int(value)
    return values


class RpcError(Exception):
    def __init__(self, result: int, message: str, reply: dict[str, Any]) -> None:
        super().__init__(message or f"HRESULT 0x{result & 0xFFFFFFFF:08x}")
        self.hresult = result & 0xFFFFFFFF
        self.reply = reply


class BridgeClosed(Exception):
    pass


class _Pending:
    __slots__ = ("event", "reply", "ident")

    def __init__(self, ident: int) -> None:
        self.event = threading.Event()
        self.reply: Optional[dict[str, Any]] = None
        self.ident = ident


class HostBridge:
    def __init__(self, read_fd: int, write_fd: int, owner: Any = None) -> None:
        self._rfd, self._wfd, self._owner = read_fd, write_fd, owner
        self._seq = 0
        self._lock = threading.Lock()
        self._wlock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self.notifications: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.violations: list[str] = []
        self.known_containers: set[str] = set()
        self.closed = threading.Event()
        self.close_reason = ""
        self._reader = threading.Thread(target=self._read_loop, name="bridge-reader", daemon=True)
        self._reader.start()

    @classmethod
    def over_socket(cls, sock: socket.socket) -> "HostBridge":
        sock.setblocking(True)
        return cls(sock.fileno(), sock.fileno(), sock)

    # --- sending ------------------------------------------------------------------------
    def next_seq(self) -> int:
        with self._lock:
            seq = self._seq
            self._seq += 1
            return seq

    def send_frame(self, ident: int, seq: int, payload: bytes) -> None:
        data = HEADER.pack(ident, 16 + len(payload), seq) + payload
        self.send_bytes(data)

    def send_bytes(self, data: bytes) -> None:
        with self._wlock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._wfd, view):]

    def start_request(self, ident: int, payload: bytes | dict[str, Any]) -> tuple[int, _Pending]:
        if isinstance(payload, dict):
            # Like the host's json.Encoder: compact, trailing newline counted in the size.
            payload = (json.dumps(payload, separators=(",", ":")) + "\n").encode()
        seq = self.next_seq()
        pending = _Pending(ident)
        with self._lock:
            # Checked under the lock the reader's final sweep takes: a request registered
            # after that sweep would wait for a reply forever.
            if self.closed.is_set():
                raise BridgeClosed(self.close_reason or "bridge closed")
            self._pending[seq] = pending
        self.send_frame(ident, seq, payload)
        return seq, pending

    def wait_reply(self, pending: _Pending, timeout: Optional[float] = 30.0) -> dict[str, Any]:
        if not pending.event.wait(timeout):
            raise TimeoutError("no reply from the guest")
        if pending.reply is None:
            raise BridgeClosed(self.close_reason or "bridge closed")
        return pending.reply

    def call_raw(self, ident: int, payload: bytes | dict[str, Any], timeout: Optional[float] = 30.0) -> dict[str, Any]:
        _, pending = self.start_request(ident, payload)
        return self.wait_reply(pending, timeout)

    def call(self, ident: int, container_id: str = NULL_CONTAINER_ID, timeout: Optional[float] = 30.0,
             **fields: Any) -> dict[str, Any]:
        payload = {"ContainerId": container_id, "ActivityId": ZERO_GUID, **fields}
        reply = self.call_raw(ident, payload, timeout)
        if reply.get("Result", 0) != 0:
            raise RpcError(reply["Result"], reply.get("ErrorMessage", ""), reply)
        return reply

    def negotiate(self) -> dict[str, Any]:
        reply = self.call(RequestId.NEGOTIATE_PROTOCOL, container_id="", MinimumVersion=4, MaximumVersion=4)
        caps = reply.get("Capabilities") or {}
        if reply.get("Version") != 4 or str(caps.get("RuntimeOsType", "")).lower() != "linux" \
                or "GuestDefinedCapabilities" not in caps:
            raise RpcError(0x80004005, f"unexpected negotiate reply {reply}", reply)
        return reply

    # --- receiving ----------------------------------------------------------------------
    def _read_exact(self, n: int) -> bytes:
        chunks, need = [], n
        while need:
            chunk = os.read(self._rfd, need)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            need -= len(chunk)
        return b"".join(chunks)

    def _read_loop(self) -> None:
        try:
            while True:
                ident, size, seq = HEADER.unpack(self._read_exact(16))
                if size < 16 or size > strict.HOST_MAX_MESSAGE:
                    raise ValueError(f"invalid message size {size}")
                payload = json.loads(self._read_exact(size - 16))
                kind = ident & 0xF0000000
                if kind == TYPE_RESPONSE:
                    with self._lock:
                        pending = self._pending.pop(seq, None)
                    if pending is None:
                        raise ValueError(f"unknown rpc response id {seq}")
                    self.violations += strict.check_reply(size, payload)
                    pending.reply = payload
                    pending.event.set()
                elif ident == 0x30100101:
                    self.violations += strict.check_notification(size, payload, self.known_containers)
                    self.known_containers.discard(payload.get("ContainerId"))
                    self.notifications.put(payload)
                else:
                    raise ValueError(f"unexpected message type 0x{ident:08x}")
        except (EOFError, OSError) as err:
            self.close_reason = f"bridge closed: {err!r}"
        except ValueError as err:
            # What the real host does: a protocol violation kills the bridge.
            self.violations.append(str(err))
            self.close_reason = f"protocol violation: {err}"
        finally:
            self.closed.set()
            with self._lock:
                pending_all, self._pending = list(self._pending.values()), {}
            for pending in pending_all:
                pending.event.set()

    def close(self, graceful: bool = False) -> None:
        """Abruptly (what the guest sent and we had not read is lost), or gracefully over a
        socket: we stop sending and read on until the guest, seeing our EOF, closes too."""
        if isinstance(self._owner, socket.socket):
            try:
                if graceful:
                    self._owner.shutdown(socket.SHUT_WR)
                    self._reader.join(5)
                self._owner.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._owner.close()
        elif getattr(self._owner, "stdin", None) is not None:
            self._owner.stdin.close()  # a child agent on stdio: EOF makes it exit, ending our reader
        else:
            for fd in {self._rfd, self._wfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._reader.join(5)
