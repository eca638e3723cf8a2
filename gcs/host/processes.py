"""Running processes through the bridge, host side: stdio listeners, exec, wait, signal,
resize (what hcsshim's internal/gcs process code does)."""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Optional

from gcs.host.bridge_client import HostBridge
from gcs.protocol.ids import NULL_CONTAINER_ID, RequestId
from vmbus.hybrid import host_listen, port_path

INFINITE = 0xFFFFFFFF
FIRST_STDIO_PORT = 0x40000001
ACCEPT_TIMEOUT = 30.0


class GuestProcess:
    def __init__(self, client: "ProcessClient", container_id: str, pid: int,
                 stdin: Optional[socket.socket], stdout: Optional[socket.socket],
                 stderr: Optional[socket.socket]) -> None:
        self.client = client
        self.container_id = container_id
        self.pid = pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr

    def wait(self, timeout_ms: int = INFINITE, rpc_timeout: Optional[float] = None) -> int:
        reply = self.client.bridge.call(RequestId.WAIT_FOR_PROCESS, self.container_id, timeout=rpc_timeout,
                                        ProcessId=self.pid, TimeoutInMs=timeout_ms)
        return reply["ExitCode"]

    def signal(self, signum: Optional[int]) -> None:
        fields: dict[str, Any] = {"ProcessId": self.pid}
        if signum is not None:  # None: a "kill", sent without Options like the host does
            fields["Options"] = {"Signal": signum}
        self.client.bridge.call(RequestId.SIGNAL_PROCESS, self.container_id, **fields)

    def kill(self) -> None:
        self.signal(None)

    def resize(self, height: int, width: int) -> None:
        self.client.bridge.call(RequestId.RESIZE_CONSOLE, self.container_id, ProcessId=self.pid,
                                Height=height, Width=width)

    def close_stdin(self) -> None:
        if self.stdin is not None:
            try:
                self.stdin.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def communicate(self, data: bytes = b"") -> tuple[bytes, bytes, int]:
        """Feed stdin, collect stdout/stderr to EOF, then wait for the exit code."""
        out: list[bytes] = []
        err: list[bytes] = []
        threads = []
        for sock, sink in ((self.stdout, out), (self.stderr, err)):
            if sock is not None:
                t = threading.Thread(target=_drain, args=(sock, sink), daemon=True)
                t.start()
                threads.append(t)
        if self.stdin is not None:
            try:
                if data:
                    self.stdin.sendall(data)
            except OSError:
                pass
            self.close_stdin()
        code = self.wait()
        for t in threads:
            t.join(10)
        self.close()
        return b"".join(out), b"".join(err), code

    def close(self) -> None:
        for sock in (self.stdin, self.stdout, self.stderr):
            if sock is not None:
                sock.close()


def _drain(sock: socket.socket, sink: list[bytes]) -> None:
    """Read to EOF, then close our side, as hcsshim's host does (the guest waits for it)."""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:
            return
        if not chunk:
            break
        sink.append(chunk)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class ProcessClient:
    """Exec and friends over one bridge connection; stdio over hybrid vsock at `stdio_path`."""

    def __init__(self, bridge: HostBridge, stdio_path: Optional[str], first_port: int = FIRST_STDIO_PORT) -> None:
        self.bridge = bridge
        self.stdio_path = stdio_path
        self._next_port = first_port
        self._lock = threading.Lock()

    def _alloc_port(self) -> int:
        with self._lock:
            port = self._next_port
            self._next_port += 1
            return port

    def exec(self, argv: list[str], *, env: Optional[dict[str, str]] = None, cwd: str = "/",
             stdin: bool = False, stdout: bool = False, stderr: bool = False, tty: bool = False,
             container_id: str = NULL_CONTAINER_ID, oci_process: Optional[dict[str, Any]] = None,
             command_line: Optional[str] = None, init_process: bool = False) -> GuestProcess:
        """A UVM process, an exec in a container (oci_process), or a container's init
        (init_process: no parameters but the pipes, as the host sends it)."""
        params: dict[str, Any] = {}
        if oci_process is not None:
            params["OciProcess"] = oci_process
        elif not init_process:
            if command_line is not None:
                params["CommandLine"] = command_line
            else:
                params["CommandArgs"] = argv
            params["WorkingDirectory"] = cwd
            params["Environment"] = env if env is not None else {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
            if tty:
                params["EmulateConsole"] = True
        relay: dict[str, int] = {}
        listeners: dict[str, socket.socket] = {}
        try:
            for name, wanted, key in (("stdin", stdin, "StdIn"), ("stdout", stdout, "StdOut"),
                                      ("stderr", stderr, "StdErr")):
                if not wanted:
                    continue
                if self.stdio_path is None:
                    raise ValueError("stdio needs a hybrid vsock path")
                port = self._alloc_port()
                listeners[name] = host_listen(self.stdio_path, port, backlog=1)
                relay[key] = port
                params[f"Create{key}Pipe"] = True
            reply = self.bridge.call(RequestId.EXECUTE_PROCESS, container_id, Settings={
                "ProcessParameters": json.dumps(params), "VsockStdioRelaySettings": relay})
            socks: dict[str, Optional[socket.socket]] = {"stdin": None, "stdout": None, "stderr": None}
            for name, listener in listeners.items():
                listener.settimeout(ACCEPT_TIMEOUT)
                conn, _ = listener.accept()
                conn.settimeout(None)
                socks[name] = conn
            return GuestProcess(self, container_id, reply["ProcessId"], socks["stdin"], socks["stdout"],
                                socks["stderr"])
        finally:
            for listener in listeners.values():
                listener.close()
            for key, port in relay.items():
                try:
                    os.unlink(port_path(self.stdio_path or "", port))
                except OSError:
                    pass

    def run(self, argv: list[str], data: bytes = b"", **kw: Any) -> tuple[bytes, bytes, int]:
        proc = self.exec(argv, stdin=bool(data), stdout=True, stderr=True, **kw)
        return proc.communicate(data)
