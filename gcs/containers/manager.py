"""Container requests: Create, the init and exec ExecuteProcess, WaitForProcess,
SignalProcess, ResizeConsole, Shutdown*, DeleteContainerState, GetProperties
(protocol.md 3.1-3.8, 3.11, 3.13, 6.7)."""
from __future__ import annotations

import functools
import os
import shutil
import _signal  # not `signal`: its enums cost start-up time under TCG
import _socket  # not `socket`: its enums cost memory and start-up time in a UVM

from gcs import aio
from gcs.containers import hostfiles, ocispec
from gcs.containers.container import CREATED, CREATING, RUNNING, STOPPED, Container
from gcs.log import describe_command, log
from gcs.protocol import hresult as hr, jsoncodec
from gcs.protocol.messages import ExecuteProcessRequest
from gcs.protocol.replies import container_notification, encode_json
from gcs.runtime import process as processes
from gcs.runtime.process import Process
from gcs.runtime.reaper import exit_code
from gcs.stdio.connect import StdioConnections, dial_stdio
from gcs.stdio.pipes import PipeRelay
from gcs.stdio.pty import set_window_size
from gcs.stdio.relay import TtyRelay
from gcs.storage import guestpaths
from gcs.storage.mounts import is_mountpoint

ANNOTATION_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_SANDBOX = "io.kubernetes.cri.sandbox-id"
ANNOTATION_RLIMIT_CORE = "io.microsoft.lcow.rlimitcore"

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


class Containers:
    def __init__(self, runtime, reaper, transport, notify, storage_getter, cgroups=None) -> None:
        self.runtime = runtime
        self.cgroups = cgroups
        self.reaper = reaper
        self.transport = transport
        self.notify = notify
        self.storage = storage_getter
        self.containers: dict[str, Container] = {}
        self.last_cap = ocispec.kernel_last_cap()

    def state(self) -> dict[str, int]:
        return {"containers": len(self.containers),
                "container_execs": sum(len(c.execs) for c in self.containers.values())}

    def lookup(self, cid: str, allow_creating: bool = False) -> Container:
        c = self.containers.get(cid)
        if c is None:
            raise hr.GcsError(hr.SYSTEM_NOT_FOUND, f"container {cid!r} not found")
        if c.state == CREATING and not allow_creating:
            raise hr.GcsError(hr.INVALID_STATE, f"container {cid!r} is still being created")
        return c

    # --- Create ---------------------------------------------------------------------------
    async def create(self, cid: str, activity_id: str, config) -> None:
        ocispec.check_container_id(cid)
        if cid in self.containers:
            raise hr.GcsError(hr.ALREADY_EXISTS, f"container {cid!r} already exists")
        if config is None:
            raise hr.GcsError(hr.INVALID_JSON, "Create: missing ContainerConfig")
        version = config.obj("SchemaVersion")
        if version is None or (version.uint("Major"), version.uint("Minor")) < (2, 1):
            raise hr.GcsError(hr.INVALID_JSON, "Create: SchemaVersion below 2.1 or missing")
        bundle, scratch = config.str("OciBundlePath"), config.str("ScratchDirPath")
        spec_obj = config.obj("OciSpecification")
        if not bundle or spec_obj is None:
            raise hr.GcsError(hr.E_INVALIDARG, "Create: OciBundlePath and OciSpecification are required")
        # The bundle and scratch are created here and removed by DeleteContainerState.
        bundle = guestpaths.check(bundle, "Create OciBundlePath")
        scratch = guestpaths.check(scratch, "Create ScratchDirPath") if scratch else ""
        spec = spec_obj.data  # parsed from this request alone: ours to adjust
        c = Container(cid, activity_id, bundle, scratch, spec, kind="standalone")
        self.containers[cid] = c
        bundle_existed = os.path.isdir(bundle)
        try:
            await self._create(c)
        except BaseException:
            del self.containers[cid]
            if c.init_stdio is not None:
                c.init_stdio.close()
            _remove_bundle_files(bundle, remove_dir=not bundle_existed)  # a failed Create leaves nothing
            raise
        c.state = CREATED
        log.info("created container", container=cid, kind=c.kind, init_pid=c.init_handle.pid)

    async def _create(self, c: Container) -> None:
        spec = c.spec
        if self.runtime.name == "native":  # runc judges its specs itself
            problems = ocispec.unsupported_features(spec)
            if self.cgroups is not None and self.cgroups.v2:
                problems += ocispec.unsupported_resources((spec.get("linux") or {}).get("resources") or {},
                                                          cgroup_v2=True)
            if problems:
                raise hr.GcsError(hr.E_NOTIMPL, "the native runtime does not support: " + ", ".join(sorted(set(problems))))
        annotations = spec.get("annotations") or {}
        kind = annotations.get(ANNOTATION_TYPE, "")
        c.kind = {"sandbox": "sandbox", "container": "workload"}.get(kind, "standalone")
        linux = spec.setdefault("linux", {})
        namespaces = linux.get("namespaces") or []
        if not any(ns.get("type") == "mount" for ns in namespaces):
            raise hr.GcsError(hr.E_INVALIDARG, "the spec has no mount namespace; the native runtime needs one")
        c.own_pid_namespace = any(ns.get("type") == "pid" and not ns.get("path") for ns in namespaces)
        root = (spec.get("root") or {}).get("path") or ""
        rootfs = root if root.startswith("/") else os.path.join(c.bundle, root or "rootfs")
        rootfs = guestpaths.check(rootfs, "OciSpecification root.path")
        if not os.path.isdir(rootfs):
            raise hr.GcsError(hr.E_FAIL, f"container rootfs {rootfs} does not exist")
        spec.setdefault("root", {})["path"] = rootfs
        process = spec.get("process")
        if not process or not process.get("args"):
            raise hr.GcsError(hr.E_INVALIDARG, "the spec has no process args")
        os.makedirs(c.bundle, mode=0o700, exist_ok=True)
        if c.kind == "workload":
            c.sandbox_id = annotations.get(ANNOTATION_SANDBOX, "")
            sandbox = self.containers.get(c.sandbox_id)
            if sandbox is None or sandbox.kind != "sandbox":
                raise hr.GcsError(hr.SYSTEM_NOT_FOUND, f"sandbox {c.sandbox_id!r} of workload {c.id!r} not found")
            if spec.get("hostname"):
                raise hr.GcsError(hr.E_INVALIDARG, "workload containers must not set a hostname")
            hostfiles.add_mounts(spec, sandbox.bundle)
            linux["cgroupsPath"] = f"/pods/{c.sandbox_id}/{c.id}"
        else:
            hostname = hostfiles.write_files(c.bundle, spec.get("hostname") or "")
            spec["hostname"] = hostname
            if c.kind == "standalone":
                hostfiles.add_mounts(spec, c.bundle)
                linux["cgroupsPath"] = f"/pods/{c.id}"
            else:
                linux["cgroupsPath"] = f"/pods/{c.id}/{c.id}"
        _resolve_user(process, rootfs)
        core = annotations.get(ANNOTATION_RLIMIT_CORE)
        if core:
            soft, _, hard = core.partition(";")
            process.setdefault("rlimits", []).append({"type": "RLIMIT_CORE", "soft": int(soft), "hard": int(hard)})
        spec.pop("windows", None)
        c.cgroup = linux.get("cgroupsPath") or ""  # relative to the agent's cgroup base
        if hasattr(self.runtime, "adjust_spec"):
            self.runtime.adjust_spec(spec)
        cwd = process.get("cwd") or "/"
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise hr.GcsError(hr.E_INVALIDARG, f"the process cwd {cwd!r} is not an absolute path")  # as runc says
        if cwd != "/":
            os.makedirs(os.path.join(rootfs, cwd.lstrip("/")), exist_ok=True)
        with open(os.path.join(c.bundle, "config.json"), "w") as f:
            f.write(jsoncodec.dumps(spec))  # json.dump streams through the pure-Python encoder: 10x slower
        cgroup = self._cgroup(c) if self.runtime.name == "native" else ""  # runc makes its own
        resources = linux.get("resources") or {}
        procs: list[str] = []
        place = None
        devices = ocispec.device_rules(spec)

        def prepare() -> None:  # device rules before anything moves in: it makes /dev nodes
            self.cgroups.create(cgroup, resources)
            self.cgroups.set_devices(cgroup, devices)

        own_cgroup_ns = any(ns.get("type") == "cgroup" and not ns.get("path") for ns in namespaces)
        if cgroup and (own_cgroup_ns or any(m.get("type") == "cgroup" for m in spec.get("mounts") or [])):
            # Made first: it must be in its cgroup before it unshares a cgroup namespace (it
            # joins itself then), and a cgroup mount binds the cgroup's directories.
            prepare()
            if own_cgroup_ns:
                procs = self.cgroups.procs_files(cgroup)
            else:
                place = functools.partial(self.cgroups.add_process, cgroup)
        elif cgroup:
            def place(pid: int) -> None:  # while the new process sets up its rootfs (2 cores)
                prepare()
                self.cgroups.add_process(cgroup, pid)
        stdio = ChildStdio(bool(process.get("terminal")), True, True, True)
        c.init_stdio = stdio
        plan = {
            "id": c.id,
            "bundle": c.bundle,
            "rootfs": rootfs,
            "readonlyRoot": bool(spec["root"].get("readonly")),
            "rootfsPropagation": linux.get("rootfsPropagation") or "",
            "namespaces": [(ns["type"], ns.get("path") or None) for ns in namespaces],
            "hostname": spec.get("hostname") or "",
            "mounts": spec.get("mounts") or [],
            "devices": linux.get("devices") or [],
            "maskedPaths": linux.get("maskedPaths") or [],
            "readonlyPaths": linux.get("readonlyPaths") or [],
            "sysctl": linux.get("sysctl") or {},
            "cgroup_procs": procs,
            # v1 hierarchies as the container sees them: [name, its cgroup's directory, subsystems]
            "cgroup_v1": [[h.name, d, h.subsystems] for h, d in self.cgroups.hierarchy_dirs(cgroup)]
            if cgroup and not self.cgroups.v2 else [],
            "stdio": stdio.plan,
            "process": process,
            "identity": ocispec.identity(process, self.last_cap),
        }
        try:
            c.init_handle = await self.runtime.create(plan, stdio.child_fds, place)
            await stdio.receive_master()
        except BaseException:
            handle, c.init_handle = c.init_handle, None
            if handle is not None:  # made, then its pty never came: end it
                handle.close()
                handle.child.signal(_signal.SIGKILL)
                await handle.child.status
            if cgroup:
                await self.cgroups.remove(cgroup)
            raise
        finally:
            stdio.child_fds.clear()

    # --- ExecuteProcess -------------------------------------------------------------------
    async def execute(self, req: ExecuteProcessRequest) -> int:
        c = self.lookup(req.container_id)
        params = req.params
        if params.oci_process is None:
            return await self._start_init(c, req)
        if c.state != RUNNING or c.init is None or c.init.exited:
            raise hr.GcsError(hr.SYSTEM_ALREADY_STOPPED, f"container {c.id!r} is not running")
        process = params.oci_process.data  # parsed from this request alone
        base = c.spec.get("process") or {}
        process["rlimits"] = base.get("rlimits") or []
        user = process.get("user") or {}
        if user.get("username"):
            _resolve_user(process, c.spec["root"]["path"])
        elif not process.get("user"):
            process["user"] = base.get("user") or {}
        for key in ("capabilities", "noNewPrivileges", "oomScoreAdj"):
            if key not in process and key in base:
                process[key] = base[key]
        if not process.get("args"):
            raise hr.GcsError(hr.E_INVALIDARG, "OciProcess has no args")
        terminal = bool(process.get("terminal"))
        conns = await dial_stdio(self.transport, params, req.ports)
        stdio = None
        try:
            stdio = ChildStdio(terminal, conns.stdin is not None, conns.stdout is not None, conns.stderr is not None)
            cgroup = self._cgroup(c) if self.runtime.name == "native" else ""
            plan = {"id": c.id, "cgroup_procs": [],
                    "namespaces": [(kind, f"/proc/{c.init.pid}/ns/{ocispec.NAMESPACE_FILES[kind]}")
                                   for kind in ocispec.NAMESPACE_FILES],
                    "stdio": stdio.plan, "process": process, "identity": ocispec.identity(process, self.last_cap)}
            place = (lambda pid: self.cgroups.add_process(cgroup, pid)) if cgroup else None
            try:
                child = await self.runtime.exec(plan, stdio.child_fds, place)
            finally:
                stdio.child_fds.clear()
            await stdio.receive_master()
        except BaseException:
            conns.close()
            if stdio is not None:
                stdio.close()
            raise
        pid = child.pid
        proc = Process(child, program=process["args"][0], relay=stdio.relay(conns), master=stdio.master)
        c.execs[pid] = proc
        aio.spawn(processes.finish(proc), f"exec-exit-{pid}")
        log.info("exec in container", container=c.id, pid=pid, tty=terminal, **describe_command(process["args"]))
        return pid

    async def _start_init(self, c: Container, req: ExecuteProcessRequest) -> int:
        if c.state != CREATED or c.init_handle is None or c.starting:
            raise hr.GcsError(hr.INVALID_STATE, f"container {c.id!r} has already been started")
        c.starting = True  # a second init ExecuteProcess while this one dials is refused above
        try:
            conns = await dial_stdio(self.transport, req.params, req.ports)
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
        c.state = RUNNING
        try:
            await self.runtime.start(handle)
        except hr.GcsError:
            c.state = STOPPED
            relay.close()
            proc.done.set_result(exit_code(await proc.status))
            proc.waited = True
            self._notify(c)  # the host registered a wait at Create: release it now
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
        c.state = STOPPED
        cgroup = self._cgroup(c)
        if cgroup:
            kills = self.cgroups.oom_kills(cgroup)
            if kills:
                c.result_info = {"OomKilled": True, "OomKillCount": kills}
                log.error("container processes were killed for lack of memory", container=c.id, oom_kills=kills)
        proc.done.set_result(exit_code(status))
        log.info("container init exited", container=c.id, exit_code=exit_code(status))

    def _notify(self, c: Container) -> None:
        if not c.notified:
            c.notified = True
            self.notify(container_notification(c.id, c.activity_id, c.exit_kind, c.result_info))

    # --- WaitForProcess / SignalProcess / ResizeConsole -----------------------------------
    def _process(self, c: Container, pid: int) -> Process:
        if c.init is not None and c.init.pid == pid:
            return c.init
        proc = c.execs.get(pid)
        if proc is None:
            raise hr.not_found(f"process {pid} not found in container {c.id!r}")
        return proc

    async def wait(self, cid: str, pid: int, timeout_ms: int) -> int:
        c = self.lookup(cid)
        proc = self._process(c, pid)
        code = await processes.wait(proc, timeout_ms)
        if proc is c.init:
            if not proc.waited:
                proc.waited = True
                aio.get_loop().call_soon(self._notify, c)  # after this reply is written
        elif c.execs.get(pid) is proc:
            del c.execs[pid]
        return code

    def signal(self, cid: str, pid: int, signum: int) -> None:
        c = self.lookup(cid)
        proc = self._process(c, pid)
        signum = processes.checked_signal(signum)
        processes.send_signal(proc, signum)
        if proc is c.init and signum in (_signal.SIGTERM, _signal.SIGKILL):
            c.exit_kind = "GracefulExit" if signum == _signal.SIGTERM else "ForcedExit"

    def resize(self, cid: str, pid: int, height: int, width: int) -> None:
        proc = self._process(self.lookup(cid), pid)
        if proc.master < 0:
            raise hr.GcsError(hr.E_FAIL, f"process {pid} is not a tty")
        if proc.relay is not None and getattr(proc.relay, "closed", False):
            return
        set_window_size(proc.master, height, width)

    # --- Shutdown / Delete / GetProperties ------------------------------------------------
    def shutdown(self, cid: str, forced: bool) -> None:
        c = self.lookup(cid)
        signum = _signal.SIGKILL if forced else _signal.SIGTERM
        if c.state == CREATED and c.init_handle is not None:
            c.init_handle.child.signal(_signal.SIGKILL)  # never started: nothing to be graceful with
            return
        if c.state == STOPPED or c.init is None or c.init.exited:
            raise hr.GcsError(hr.SYSTEM_ALREADY_STOPPED, f"container {cid!r} is already stopped")
        c.init.child.signal(signum)
        c.exit_kind = "ForcedExit" if forced else "GracefulExit"

    async def delete(self, cid: str) -> None:
        c = self.lookup(cid, allow_creating=False)
        errors = []
        if c.init_handle is not None:  # created, never started
            handle, c.init_handle = c.init_handle, None
            handle.close()
            handle.child.signal(_signal.SIGKILL)
            await handle.child.status
        if c.init_stdio is not None:
            c.init_stdio.close()
        for proc in [c.init, *c.execs.values()]:
            if proc is not None:
                proc.child.signal(_signal.SIGKILL)
        for proc in [c.init, *c.execs.values()]:
            if proc is not None:
                try:
                    await aio.wait_for(proc.done, 10)
                except aio.TimeoutError_:
                    errors.append(f"process {proc.pid} did not exit")
        if hasattr(self.runtime, "delete"):
            await self.runtime.delete(cid)
        cgroup = self._cgroup(c)
        if cgroup:
            await self.cgroups.remove(cgroup)
        try:
            storage = self.storage()
            if storage is not None:
                storage.release_bundle(c.spec["root"]["path"])
        except hr.GcsError as err:
            errors.append(str(err))
        for path in (c.scratch, c.bundle):
            if path and os.path.isdir(path) and not is_mountpoint(path):
                # A scratch directory can hold a whole image's worth of files.
                await aio.run_in_thread(shutil.rmtree, path, True)
            elif path == c.bundle:
                _remove_bundle_files(path, remove_dir=False)
        del self.containers[cid]
        log.info("deleted container", container=cid)
        if errors:
            raise hr.GcsError(hr.E_FAIL, "; ".join(errors))

    def properties(self, cid: str, types: list[str]) -> str:
        c = self.lookup(cid)
        props: dict = {}
        for kind in types:
            if kind == "ProcessList":
                props["ProcessList"] = [{"ProcessId": pid} for pid in self._pids(c)]
            elif kind == "Statistics":
                cgroup = self._cgroup(c)
                if not cgroup:
                    raise hr.GcsError(hr.E_FAIL, "no cgroup hierarchy: statistics are not available")
                props["LCOWMetrics"] = self.cgroups.stats(cgroup)
            else:
                log.warning("unknown property type ignored", type=kind)
        return encode_json(props)

    def _cgroup(self, c: Container) -> str:
        if self.cgroups is None or not self.cgroups.available:
            return ""
        return c.cgroup

    def update_constraints(self, cid: str, settings) -> None:
        c = self.lookup(cid)
        cgroup = self._cgroup(c)
        if not cgroup:
            raise hr.GcsError(hr.E_FAIL, "no cgroup hierarchy: constraints cannot be applied")
        linux = settings.obj("Linux") if settings is not None else None
        if linux is None:
            raise hr.GcsError(hr.E_INVALIDARG, "ContainerConstraints: missing Linux resources")
        problems = ocispec.unsupported_resources(linux.data, cgroup_v2=self.cgroups.v2)
        if problems:
            raise hr.GcsError(hr.E_NOTIMPL, "ContainerConstraints: not supported: " + ", ".join(problems))
        devices = None
        if linux.data.get("devices"):  # checked before anything changes
            devices = ocispec.device_rules({**c.spec, "linux": {**(c.spec.get("linux") or {}),
                                                                "resources": {"devices": linux.data["devices"]}}})
        self.cgroups.update(cgroup, linux.data)
        if devices is not None:
            self.cgroups.set_devices(cgroup, devices)
        log.info("updated container constraints", container=cid)

    def _pids(self, c: Container) -> list[int]:
        cgroup = self._cgroup(c)
        if cgroup and c.init is not None and not c.init.exited:
            return self.cgroups.pids(cgroup)
        pids = []
        if c.init is not None and not c.init.exited and c.own_pid_namespace:
            try:
                ns = os.readlink(f"/proc/{c.init.pid}/ns/pid")
            except OSError:
                ns = None
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                            pids.append(int(entry))
                    except OSError:
                        continue
        else:
            pids = [p.pid for p in [c.init, *c.execs.values()] if p is not None and not p.exited]
        return sorted(pids)

    def teardown(self) -> None:
        self.kill_all()
        for c in self.containers.values():
            for proc in [c.init, *c.execs.values()]:
                if proc is not None:
                    try:
                        os.waitpid(proc.pid, 0)  # the loop no longer runs: reap here before cgroups go
                    except ChildProcessError:
                        pass
        if hasattr(self.runtime, "teardown"):
            self.runtime.teardown()
        if self.cgroups is not None:
            self.cgroups.teardown()

    def kill_all(self) -> None:
        for c in self.containers.values():
            for proc in [c.init, *c.execs.values()]:
                if proc is not None:
                    proc.child.signal(_signal.SIGKILL)
            if c.init_handle is not None:
                c.init_handle.child.signal(_signal.SIGKILL)


def _remove_bundle_files(bundle: str, remove_dir: bool) -> None:
    for name in ("config.json", *hostfiles.FILES):
        try:
            os.unlink(os.path.join(bundle, name))
        except OSError:
            pass
    if remove_dir:
        try:
            os.rmdir(bundle)
        except OSError:
            pass


def _resolve_user(process: dict, rootfs: str) -> None:
    user = process.setdefault("user", {})
    name = user.pop("username", "") or ""
    if name:
        uid, gid, extra = ocispec.resolve_user(rootfs, name)
        user["uid"], user["gid"] = uid, gid
        user["additionalGids"] = sorted(set(user.get("additionalGids") or []) | set(extra))
