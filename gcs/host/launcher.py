"""Starting a local-mode agent for host tooling, tests and benchmarks.

A UVM directory holds the hybrid vsock sockets (`vsock_<port>`) and the agent's log. The
host listens on the bridge port before the agent starts, like hcsshim creates its
listeners before the VM boots.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Optional

from gcs.host.bridge_client import HostBridge
from gcs.host.processes import ProcessClient
from gcs.protocol.ids import BRIDGE_PORT
from vmbus.hybrid import host_listen, port_path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def agent_command(args: list[str]) -> list[str]:
    # -S: skip site's .pth processing (the agent adds its dependency paths itself).
    return [sys.executable, "-S", "-m", "gcs", *args]


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    return env


class BridgeHost:
    """What every kind of UVM host does with the agent's connections (`accept_bridge` is
    the kind's own)."""

    vsock_path: str
    bridge: Optional[HostBridge]
    client: Optional[ProcessClient]

    def accept_bridge(self, timeout: float) -> HostBridge:
        raise NotImplementedError

    def reconnect(self, timeout: float = 10.0, negotiate: bool = True) -> HostBridge:
        """Drop the bridge (gracefully: notifications already sent are read first) and take
        the agent's next connection: its redial, or a restarted agent's first dial (the
        agent keeps every process alive across a redial). The containers the host knows
        carry over."""
        known: set[str] = set()
        if self.bridge is not None:
            known = self.bridge.known_containers
            self.bridge.close(graceful=True)
        self.bridge = self.accept_bridge(timeout)
        self.bridge.known_containers |= known
        self.client = ProcessClient(self.bridge, self.vsock_path)
        if negotiate:
            self.bridge.negotiate()
        return self.bridge


class LocalUvm(BridgeHost):
    """A local-mode agent plus the host end of its bridge."""

    def __init__(self, directory: str, loglevel: str = "debug", bridge_stdio: bool = False,
                 extra_args: Optional[list[str]] = None) -> None:
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.vsock_path = os.path.join(self.dir, "vsock")
        self.log_path = os.path.join(self.dir, "gcs.log")
        self.loglevel = loglevel
        self.bridge_stdio = bridge_stdio
        self.extra_args = extra_args or []
        self.proc: Optional[subprocess.Popen] = None
        self.bridge: Optional[HostBridge] = None
        self.client: Optional[ProcessClient] = None
        self._listener: Optional[socket.socket] = None

    def start(self, timeout: float = 10.0, negotiate: bool = True) -> "LocalUvm":
        args = ["--local", "--exit-with-parent", "--transport", f"hybrid:{self.vsock_path}",
                "-loglevel", self.loglevel, *self.extra_args]
        log = open(self.log_path, "ab")
        try:
            if self.bridge_stdio:
                self.proc = subprocess.Popen(agent_command(args + ["--bridge-stdio"]), env=agent_env(),
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
                assert self.proc.stdin is not None and self.proc.stdout is not None
                self.bridge = HostBridge(self.proc.stdout.fileno(), self.proc.stdin.fileno(), self.proc)
            else:
                self._listener = host_listen(self.vsock_path, BRIDGE_PORT)
                self.proc = subprocess.Popen(agent_command(args), env=agent_env(),
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
                self.bridge = self.accept_bridge(timeout)
        finally:
            log.close()
        self.client = ProcessClient(self.bridge, self.vsock_path)
        if negotiate:
            self.bridge.negotiate()
        return self

    def accept_bridge(self, timeout: float = 10.0) -> HostBridge:
        """Accept the agent's (next) dial of the bridge port."""
        if self._listener is None:
            self._listener = host_listen(self.vsock_path, BRIDGE_PORT)
        self._listener.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn, _ = self._listener.accept()
                break
            except socket.timeout:
                raise TimeoutError(f"the agent did not connect within {timeout}s; see {self.log_path}")
            except InterruptedError:
                if time.monotonic() > deadline:
                    raise
        return HostBridge.over_socket(conn)

    @property
    def agent_pid(self) -> int:
        """The agent's pid as seen from here (the supervisor's child, pid 1 inside)."""
        assert self.proc is not None
        deadline = time.monotonic() + 5
        while True:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    kids = f.read().split()
                if kids:
                    return int(kids[0])
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("local-mode agent process not found")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(port_path(self.vsock_path, BRIDGE_PORT))
            except OSError:
                pass
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        return self.proc.returncode

    def __enter__(self) -> "LocalUvm":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
