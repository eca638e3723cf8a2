"""The host side of a UVM as a small daemon: it owns the one bridge to the agent (as HCS
does on Windows) and lets any number of gcsctl commands share it at once.

Clients connect to `DIR/ctl.sock` and speak the bridge protocol itself. The broker answers
their NegotiateProtocol with the agent's own reply, forwards every other request with a
fresh sequence id and routes the reply back under the client's id, and copies container
notifications to every client. Stdio does not pass through here: clients listen on their
own hybrid vsock ports, which the agent dials directly.

For a QEMU UVM the broker also owns the VM: it hot-plugs devices for its clients
(`DIR/devices.sock`, one JSON object per line each way), takes the agent's new connection
when init restarted a crashed agent, and powers the VM off when it is asked to stop.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from gcs.host.bridge_client import BridgeClosed, HostBridge
from gcs.protocol.ids import RequestId

HEADER = struct.Struct("<IIQ")


def ctl_path(uvm_dir: str) -> str:
    return os.path.join(uvm_dir, "ctl.sock")


def devices_path(uvm_dir: str) -> str:
    return os.path.join(uvm_dir, "devices.sock")


def state_path(uvm_dir: str) -> str:
    return os.path.join(uvm_dir, "uvm.json")


def log(msg: str, **fields: Any) -> None:
    """The broker's own log (broker.log): one JSON object per line."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "msg": msg, **fields}
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()


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
    def __init__(self, uvm: Any, negotiate_reply: dict[str, Any]) -> None:
        self.uvm = uvm
        assert uvm.bridge is not None
        self.upstream: HostBridge = uvm.bridge
        self.negotiate_reply = negotiate_reply
        self.clients: list[_Client] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.reconnects = 0

    def serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._notifications, daemon=True).start()
        listener.settimeout(0.2)
        while not self.stopping.is_set():
            if self.upstream.closed.is_set() and not self._take_new_agent():
                return
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            sock.settimeout(None)
            client = _Client(sock)
            with self.lock:
                self.clients.append(client)
            threading.Thread(target=self._client_loop, args=(client,), daemon=True).start()

    def _take_new_agent(self) -> bool:
        """The bridge dropped. A local agent is gone for good; in a VM, init restarts a crashed
        agent and it dials again: take that connection and carry on."""
        reconnect = getattr(self.uvm, "reconnect", None)
        if reconnect is None or self.stopping.is_set() or not _vm_running(self.uvm):
            return False
        log("bridge closed; waiting for the agent to connect again", reason=self.upstream.close_reason)
        try:
            self.upstream = reconnect(timeout=120.0)
        except Exception as err:  # noqa: BLE001 - the VM went away or the agent never came back
            log("the agent did not come back", error=str(err))
            return False
        self.reconnects += 1
        log("agent reconnected", reconnects=self.reconnects)
        return True

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
                upstream = self._live_upstream()
                try:
                    _, pending = upstream.start_request(ident, payload)
                except (BridgeClosed, OSError) as err:  # it dropped meanwhile: the client hears so
                    client.send(0x20000000 | (ident & 0x0FFFFFFF), seq,
                                {"Result": -2147467259, "ErrorMessage": f"bridge closed: {err}"})
                    continue
                threading.Thread(target=self._relay_reply, args=(client, upstream, ident, seq, pending),
                                 daemon=True).start()
        except (EOFError, OSError):
            pass
        finally:
            client.alive = False
            with self.lock:
                self.clients.remove(client)
            sock.close()

    def _live_upstream(self) -> HostBridge:
        """The agent's bridge; while it is down and the agent may come back (serve() is taking
        its new connection), wait for that rather than send into the closed one."""
        deadline = time.monotonic() + 130.0
        while (self.upstream.closed.is_set() and not self.stopping.is_set() and _vm_running(self.uvm)
               and getattr(self.uvm, "reconnect", None) is not None and time.monotonic() < deadline):
            time.sleep(0.05)
        return self.upstream

    def _relay_reply(self, client: _Client, upstream: HostBridge, ident: int, seq: int, pending: Any) -> None:
        try:
            reply = upstream.wait_reply(pending, None)
        except Exception as err:  # noqa: BLE001 - the bridge went away
            reply = {"Result": -2147467259, "ErrorMessage": f"bridge closed: {err}"}
        if client.alive:
            client.send(0x20000000 | (ident & 0x0FFFFFFF), seq, reply)

    def _notifications(self) -> None:
        while not self.stopping.is_set():
            try:
                note = self.upstream.notifications.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
            with self.lock:
                clients = list(self.clients)
            for client in clients:
                client.send(0x30100101, 0, note)


def _vm_running(uvm: Any) -> bool:
    proc = getattr(uvm, "proc", None)
    return proc is not None and proc.poll() is None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


# --- devices.sock: hot-plug for clients ------------------------------------------------------
class DeviceService:
    """What HCS does for the shim: plug devices into the VM. A pmem device is plugged only
    when the previous one has settled (its VPMemDevice Add came back; the client says so, or
    its connection ends): the guest numbers pmem devices in probe order."""

    SETTLE_TIMEOUT = 120.0

    def __init__(self, uvm: Any, report: Any = None) -> None:
        self.uvm = uvm
        self.pmem_turn = threading.Lock()
        self.log = report or log

    def serve(self, listener: socket.socket, stopping: threading.Event) -> None:
        listener.settimeout(0.2)
        while not stopping.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            threading.Thread(target=self._serve_client, args=(sock,), daemon=True).start()

    def _serve_client(self, sock: socket.socket) -> None:
        holding = [False]
        try:
            reader = sock.makefile("rb")
            for line in reader:
                try:
                    request = json.loads(line)
                    reply = self.handle(request, holding)
                except Exception as err:  # noqa: BLE001 - every request gets an answer
                    reply = {"error": str(err)}
                sock.sendall((json.dumps(reply) + "\n").encode())
        except OSError:
            pass
        finally:
            if holding[0]:
                self.pmem_turn.release()
            sock.close()

    def handle(self, request: dict[str, Any], holding: list[bool]) -> dict[str, Any]:
        hotplug = self.uvm.hotplug
        op = request.get("op")
        if op == "pmem-add":
            if holding[0]:
                raise ValueError("settle the previous pmem device first (pmem-settled)")
            if not self.pmem_turn.acquire(timeout=self.SETTLE_TIMEOUT):
                raise TimeoutError("another client's pmem device has not settled")
            holding[0] = True
            try:
                number = hotplug.add_pmem(request["image"])
            except BaseException:
                holding[0] = False
                self.pmem_turn.release()
                raise
            self.log("pmem device plugged", device_number=number, image=request["image"])
            return {"device_number": number}
        if op == "pmem-settled":
            if holding[0]:
                holding[0] = False
                self.pmem_turn.release()
            return {}
        if op == "scsi-add":
            disk = hotplug.add_scsi(request["image"], bool(request.get("read_only")),
                                    int(request.get("controller", 0)), request.get("lun"))
            self.log("SCSI disk plugged", controller=disk.controller, lun=disk.lun, image=disk.image)
            return {"controller": disk.controller, "lun": disk.lun}
        if op == "scsi-remove":
            hotplug.remove_scsi(int(request["controller"]), int(request["lun"]),
                                float(request.get("timeout", 30.0)))
            self.log("SCSI disk unplugged", controller=request["controller"], lun=request["lun"])
            return {}
        if op == "list":
            return {"pmem": {n: s.image for n, s in hotplug.pmem.items()},
                    "scsi": [[d.controller, d.lun, d.image, d.read_only] for d in hotplug.scsi.values()]}
        if op == "quit":
            threading.Thread(target=self.uvm.stop, daemon=True).start()
            return {}
        raise ValueError(f"unknown op {op!r}")


class InProcessDeviceClient:
    """A DeviceClient without the broker, for a UVM held in this process (demo, bench,
    tests): the same calls, the same errors."""

    def __init__(self, uvm: Any, report: Any = None) -> None:
        self.service = DeviceService(uvm, report)
        self.holding = [False]

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        try:
            return self.service.handle({"op": op, **args}, self.holding)
        except Exception as err:  # noqa: BLE001 - DeviceClient raises RuntimeError for error replies
            raise RuntimeError(str(err)) from None

    def close(self) -> None:
        if self.holding[0]:
            self.holding[0] = False
            self.service.pmem_turn.release()


class DeviceClient:
    """gcsctl's end of devices.sock."""

    def __init__(self, uvm_dir: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(devices_path(uvm_dir))
        except OSError:
            self.sock.close()
            raise SystemExit(f"gcsctl: no QEMU UVM at {uvm_dir} (start one with 'gcsctl --uvm {uvm_dir} up')") from None
        self.reader = self.sock.makefile("rb")

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.sock.sendall((json.dumps({"op": op, **args}) + "\n").encode())
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the UVM's broker went away")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


# --- the daemon -------------------------------------------------------------------------------
def _listen_unix(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    listener.listen(16)
    return listener


def _write_state(uvm_dir: str, state: dict[str, Any]) -> None:
    with open(state_path(uvm_dir) + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(state_path(uvm_dir) + ".tmp", state_path(uvm_dir))


def run(uvm_dir: str, options: dict[str, Any]) -> int:
    """Start the UVM (local agent or QEMU), hold its bridge, serve clients until it ends.
    Prints `ready` (or `failed: reason`) on stdout once, for the gcsctl that started us."""
    mode = options.get("mode", "local")
    loglevel = options.get("loglevel", "info")
    if mode == "qemu":
        from gcs.host.qemu import QemuUvm
        uvm: Any = QemuUvm(uvm_dir, image_dir=options.get("image") or None or _default_image(),
                           memory_mb=int(options.get("memory_mb", 512)), cpus=int(options.get("cpus", 1)),
                           accel=options.get("accel", "auto"), loglevel=loglevel,
                           bridge=not options.get("external"))
    else:
        from gcs.host.launcher import LocalUvm
        uvm = LocalUvm(uvm_dir, loglevel=loglevel)
    stopping = threading.Event()

    def on_term(*_: object) -> None:
        stopping.set()
        threading.Thread(target=uvm.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        uvm.start(negotiate=False)
        reply = uvm.bridge.negotiate() if uvm.bridge is not None else None
    except Exception as err:  # noqa: BLE001 - reported to the starting gcsctl
        print(f"failed: {err}", flush=True)
        uvm.stop()
        return 1
    listeners = []
    state = {"mode": mode, "broker_pid": os.getpid(), "external": bool(options.get("external")),
             "accel": getattr(uvm, "accel_used", None), "qemu_pid": getattr(getattr(uvm, "proc", None), "pid", None),
             "timings": getattr(uvm, "timings", {})}
    _write_state(uvm_dir, state)
    broker = Broker(uvm, reply) if reply is not None else None
    if mode == "qemu":
        devices = DeviceService(uvm)
        listener = _listen_unix(devices_path(uvm.dir))
        listeners.append(listener)
        threading.Thread(target=devices.serve, args=(listener, stopping), daemon=True).start()
    if broker is not None:
        listeners.append(_listen_unix(ctl_path(uvm.dir)))
        broker.stopping = stopping
    print("ready", flush=True)
    log("UVM up", **state)
    try:
        if broker is not None:
            broker.serve(listeners[-1])
        else:
            while not stopping.is_set() and _vm_running(uvm):
                time.sleep(0.2)
    finally:
        stopping.set()
        for listener in listeners:
            listener.close()
        for path in (ctl_path(uvm.dir), devices_path(uvm.dir)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        code = uvm.stop()
        log("UVM down", exit=code)
    return 0


def _default_image() -> str:
    from gcs.host.qemu import IMAGE_DIR
    return IMAGE_DIR


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
