"""The spawner: a small single-threaded process that clones every container process for
the native runtime.

Forking the agent itself costs ~1.5 ms per container process here, and the agent then
pays copy-on-write faults on every page it touches until the child execs. The spawner is a
fresh interpreter that has imported only what a container process needs, so its clones
are cheap, and the agent is not slowed down while they set up.

Children are cloned with CLONE_PARENT: they are the agent's children, so the agent's
reaper sees their exits directly and they outlive a crash of the spawner.

Protocol over a Unix stream socket, msgpack objects one after the other:
  agent -> spawner  {"op": "init"|"exec", "plan": {...}, "fds": {name: index},
                     "pid_ns": None | "" (new) | path (join)}   + the fds (SCM_RIGHTS)
  spawner -> agent  {"pid": N} + its pidfd (SCM_RIGHTS), or {"error": "..."};
                    first of all {"ready": spawner pid}
The plan's "stdio" values are indices into the request's fds as well.
"""
from __future__ import annotations

import os
import sys

import _signal  # not `signal`/`socket`: their enums cost memory and start-up time
import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

MAX_FDS = 16
REFILL_AFTER = 0.01  # seconds without requests


class NetnsPool:
    """Network namespaces made ahead of need, while the spawner is idle: creating one costs
    ~0.5 ms here, joining one a few microseconds. A container asking for a new network
    namespace gets a fresh, never used one either way."""

    SIZE = 2

    def __init__(self, linux) -> None:
        self.linux = linux
        self.own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.fds: list[int] = []
        self.used = False  # only once containers want new network namespaces

    def take(self) -> int | None:
        self.used = True
        return self.fds.pop(0) if self.fds else None

    def refill(self, busy) -> None:
        while self.used and len(self.fds) < self.SIZE and not busy():
            self.linux.unshare(self.linux.CLONE_NEWNET)
            try:
                self.linux.loopback_up()
                self.fds.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            finally:
                self.linux.setns(self.own, self.linux.CLONE_NEWNET)


class Server:
    """The spawner's request loop."""

    def __init__(self, sock: socket.socket, mains: dict, netns: NetnsPool) -> None:
        import msgpack

        from gcs import fdpass, linux
        from gcs.containers.native.child import prepare_seccomp

        self.sock, self.mains, self.netns = sock, mains, netns
        self.msgpack, self.fdpass, self.linux = msgpack, fdpass, linux
        self.prepare_seccomp, self.filters = prepare_seccomp, {}  # compiled filters made loadable, per program
        # Requests may name a pid namespace for the new process; the spawner returns to its own.
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def serve(self) -> None:
        import select

        unpacker = self.msgpack.Unpacker(raw=False, strict_map_key=False)
        fds: list[int] = []
        self.sock.sendall(self.msgpack.packb({"ready": os.getpid()}))
        while True:
            data, received = self.fdpass.recv_fds(self.sock, 1 << 16, MAX_FDS)
            if not data:
                return  # the agent closed the channel: it is shutting down, or done with us
            fds.extend(received)
            unpacker.feed(data)
            for request in unpacker:
                pidfd = -1
                try:
                    pid, pidfd = self._spawn(request, fds)
                    reply = {"pid": pid}
                except Exception as err:  # noqa: BLE001 - reported to the agent, the loop goes on
                    reply = {"error": f"{type(err).__name__}: {err}"}
                finally:
                    for fd in fds:
                        os.close(fd)
                    fds = []
                self._reply(self.msgpack.packb(reply), pidfd)
            try:
                # After a quiet moment only: right after a reply the new process and the agent
                # are busy, and with few cores the refill would slow them down.
                self.netns.refill(lambda: bool(select.select([self.sock], [], [], REFILL_AFTER)[0]))
            except OSError:
                pass  # no spare namespaces then: each container makes its own

    def _reply(self, data: bytes, pidfd: int) -> None:
        """The reply, with the new process's pidfd alongside: the agent tracks it by that."""
        try:
            sent = self.fdpass.send_fds(self.sock, data, [pidfd] if pidfd >= 0 else [])
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        if sent < len(data):
            self.sock.sendall(data[sent:])

    def _spawn(self, request: dict, fds: list[int]) -> tuple[int, int]:
        linux = self.linux
        main = self.mains[request["op"]]
        named = {name: fds[index] for name, index in request["fds"].items()}
        plan = request["plan"]
        plan["stdio"] = {name: fds[index] for name, index in plan.get("stdio", {}).items()}
        self.prepare_seccomp(plan, self.filters)
        if request["op"] == "init" and ["network", None] in plan["namespaces"]:
            spare = self.netns.take()
            if spare is not None:
                fds.append(spare)  # closed here after the clone, like the agent's fds
                plan["namespaces"] = [["network", f"/proc/self/fd/{spare}"] if ns == ["network", None] else ns
                                      for ns in plan["namespaces"]]
                plan["loopback_up"] = True
        pid_ns = request.get("pid_ns")
        if pid_ns:
            target = os.open(pid_ns, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO there must not hang us
            try:
                linux.setns(target, linux.CLONE_NEWPID)
            finally:
                os.close(target)
        elif pid_ns is not None:
            linux.unshare(linux.CLONE_NEWPID)
        try:
            pid, pidfd = linux.clone_parent()
            if pid == 0:  # the new process: never returns
                try:
                    self.sock.close()
                    os.close(self.own_pid_ns)
                    main(plan, named)
                finally:
                    os._exit(1)
        finally:
            if pid_ns is not None:
                try:
                    linux.setns(self.own_pid_ns, linux.CLONE_NEWPID)  # only children change pid namespace
                except OSError:
                    os._exit(70)  # later clones would land in that namespace: let the agent start another
        return pid, pidfd


def _serve(sock: socket.socket) -> None:
    from gcs import linux
    from gcs.containers.native import child

    Server(sock, {"init": child.init_main, "exec": child.exec_main}, NetnsPool(linux)).serve()


def main() -> None:
    fd, agent = int(sys.argv[1]), int(sys.argv[2])
    from gcs.sitepaths import add_site_packages

    add_site_packages()
    # Dispositions the container processes inherit: defaults, nothing blocked (Python
    # ignores SIGPIPE and SIGXFSZ at start-up, and exec keeps ignored signals ignored).
    for signum in (_signal.SIGINT, _signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(signum, _signal.SIG_DFL)
    os.setsid()  # no terminal's signals
    import _prctl  # python-prctl's C layer

    _prctl.prctl(_prctl.PR_SET_PDEATHSIG, _signal.SIGKILL)
    if os.getppid() != agent:
        sys.exit(1)  # the agent died before pdeathsig was armed
    _serve(_socket.socket(fileno=fd))


if __name__ == "__main__":
    main()
