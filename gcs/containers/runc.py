"""runc as a second runtime (`--runtime runc`): the conformance oracle for the native one.

Same interface as the native runtime. runc's container init inherits the stdio it is
given; a pty master comes back over --console-socket and is handed on through the same
socketpair the native runtime uses, so the agent's side is identical for both.
"""
from __future__ import annotations

import os
import secrets
import socket
import tempfile

from gcs import aio
from gcs.log import log
from gcs.protocol import hresult as hr, jsoncodec
from gcs.containers.plans import InitPlan, ProcessPlan
from gcs.runtime.command import TOOL_PATH
from gcs.runtime.reaper import Child, Reaper, exit_code
from gcs.runtime.spawn import SpawnSpec, spawn


# Any one runc command; runc create waits for nothing but its own setup.
RUNC_TIMEOUT = 60.0


class RuncHandle:
    def __init__(self, child: Child, cid: str) -> None:
        self.child = child
        self.pid = child.pid
        self.cid = cid

    def close(self) -> None:
        pass


class RuncRuntime:
    """runc behind the agent's runtime interface (runtime_api.Runtime)."""

    name = "runc"
    validates_specs = False     # runc judges its specs itself
    uses_agent_cgroups = False  # runc makes its own under cgroup_parent

    def __init__(self, reaper: Reaper, cgroup_parent: str | None = None, root: str = "/run/runc") -> None:
        self.reaper = reaper
        self.root = root
        # Where container cgroups go: a dedicated subtree, removed again at shutdown.
        self.cgroup_parent = cgroup_parent if cgroup_parent is not None else f"/pygcs-{secrets.token_hex(4)}"
        self.work = "/run/gcsrunc"

    def prestart(self) -> None:
        pass  # runc starts fresh for every command

    def adjust_spec(self, spec: dict) -> None:
        linux = spec.setdefault("linux", {})
        linux["cgroupsPath"] = self.cgroup_parent + (linux.get("cgroupsPath") or "/pods/unnamed")

    async def _runc(self, args: list[str], stdio=(None, None, None), log_file: str | None = None) -> None:
        """Run runc; its stdio is the container process's, so errors come from --log."""
        argv = ["runc", "--root", self.root]
        if log_file:
            argv += ["--log", log_file, "--log-format", "json"]
        child = self.reaper.spawned(spawn(SpawnSpec(argv=argv + args, env={"PATH": TOOL_PATH}, stdio=stdio)))
        try:
            code = exit_code(await aio.wait_for(child.status, RUNC_TIMEOUT))
        except aio.TimeoutError_:
            child.signal(9)
            raise hr.GcsError(hr.E_FAIL, f"runc {args[0]} did not finish within {RUNC_TIMEOUT:.0f}s") from None
        finally:
            if not child.exited:  # cancelled: runc must not go on alone
                child.signal(9)
        if code != 0:
            detail = _last_error(log_file) if log_file else ""
            prefix = f"runc {args[0]} failed"
            raise hr.GcsError(hr.E_FAIL, detail if detail.startswith(prefix) else f"{prefix}: {detail or f'exit code {code}'}")

    async def _with_console(self, plan: ProcessPlan, run) -> None:
        """Run `run(extra_args)`; if the process has a terminal, pass the master runc sends
        to --console-socket on to the socketpair end in plan.stdio['console_socket']."""
        child_end = plan.stdio.get("console_socket")
        if child_end is None:
            await run([])
            return
        directory = tempfile.mkdtemp(prefix="console-", dir=self.work)
        path = os.path.join(directory, "c.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        running = accepting = None
        try:
            listener.bind(path)
            listener.listen(1)
            running = aio.spawn(run(["--console-socket", path]), "runc")
            accepting = aio.spawn(aio.sock_accept(listener), "runc-console")
            await aio.wait_any(running, accepting)
            if not accepting.done():  # runc ended (failed) before it sent a pty
                accepting.cancel()
                await running  # raises runc's error
                raise hr.GcsError(hr.E_FAIL, "runc exited without sending the container's pty")
            conn, _ = accepting.result()
            try:
                fds = await aio.wait_for(aio.sock_recv_fds(conn), RUNC_TIMEOUT)
            except aio.TimeoutError_:
                raise hr.GcsError(hr.E_FAIL, "runc sent no pty over its console socket") from None
            forward = socket.socket(fileno=os.dup(child_end))
            socket.send_fds(forward, [b"pty"], fds)
            forward.close()
            for fd in fds:
                os.close(fd)
            await running
        finally:
            for task in (accepting, running):
                if task is not None and not task.done():
                    task.cancel()  # _runc kills a runc whose wait is cancelled
            aio.get_loop().forget_fd(listener.fileno())
            listener.close()
            if os.path.exists(path):
                os.unlink(path)
            os.rmdir(directory)

    def _stdio(self, plan: ProcessPlan):
        s = plan.stdio
        if "console_socket" in s:
            return (None, None, None)
        return (s.get("stdin"), s.get("stdout"), s.get("stderr"))

    async def create(self, plan: InitPlan, child_fds: list[int], place=None) -> RuncHandle:
        assert place is None  # runc places its processes in cgroups itself
        os.makedirs(self.work, mode=0o700, exist_ok=True)
        cid, bundle = plan.id, plan.bundle
        pid_file = os.path.join(bundle, "init.pid")
        log_file = os.path.join(bundle, "runc.log")
        try:
            await self._with_console(plan, lambda extra: self._runc(
                ["create", "--bundle", bundle, "--pid-file", pid_file, *extra, cid], self._stdio(plan), log_file))
        finally:
            for fd in child_fds:
                os.close(fd)
        with open(pid_file) as f:
            pid = int(f.read())
        return RuncHandle(self.reaper.claim(pid), cid)

    async def start(self, handle: RuncHandle) -> None:
        await self._runc(["start", handle.cid], log_file=os.path.join(self.work, f"{handle.cid}.log"))

    async def exec(self, plan: ProcessPlan, child_fds: list[int], place=None) -> Child:
        assert place is None
        cid = plan.id
        directory = tempfile.mkdtemp(prefix=f"{cid}-", dir=self.work)
        try:
            process_file = os.path.join(directory, "process.json")
            with open(process_file, "w") as f:
                f.write(jsoncodec.dumps(plan.process))
            pid_file = os.path.join(directory, "pid")
            try:
                await self._with_console(plan, lambda extra: self._runc(
                    ["exec", "-d", "--process", process_file, "--pid-file", pid_file, *extra, cid],
                    self._stdio(plan), os.path.join(directory, "runc.log")))
            finally:
                for fd in child_fds:
                    os.close(fd)
            with open(pid_file) as f:
                pid = int(f.read())
        finally:
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)
        return self.reaper.claim(pid)

    async def delete(self, cid: str) -> None:
        try:
            await self._runc(["delete", "--force", cid])
        except hr.GcsError as err:
            log.warning("runc delete failed", container=cid, error=str(err))

    def teardown(self) -> None:
        """Remove the (now empty) cgroups runc made for containers under cgroup_parent (the
        agent's own /gcs there is left to the local-mode supervisor)."""
        if not self.cgroup_parent:
            return
        import time

        from gcs.containers.cgroups import hierarchy_roots, remove_tree
        deadline = time.monotonic() + 2.0
        for hierarchy in hierarchy_roots():  # runc uses every hierarchy, not only ours
            remove_tree(os.path.join(hierarchy, self.cgroup_parent.strip("/"), "pods"), deadline)


def _last_error(log_file: str) -> str:
    message = ""
    try:
        with open(log_file) as f:
            for line in f:
                try:
                    entry = jsoncodec.loads(line)
                except ValueError:
                    continue
                if entry.get("level") in ("error", "fatal", "panic"):
                    message = entry.get("msg", "")
    except OSError:
        pass
    return message
