"""A container's processes: its init's ExecuteProcess, execs into it, WaitForProcess,
SignalProcess and ResizeConsole (protocol.md 3.3-3.7); the record and the wait/signal path
are the UVM processes' (gcs/runtime/process.py)."""
from __future__ import annotations

import _signal  # not `signal`: its enums cost start-up time under TCG

from gcs import aio
from gcs.containers import ocispec
from gcs.containers.container import State
from gcs.containers.plans import ProcessPlan
from gcs.containers.stdio import ChildStdio
from gcs.log import describe_command, log
from gcs.protocol import hresult as hr
from gcs.runtime import process as processes
from gcs.runtime.process import Process
from gcs.runtime.reaper import exit_code
from gcs.stdio.connect import dial_stdio
from gcs.stdio.pty import set_window_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from gcs.containers.container import Container
    from gcs.containers.manager import Containers
    from gcs.protocol.messages import ExecuteProcessRequest

# What an exec inherits from the container's own process when its OciProcess leaves it out.
INHERITED = ("capabilities", "noNewPrivileges", "oomScoreAdj")


class ContainerProcesses:
    def __init__(self, host: Containers) -> None:
        self.host = host

    # --- ExecuteProcess -------------------------------------------------------------------
    async def execute(self, c: Container, req: ExecuteProcessRequest) -> int:
        params = req.params
        if params.oci_process is None:
            return await self._start_init(c, req)
        if c.state is not State.RUNNING or c.init is None or c.init.exited:
            raise hr.GcsError(hr.SYSTEM_ALREADY_STOPPED, f"container {c.id!r} is not running")
        process = self._exec_process(c, params.oci_process.data)
        host = self.host
        conns = await dial_stdio(host.transport, params, req.ports)
        stdio = None
        try:
            stdio = ChildStdio(bool(process.get("terminal")), conns.stdin is not None, conns.stdout is not None,
                               conns.stderr is not None)
            plan = ProcessPlan(id=c.id, process=process, identity=ocispec.identity(process, host.last_cap),
                               namespaces=[(kind, f"/proc/{c.init.pid}/ns/{ocispec.NAMESPACE_FILES[kind]}")
                                           for kind in ocispec.NAMESPACE_FILES],
                               stdio=stdio.plan, seccomp=host.seccomp_filter(c.spec))
            cgroup = host.cgroup_of(c) if host.runtime.uses_agent_cgroups else ""  # runc places its own
            place = (lambda pid: host.cgroups.add_process(cgroup, pid)) if cgroup else None
            try:
                child = await host.runtime.exec(plan, stdio.child_fds, place)
            finally:
                stdio.child_fds.clear()
            await stdio.receive_master()
        except BaseException:
            conns.close()
            if stdio is not None:
                stdio.close()
            raise
        proc = Process(child, program=process["args"][0], relay=stdio.relay(conns), master=stdio.master)
        c.execs[child.pid] = proc
        aio.spawn(processes.finish(proc), f"exec-exit-{child.pid}")
        log.info("exec in container", container=c.id, pid=child.pid, tty=bool(process.get("terminal")),
                 **describe_command(process["args"]))
        return child.pid

    def _exec_process(self, c: Container, process: dict) -> dict:
        """The exec's OCI process (parsed from its request alone: ours to change), completed
        from the container's."""
        ocispec.check_value(process, ocispec.PROCESS, "process")
        base = c.spec.get("process") or {}
        process["rlimits"] = base.get("rlimits") or []
        user = process.get("user") or {}
        if user.get("username"):
            resolve_user(process, c.spec["root"]["path"])
        elif not process.get("user"):
            process["user"] = base.get("user") or {}
        for key in INHERITED:
            if key not in process and key in base:
                process[key] = base[key]
        if not process.get("args"):
            raise hr.GcsError(hr.E_INVALIDARG, "OciProcess has no args")
        return process

    async def _start_init(self, c: Container, req: ExecuteProcessRequest) -> int:
        if c.state is not State.CREATED or c.init_handle is None or c.starting:
            raise hr.GcsError(hr.INVALID_STATE, f"container {c.id!r} has already been started")
        c.starting = True  # a second init ExecuteProcess while this one dials is refused above
        try:
            conns = await dial_stdio(self.host.transport, req.params, req.ports)
        finally:
            c.starting = False
        if c.init_handle is None:  # deleted or killed while the stdio was dialled
            conns.close()
            raise hr.GcsError(hr.INVALID_STATE, f"container {c.id!r} is no longer startable")
        stdio = c.init_stdio
        relay = stdio.relay(conns)
        handle = c.init_handle
        c.init_handle = c.init_stdio = None
        proc = Process(handle.child, program=(c.spec.get("process") or {}).get("args", [""])[0],
                       relay=relay, master=stdio.master)
        c.init = proc
        c.state = State.RUNNING
        try:
            await self.host.runtime.start(handle)
        except hr.GcsError:
            c.state = State.STOPPED
            relay.close()
            proc.done.set_result(exit_code(await proc.status))
            proc.waited = True
            self.host.notify_exit(c)  # the host registered a wait at Create: release it now
            raise
        aio.spawn(self._watch_init(c), f"init-{c.id}")
        log.info("started container", container=c.id, pid=proc.pid)
        return proc.pid

    async def _watch_init(self, c: Container) -> None:
        proc = c.init
        status = await proc.status
        if not c.own_pid_namespace:
            for p in c.execs.values():  # what `runc kill --all` does for a shared pid namespace
                p.child.signal(_signal.SIGKILL)
        if proc.relay is not None:
            await proc.relay.finish()
        c.state = State.STOPPED
        cgroup = self.host.cgroup_of(c)
        if cgroup:
            kills = self.host.cgroups.oom_kills(cgroup)
            if kills:
                c.result_info = {"OomKilled": True, "OomKillCount": kills}
                log.error("container processes were killed for lack of memory", container=c.id, oom_kills=kills)
        proc.done.set_result(exit_code(status))
        log.info("container init exited", container=c.id, exit_code=exit_code(status))

    # --- WaitForProcess / SignalProcess / ResizeConsole -----------------------------------
    @staticmethod
    def lookup(c: Container, pid: int) -> Process:
        if c.init is not None and c.init.pid == pid:
            return c.init
        proc = c.execs.get(pid)
        if proc is None:
            raise hr.not_found(f"process {pid} not found in container {c.id!r}")
        return proc

    async def wait(self, c: Container, pid: int, timeout_ms: int) -> int:
        proc = self.lookup(c, pid)
        code = await processes.wait(proc, timeout_ms)
        if proc is c.init:
            if not proc.waited:
                proc.waited = True
                aio.get_loop().call_soon(self.host.notify_exit, c)  # after this reply is written
        elif c.execs.get(pid) is proc:
            del c.execs[pid]
        return code

    def signal(self, c: Container, pid: int, signum: int) -> None:
        proc = self.lookup(c, pid)
        signum = processes.checked_signal(signum)
        processes.send_signal(proc, signum)
        if proc is c.init and signum in (_signal.SIGTERM, _signal.SIGKILL):
            c.exit_kind = "GracefulExit" if signum == _signal.SIGTERM else "ForcedExit"

    def resize(self, c: Container, pid: int, height: int, width: int) -> None:
        proc = self.lookup(c, pid)
        if proc.master < 0:
            raise hr.GcsError(hr.E_FAIL, f"process {pid} is not a tty")
        if proc.relay is not None and getattr(proc.relay, "closed", False):
            return
        set_window_size(proc.master, height, width)


def resolve_user(process: dict, rootfs: str) -> None:
    """A user given by name: uid, gid and groups from the image's passwd and group files."""
    user = process.setdefault("user", {})
    name = user.pop("username", "") or ""
    if name:
        uid, gid, extra = ocispec.resolve_user(rootfs, name)
        user["uid"], user["gid"] = uid, gid
        user["additionalGids"] = sorted(set(user.get("additionalGids") or []) | set(extra))
