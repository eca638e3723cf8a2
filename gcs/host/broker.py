"""The host side of a UVM as a small daemon: it owns the one bridge to the agent (as HCS
does on Windows) and lets any number of gcsctl commands share it at once.

Clients connect to `DIR/ctl.sock` and speak the bridge protocol itself. The broker answers
their NegotiateProtocol with the agent's own reply, forwards every other request with a
fresh sequence id and routes the reply back under the client's id, and copies container
notifications to every client. Stdio does not pass through here: clients listen on their
own hybrid vsock ports, which the agent dials directly.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
from typing import Any

from gcs.host.bridge_client import HostBridge
from gcs.host.launcher import LocalUvm
from gcs.protocol.ids import RequestId

HEADER = struct.Struct("<IIQ")


def ctl_path(uvm_dir: str) -> str:
    return os.path.join(uvm_dir, "ctl.sock")


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.alive = True

    def send(self, ident: int, seq: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            with self.lock:
                self.sock.sendall(HEADER.pack(ident, 16 + len(body), seq) + body)
        except OSError:
            self.alive = False


class Broker:
    def __init__(self, uvm: LocalUvm, negotiate_reply: dict[str, Any]) -> None:
        self.uvm = uvm
        assert uvm.bridge is not None
        self.upstream: HostBridge = uvm.bridge
        self.negotiate_reply = negotiate_reply
        self.clients: list[_Client] = []
        self.lock = threading.Lock()

    def serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._notifications, daemon=True).start()
        listener.settimeout(0.2)
        while not self.upstream.closed.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            sock.settimeout(None)
            client = _Client(sock)
            with self.lock:
                self.clients.append(client)
            threading.Thread(target=self._client_loop, args=(client,), daemon=True).start()

    def _client_loop(self, client: _Client) -> None:
        sock = client.sock
        try:
            while True:
                header = _recv_exact(sock, 16)
                ident, size, seq = HEADER.unpack(header)
                if size < 16:
                    break
                payload = _recv_exact(sock, size - 16)
                if ident == RequestId.NEGOTIATE_PROTOCOL:
                    client.send(0x20000000 | (ident & 0x0FFFFFFF), seq, self.negotiate_reply)
                    continue
                _, pending = self.upstream.start_request(ident, payload)
                threading.Thread(target=self._relay_reply, args=(client, ident, seq, pending), daemon=True).start()
        except (EOFError, OSError):
            pass
        finally:
            client.alive = False
            with self.lock:
                self.clients.remove(client)
            sock.close()

    def _relay_reply(self, client: _Client, ident: int, seq: int, pending: Any) -> None:
        try:
            reply = self.upstream.wait_reply(pending, None)
        except Exception as err:  # noqa: BLE001 - the bridge went away
            reply = {"Result": -2147467259, "ErrorMessage": f"bridge closed: {err}"}
        if client.alive:
            client.send(0x20000000 | (ident & 0x0FFFFFFF), seq, reply)

    def _notifications(self) -> None:
        while not self.upstream.closed.is_set():
            try:
                note = self.upstream.notifications.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
            with self.lock:
                clients = list(self.clients)
            for client in clients:
                client.send(0x30100101, 0, note)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def run(uvm_dir: str, loglevel: str = "info") -> int:
    """Start the agent, hold its bridge, serve clients until the agent goes away."""
    uvm = LocalUvm(uvm_dir, loglevel=loglevel)
    uvm.start(negotiate=False)
    assert uvm.bridge is not None
    reply = uvm.bridge.negotiate()
    path = ctl_path(uvm.dir)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: uvm.bridge.close() if uvm.bridge else None)
    print("ready", flush=True)
    try:
        Broker(uvm, reply).serve(listener)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        uvm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], *(sys.argv[2:3])))
