"""The native runtime, agent side: asks the spawner (spawner.py) for each container process
and talks to that process over two pipes (ready/error report, start signal).

A container process reports one JSON line on its error pipe if setup fails; the pipe is
close-on-exec, so EOF without data means its exec succeeded.
"""
from __future__ import annotations

import os
import _socket  # not `socket`: its enums cost memory and start-up time in a UVM
import sys
import time

import msgpack

from gcs import aio, fdpass
from gcs.log import log
from gcs.protocol import hresult as hr, jsoncodec
from gcs.containers.plans import InitPlan, ProcessPlan, pid_namespace
from gcs.runtime.reaper import Child, Reaper, exit_code

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


class InitHandle:
    def __init__(self, child: Child, start_w: int, err_r: int) -> None:
        self.child = child
        self.pid = child.pid
        self.start_w = start_w
        self.err_r = err_r

    def close(self) -> None:
        for fd in (self.start_w, self.err_r):
            if fd >= 0:
                aio.get_loop().forget_fd(fd)
                os.close(fd)
        self.start_w = self.err_r = -1


# How long a container process may take to set up (mounts, devices, identity) or to exec:
# a step that never ends (a hung mount, say) fails the request instead of holding it forever.
SETUP_TIMEOUT = 60.0


async def _read_all(fd: int, stop_at: bytes | None = None) -> bytes:
    """What the container process reports on its error pipe, up to EOF (or `stop_at`),
    within SETUP_TIMEOUT."""
    os.set_blocking(fd, False)
    data = b""

    async def read() -> bytes:
        nonlocal data
        while True:
            chunk = await aio.fd_read(fd, 4096)
            if not chunk:
                return data
            data += chunk
            if stop_at is not None and data.startswith(stop_at):
                return data

    try:
        return await aio.wait_for(read(), SETUP_TIMEOUT)
    except aio.TimeoutError_:
        raise hr.GcsError(hr.E_FAIL, f"the container process did not finish setting up within "
                                     f"{SETUP_TIMEOUT:.0f}s") from None


def _error_text(data: bytes) -> str:
    for line in data.splitlines():
        try:
            return jsoncodec.loads(line)["error"]
        except (ValueError, KeyError, TypeError):
            continue
    return data.decode("utf-8", "replace").strip() or "the container process exited during setup"


async def _kill_and_reap(child: Child) -> None:
    child.signal(9)
    await child.status


class Spawner:
    """The agent's end of the spawner (spawner.py): started on first use, started again if it
    died. msgpack over a Unix socket, fds alongside, one request at a time (the spawner is
    sequential anyway; a clone takes ~0.3 ms)."""

    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.sock: socket.socket | None = None
        self.pid = 0
        self.child: Child | None = None
        self._fds: list[int] = []  # pidfds received with replies not yet read
        self.lock = aio.Lock()
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def start(self) -> None:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-S", "-m", "gcs.containers.native.spawner", "3", str(os.getpid())]
            env = {"PYTHONPATH": PACKAGE_ROOT, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDWR, 0), (os.POSIX_SPAWN_DUP2, 0, 1),
                       (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)]
            pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions)
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock, self.pid = ours, pid
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.child = self.reaper.spawned(pid)
        self.child.status.add_done_callback(lambda f: self._exited(ours, pid, f.result()))

    def _exited(self, sock: socket.socket, pid: int, status: int) -> None:
        if self.sock is sock:
            log.warning("the container spawner exited; starting another on next use", pid=pid,
                        exit_code=exit_code(status))
            if not self.lock.locked():  # a request in flight sees EOF and drops the channel itself
                self._drop()

    def _drop(self) -> None:
        if self.sock is not None:
            aio.get_loop().forget_fd(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    async def _receive(self) -> dict:
        while True:
            for message in self.unpacker:
                return message
            while True:
                try:
                    data, fds = fdpass.recv_fds(self.sock, 1 << 16, 1)
                    break
                except (BlockingIOError, InterruptedError):
                    await aio.wait_readable(self.sock.fileno())
            self._fds += fds
            if not data:
                raise OSError("the container spawner closed its channel")
            self.unpacker.feed(data)

    async def _ensure_started(self) -> None:
        if self.sock is None:
            self.start()
            ready = await self._receive()
            if "ready" not in ready:
                raise OSError(f"unexpected greeting {ready!r}")

    async def prestart(self) -> None:
        async with self.lock:
            try:
                await self._ensure_started()
            except OSError as err:
                self._drop()
                log.warning("the container spawner did not start; trying again on first use", error=str(err))

    async def _send_first(self, data: bytes, fds: list[int]) -> int:
        """Start the spawner if needed and send the start of a request with its fds."""
        await self._ensure_started()
        while True:
            try:
                return fdpass.send_fds(self.sock, data, fds)
            except (BlockingIOError, InterruptedError):
                await aio.wait_writable(self.sock.fileno())

    async def spawn(self, op: str, plan: dict, fds: dict[str, int], stdio: dict[str, int],
                    pid_ns: str | None) -> Child:
        """Clone a container process running child.<op>_main; it is tracked from here on."""
        order = list(fds.values()) + list(stdio.values())
        index = {fd: i for i, fd in enumerate(order)}
        request = {"op": op, "plan": {**plan, "stdio": {k: index[fd] for k, fd in stdio.items()}},
                   "fds": {k: index[fd] for k, fd in fds.items()}, "pid_ns": pid_ns}
        data = msgpack.packb(request)
        async with self.lock:
            try:
                try:
                    sent = await self._send_first(data, order)
                except OSError:  # it died since the last request, which it had answered: again
                    self._drop()
                    sent = await self._send_first(data, order)
                await aio.sock_sendall(self.sock, data[sent:])
                reply = await self._receive()
            except OSError as err:
                self._drop()
                raise hr.GcsError(hr.E_FAIL, f"container spawner: {err.strerror or err}") from None
            except BaseException:
                self._drop()  # cancelled mid-request: its reply would answer the next request
                raise
            if "error" in reply:
                raise hr.GcsError(hr.E_FAIL, f"container setup failed: {reply['error']}")
            pidfd = self._fds.pop(0) if self._fds else -1
            return self.reaper.adopt(reply["pid"], pidfd)

    def stop(self) -> None:
        """At shutdown (the loop no longer runs): close the channel, the spawner exits."""
        pid = self.pid if self.sock is not None else 0
        child = self.child
        self._drop()
        deadline = time.monotonic() + 2
        while pid and child is not None:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                child.signal(9)
                deadline = float("inf")
            time.sleep(0.005)


class NativeRuntime:
    """The agent's own runtime (runtime_api.Runtime)."""

    name = "native"
    validates_specs = True
    uses_agent_cgroups = True

    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.spawner = Spawner(reaper)

    async def _spawn(self, op: str, plan: ProcessPlan, child_fds: list[int]) -> tuple[Child, int, int]:
        """A container process with its two pipes; returns (it, error pipe, start pipe), our
        ends. The child's ends and its stdio fds are closed here whatever happens."""
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        try:
            child = await self.spawner.spawn(op, plan.wire(), {"err": err_w, "start": start_r}, plan.stdio,
                                             pid_namespace(plan))
        except BaseException:
            os.close(err_r)
            os.close(start_w)
            raise
        finally:
            for fd in (err_w, start_r, *child_fds):
                os.close(fd)
        return child, err_r, start_w

    def adjust_spec(self, spec: dict) -> None:
        pass  # the agent's spec is the plan's source; nothing else reads config.json

    def prestart(self) -> None:
        """Start the spawner now, in the background (in a UVM, right after negotiation)."""
        aio.spawn(self.spawner.prestart(), "spawner-start")

    async def create(self, plan: InitPlan, child_fds: list[int], place=None) -> InitHandle:
        """Clone the init into its (new or joined) pid namespace and let it set everything
        up to the point of exec; it then waits for start(). `place(pid)` (cgroups) runs while
        the init sets up; it cannot exec before start() anyway."""
        child, err_r, start_w = await self._spawn("init", plan, child_fds)
        handle = InitHandle(child, start_w, err_r)
        if place is not None:
            try:
                place(child.pid)
            except BaseException:
                handle.close()
                await _kill_and_reap(child)
                raise
        try:
            ready = await _read_all(err_r, stop_at=b"R")
        except BaseException:
            handle.close()
            await _kill_and_reap(child)
            raise
        if ready != b"R":
            handle.close()
            await _kill_and_reap(child)
            raise hr.GcsError(hr.E_FAIL, f"container setup failed: {_error_text(ready)}")
        return handle

    async def start(self, handle: InitHandle) -> None:
        """Let init exec; raises with the child's message if the exec fails."""
        try:
            os.write(handle.start_w, b"S")
            aio.get_loop().forget_fd(handle.start_w)
            os.close(handle.start_w)
            handle.start_w = -1
            data = await _read_all(handle.err_r)  # EOF without data: exec succeeded (close-on-exec)
        except hr.GcsError:
            handle.child.signal(9)  # stuck before its exec: it never will
            raise
        finally:
            handle.close()
        if data:
            raise hr.GcsError(hr.E_FAIL, f"starting the container process failed: {_error_text(data)}")

    async def exec(self, plan: ProcessPlan, child_fds: list[int], place=None) -> Child:
        """Start a process in a running container. It joins the namespaces while
        `place(pid)` (cgroups) runs, and execs after."""
        child, err_r, start_w = await self._spawn("exec", plan, child_fds)
        try:
            if place is not None:
                place(child.pid)
            os.write(start_w, b"S")
        except BaseException:
            os.close(err_r)
            await _kill_and_reap(child)
            raise
        finally:
            os.close(start_w)
        try:
            data = await _read_all(err_r)
        except BaseException:
            child.signal(9)  # stuck joining the container: it will not exec now
            raise
        finally:
            aio.get_loop().forget_fd(err_r)
            os.close(err_r)
        if data:
            code = exit_code(await child.status)
            raise hr.GcsError(hr.E_FAIL, f"exec in the container failed (exit {code}): {_error_text(data)}")
        return child

    async def delete(self, cid: str) -> None:
        pass  # nothing kept per container: its processes were the agent's children

    def teardown(self) -> None:
        self.spawner.stop()
