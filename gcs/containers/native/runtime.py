"""The native runtime, agent side: asks the spawner (spawner.py) for each container process
and talks to that process over two pipes (ready/error report, start signal).

A container process reports one JSON line on its error pipe if setup fails; the pipe is
close-on-exec, so EOF without data means its exec succeeded.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

import msgpack

from gcs import aio
from gcs.containers.ocispec import NAMESPACE_FILES
from gcs.log import log
from gcs.protocol import hresult as hr
from gcs.runtime.reaper import Reaper, exit_code

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class InitHandle:
    def __init__(self, pid: int, start_w: int, err_r: int, status: aio.Future) -> None:
        self.pid = pid
        self.status = status  # the reaper's future for this pid: keep it, it resolves only once
        self.start_w = start_w
        self.err_r = err_r

    def close(self) -> None:
        for fd in (self.start_w, self.err_r):
            if fd >= 0:
                aio.get_loop().forget_fd(fd)
                os.close(fd)
        self.start_w = self.err_r = -1


async def _read_all(fd: int, stop_at: bytes | None = None) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while True:
        chunk = await aio.fd_read(fd, 4096)
        if not chunk:
            return data
        data += chunk
        if stop_at is not None and data.startswith(stop_at):
            return data


def _error_text(data: bytes) -> str:
    for line in data.splitlines():
        try:
            return json.loads(line)["error"]
        except (ValueError, KeyError, TypeError):
            continue
    return data.decode("utf-8", "replace").strip() or "the container process exited during setup"


async def _kill_and_reap(pid: int, status: aio.Future) -> None:
    if not status.done():
        os.kill(pid, 9)
    await status


class Channel:
    """Requests to a process that clones container processes (the spawner, or a container's
    exec helper): msgpack over a Unix socket, fds alongside, one request at a time."""

    what = "container spawner"

    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.sock: socket.socket | None = None
        self.pid = 0
        self.status: aio.Future | None = None  # the reaper's future for pid
        self.lock = aio.Lock()
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def attach(self, sock: socket.socket, pid: int, status: aio.Future) -> None:
        sock.setblocking(False)
        self.sock, self.pid, self.status = sock, pid, status
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        status.add_done_callback(lambda f: self._exited(sock, pid, f.result()))

    def _exited(self, sock: socket.socket, pid: int, status: int) -> None:
        if self.sock is sock:
            log.warning(f"the {self.what} exited", pid=pid, exit_code=exit_code(status))
            if not self.lock.locked():  # a request in flight sees EOF and drops the channel itself
                self.drop()

    def drop(self) -> None:
        if self.sock is not None:
            aio.get_loop().forget_fd(self.sock.fileno())
            self.sock.close()
            self.sock = None

    async def receive(self) -> dict:
        while True:
            for message in self.unpacker:
                return message
            data = await aio.sock_recv(self.sock, 1 << 16)
            if not data:
                raise OSError(f"the {self.what} closed its channel")
            self.unpacker.feed(data)

    async def _send(self, data: bytes, fds: list[int]) -> None:
        while True:
            try:
                sent = socket.send_fds(self.sock, [data], fds)
                break
            except (BlockingIOError, InterruptedError):
                await aio.wait_writable(self.sock.fileno())
        await aio.sock_sendall(self.sock, data[sent:])

    async def spawn(self, op: str, plan: dict, fds: dict[str, int], stdio: dict[str, int],
                    pid_ns: str | None = None) -> int:
        """Clone a process running <op>_main (see spawner.py); returns its pid."""
        order = list(fds.values()) + list(stdio.values())
        index = {fd: i for i, fd in enumerate(order)}
        request = {"op": op, "plan": {**plan, "stdio": {k: index[fd] for k, fd in stdio.items()}},
                   "fds": {k: index[fd] for k, fd in fds.items()}, "pid_ns": pid_ns}
        data = msgpack.packb(request)
        async with self.lock:
            try:
                await self._ensure_and_send(data, order)
                reply = await self.receive()
            except OSError as err:
                self.drop()
                raise hr.GcsError(hr.E_FAIL, f"{self.what}: {err.strerror or err}") from None
        if "error" in reply:
            raise hr.GcsError(hr.E_FAIL, f"container setup failed: {reply['error']}")
        return reply["pid"]

    async def _ensure_and_send(self, data: bytes, fds: list[int]) -> None:
        if self.sock is None:
            raise OSError(f"the {self.what} is gone")
        await self._send(data, fds)


class Spawner(Channel):
    """The spawner process: started on first use, started again if it died."""

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-S", "-m", "gcs.containers.native.spawner", "3", str(os.getpid())]
            env = {"PYTHONPATH": PACKAGE_ROOT, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDWR, 0), (os.POSIX_SPAWN_DUP2, 0, 1),
                       (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)]
            pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions)
        finally:
            theirs.close()
        self.attach(ours, pid, self.reaper.watch(pid))

    async def _ensure_and_send(self, data: bytes, fds: list[int]) -> None:
        for attempt in (1, 2):
            try:
                if self.sock is None:
                    self.start()
                    ready = await self.receive()
                    if "ready" not in ready:
                        raise OSError(f"unexpected greeting {ready!r}")
                await self._send(data, fds)
                return
            except OSError:
                self.drop()
                if attempt == 2:  # else: it died since the last request, which it had answered
                    raise

    def stop(self) -> None:
        """At shutdown (the loop no longer runs): close the channel, the spawner exits."""
        pid = self.pid if self.sock is not None else 0
        self.drop()
        deadline = time.monotonic() + 2
        while pid:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                deadline = float("inf")
            time.sleep(0.005)


class ExecHelper(Channel):
    """A container's exec helper (spawner.helper_main): exec processes are cloned inside the
    container's namespaces and cgroups, so an exec costs no setns and one cgroup join."""

    what = "exec helper"
    ready = False  # greeted: takes requests

    def close(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        self.drop()


class NativeRuntime:
    name = "native"

    def __init__(self, reaper: Reaper) -> None:
        self.reaper = reaper
        self.spawner = Spawner(reaper)
        self.helpers: dict[str, ExecHelper] = {}
        self.helper_plans: dict[str, tuple[int, dict]] = {}  # made at a container's first exec

    def state(self) -> dict[str, int]:
        return {"exec_helpers": sum(1 for h in self.helpers.values() if h.ready and h.sock is not None)}

    @property
    def helper_pids(self) -> set[int]:
        return {h.pid for h in self.helpers.values() if h.pid}

    async def _start_helper(self, cid: str, init_pid: int, cgroups: dict) -> None:
        """In the background: an exec helper in a running container. Execs use the spawner
        until it is ready, or if it cannot be made."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        helper = ExecHelper(self.reaper)
        self.helpers[cid] = helper
        plan = {"namespaces": [(kind, f"/proc/{init_pid}/ns/{name}") for kind, name in NAMESPACE_FILES.items()],
                "cgroup_procs": cgroups["helper"], "exec_cgroup_procs": cgroups["exec"]}
        try:
            try:
                pid = await self.spawner.spawn("helper", plan, {"err": err_w, "channel": theirs.fileno()}, {})
            finally:
                os.close(err_w)
                theirs.close()
            helper.attach(ours, pid, self.reaper.watch(pid))
            ours = None
            ready = await _read_all(err_r, stop_at=b"R")
            if ready != b"R":
                raise hr.GcsError(hr.E_FAIL, _error_text(ready))
            greeting = await helper.receive()
            if "ready" not in greeting:
                raise hr.GcsError(hr.E_FAIL, f"unexpected greeting {greeting!r}")
            helper.ready = True
        except (hr.GcsError, OSError) as err:
            log.warning("no exec helper for the container; execs go through the spawner", container=cid,
                        error=str(err))
            helper.close()
        finally:
            aio.get_loop().forget_fd(err_r)
            os.close(err_r)
            if ours is not None:
                ours.close()
        if self.helpers.get(cid) is not helper or helper.sock is None:
            helper.close()  # deleted meanwhile, or failed

    async def create(self, plan: dict, child_fds: list[int], place=None) -> InitHandle:
        """Clone the init into its (new or joined) pid namespace and let it set everything
        up to the point of exec; it then waits for start(). `place(pid)` (cgroups) runs while
        the init sets up; it cannot exec before start() anyway."""
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid_ns = [path or "" for kind, path in plan["namespaces"] if kind == "pid"]
        try:
            pid = await self.spawner.spawn("init", plan, {"err": err_w, "start": start_r}, plan["stdio"],
                                           pid_ns[0] if pid_ns else None)
        except BaseException:
            for fd in (start_w, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (start_r, err_w, *child_fds):
                os.close(fd)
        status = self.reaper.watch(pid)
        handle = InitHandle(pid, start_w, err_r, status)
        if place is not None:
            try:
                place(pid)
            except BaseException:
                handle.close()
                await _kill_and_reap(pid, status)
                raise
        ready = await _read_all(err_r, stop_at=b"R")
        if ready != b"R":
            handle.close()
            await _kill_and_reap(pid, status)
            raise hr.GcsError(hr.E_FAIL, f"container setup failed: {_error_text(ready)}")
        if plan.get("exec_helper") is not None:
            self.helper_plans[plan["id"]] = (pid, plan["exec_helper"])
        return handle

    async def start(self, handle: InitHandle) -> None:
        """Let init exec; raises with the child's message if the exec fails."""
        try:
            os.write(handle.start_w, b"S")
            aio.get_loop().forget_fd(handle.start_w)
            os.close(handle.start_w)
            handle.start_w = -1
            data = await _read_all(handle.err_r)  # EOF without data: exec succeeded (close-on-exec)
        finally:
            handle.close()
        if data:
            raise hr.GcsError(hr.E_FAIL, f"starting the container process failed: {_error_text(data)}")

    async def exec(self, plan: dict, child_fds: list[int], place=None) -> tuple[int, aio.Future]:
        """Start a process in a running container; returns its pid and exit-status future.
        It joins the namespaces while `place(pid)` (cgroups) runs, and execs after."""
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        pid_ns = [path for kind, path in plan["namespaces"] if kind == "pid"]
        helper = self.helpers.get(plan["id"])
        if helper is None and plan["id"] in self.helper_plans:
            # Its first exec: from the next one on, execs go through a helper. A container that
            # never execs (most run their init alone) costs nothing more.
            init_pid, cgroups = self.helper_plans.pop(plan["id"])
            aio.spawn(self._start_helper(plan["id"], init_pid, cgroups), f"exec-helper-{plan['id']}")
        try:
            if helper is not None and helper.ready and helper.sock is not None and not helper.lock.locked():
                # Born inside the container: no namespaces to join, only the pids cgroup.
                plan = {**plan, "namespaces": [], "cgroup_procs": []}
                place = None
                pid = await helper.spawn("exec", plan, {"err": err_w, "start": start_r}, plan["stdio"])
            else:
                pid = await self.spawner.spawn("exec", plan, {"err": err_w, "start": start_r}, plan["stdio"],
                                               pid_ns[0] if pid_ns else None)
        except BaseException:
            os.close(err_r)
            os.close(start_w)
            raise
        finally:
            for fd in (err_w, start_r, *child_fds):
                os.close(fd)
        status = self.reaper.watch(pid)
        try:
            if place is not None:
                place(pid)
            os.write(start_w, b"S")
        except BaseException:
            os.close(err_r)
            await _kill_and_reap(pid, status)
            raise
        finally:
            os.close(start_w)
        try:
            data = await _read_all(err_r)
        finally:
            aio.get_loop().forget_fd(err_r)
            os.close(err_r)
        if data:
            code = exit_code(await status)
            raise hr.GcsError(hr.E_FAIL, f"exec in the container failed (exit {code}): {_error_text(data)}")
        return pid, status

    def forget(self, cid: str) -> None:
        """A container that failed to be created."""
        self.helper_plans.pop(cid, None)

    async def delete(self, cid: str) -> None:
        self.helper_plans.pop(cid, None)
        helper = self.helpers.pop(cid, None)
        if helper is not None:
            helper.close()
            if helper.status is not None:
                await helper.status  # out of the container's cgroups before they go

    def teardown(self) -> None:
        """At shutdown, the loop no longer running: end the helpers and the spawner, and reap
        them here (an unreaped helper would keep its container's cgroups busy)."""
        for helper in self.helpers.values():
            helper.close()
            if helper.status is not None and not helper.status.done():
                try:
                    os.waitpid(helper.pid, 0)
                except ChildProcessError:
                    pass
        self.spawner.stop()
