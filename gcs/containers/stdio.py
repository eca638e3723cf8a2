"""Both ends of a container process's stdio: pipes, or a pty made inside the container whose
master comes back to the agent (protocol.md 5)."""
from __future__ import annotations

import os
import _socket  # not `socket`: its enums cost memory and start-up time in a UVM

from gcs import aio
from gcs.protocol import hresult as hr
from gcs.stdio.connect import StdioConnections
from gcs.stdio.pipes import PipeRelay
from gcs.stdio.relay import TtyRelay

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


class ChildStdio:
    """Both ends of a process's stdio: the child's fds and the agent's."""

    def __init__(self, terminal: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.master = -1
        self.console: socket.socket | None = None
        self.child_fds: list[int] = []
        self.agent: dict[str, int | None] = {"stdin": None, "stdout": None, "stderr": None}
        self.plan: dict = {}
        if terminal:
            # The pty is made inside the container (its devpts); the master comes back here.
            self.console, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
            self.child_fds.append(child.detach())
            self.plan = {"console_socket": self.child_fds[0]}
            return
        for name, wanted in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
            if not wanted:
                continue
            r, w = os.pipe2(os.O_CLOEXEC)
            child, agent = (r, w) if name == "stdin" else (w, r)
            self.child_fds.append(child)
            self.agent[name] = agent
            self.plan[name] = child

    async def receive_master(self) -> None:
        """Take the pty master the container process sent (it did so before reporting)."""
        if self.console is None:
            return
        sock, self.console = self.console, None
        fds = await aio.sock_recv_fds(sock)
        if not fds:
            raise hr.GcsError(hr.E_FAIL, "the container process sent no pty")
        self.master = fds[0]
        os.set_blocking(self.master, False)

    def relay(self, conns: StdioConnections):
        if self.master >= 0:
            return TtyRelay(self.master, conns)
        ends = []
        for name, sock in (("stdin", conns.stdin), ("stdout", conns.stdout), ("stderr", conns.stderr)):
            fd = self.agent[name]
            if fd is not None and sock is None:
                os.close(fd)  # not requested: stdin reads EOF, output writes get EPIPE
                fd = None
            ends.append(fd)
        return PipeRelay(ends[0], ends[1], ends[2], conns)

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
            self.console = None
        for fd in [self.master, *self.agent.values()]:
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = -1
        self.agent = {"stdin": None, "stdout": None, "stderr": None}
