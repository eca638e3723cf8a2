"""The containers of the UVM: the registry, Create, Shutdown*, DeleteContainerState, and the
requests on a container's processes and properties handed on to their modules
(protocol.md 3.1-3.11, 3.13, 6.7). In the manner of hcsshim's hcsv2 Host: kinds.py adjusts
a spec per container kind, plans.py says what the runtime starts, processes.py runs
processes, properties.py answers GetProperties and constraint updates."""
from __future__ import annotations

import functools
import os
import shutil
import _signal  # not `signal`: its enums cost start-up time under TCG

from gcs import aio
from gcs.containers import hostfiles, kinds, ocispec, properties
from gcs.containers.container import Container, State
from gcs.containers.plans import InitPlan
from gcs.containers.processes import ContainerProcesses, resolve_user
from gcs.containers.stdio import ChildStdio
from gcs.log import log
from gcs.protocol import hresult as hr, jsoncodec
from gcs.protocol.replies import container_notification
from gcs.storage import guestpaths
from gcs.storage.mounts import is_mountpoint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

    from gcs.containers.cgroups import Cgroups
    from gcs.containers.runtime_api import Runtime
    from gcs.network.namespaces import Networks
    from gcs.protocol.messages import ExecuteProcessRequest
    from gcs.runtime.reaper import Reaper


class Containers:
    def __init__(self, runtime: Runtime, reaper: Reaper, transport, notify: Callable[[dict], None],
                 storage_getter, cgroups: Optional[Cgroups] = None,
                 network_getter: Callable[[], Optional[Networks]] = lambda: None) -> None:
        self.runtime = runtime
        self.cgroups = cgroups
        self.reaper = reaper
        self.transport = transport
        self.notify = notify
        self.storage = storage_getter
        self.network = network_getter
        self.containers: dict[str, Container] = {}
        self._pending_network: dict[str, dict] = {}  # between spec adjustment and the attach
        self.last_cap = ocispec.kernel_last_cap()
        self.processes = ContainerProcesses(self)

    def state(self) -> dict[str, int]:
        return {"containers": len(self.containers),
                "container_execs": sum(len(c.execs) for c in self.containers.values())}

    def lookup(self, cid: str, allow_creating: bool = False) -> Container:
        c = self.containers.get(cid)
        if c is None:
            raise hr.GcsError(hr.SYSTEM_NOT_FOUND, f"container {cid!r} not found")
        if c.state is State.CREATING and not allow_creating:
            raise hr.GcsError(hr.INVALID_STATE, f"container {cid!r} is still being created")
        return c

    def cgroup_of(self, c: Container) -> str:
        """The container's cgroup relative to the agent's base; "" without a hierarchy."""
        if self.cgroups is None or not self.cgroups.available:
            return ""
        return c.cgroup

    def notify_exit(self, c: Container) -> None:
        if not c.notified:
            c.notified = True
            self.notify(container_notification(c.id, c.activity_id, c.exit_kind, c.result_info))

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
        c = Container(cid, activity_id, bundle, scratch, spec, kind=kinds.Kind.STANDALONE)
        self.containers[cid] = c
        bundle_existed = os.path.isdir(bundle)
        try:
            await self._create(c)
        except BaseException:
            network = self.network()
            if network is not None:
                await network.detach(cid)  # adapters moved in go back to the UVM
            del self.containers[cid]
            if c.init_stdio is not None:
                c.init_stdio.close()
            _remove_bundle_files(bundle, remove_dir=not bundle_existed)  # a failed Create leaves nothing
            raise
        c.state = State.CREATED
        log.info("created container", container=cid, kind=c.kind, init_pid=c.init_handle.pid)

    def _check_support(self, spec: dict) -> None:
        if not self.runtime.validates_specs:
            return
        problems = ocispec.unsupported_features(spec)
        problems += ocispec.unsupported_resources((spec.get("linux") or {}).get("resources") or {},
                                                  cgroup_v2=self.cgroups is not None and self.cgroups.v2)
        if problems:
            raise hr.GcsError(hr.E_NOTIMPL, f"the {self.runtime.name} runtime does not support: "
                              + ", ".join(sorted(set(problems))))

    def _adjust_spec(self, c: Container) -> str:
        """Make the spec the one the container runs (rootfs, kind, user, annotations, cwd);
        returns the rootfs."""
        spec = c.spec
        ocispec.check_spec(spec)  # the shape of every member read below: INVALID_JSON naming it
        self._check_support(spec)
        annotations = spec.get("annotations") or {}
        c.kind = kinds.kind_of(annotations)
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
        self._adjust_network(c, spec)
        resolve_user(process, rootfs)
        kinds.apply_annotations(process, annotations)
        spec.pop("windows", None)
        c.cgroup = linux.get("cgroupsPath") or ""  # relative to the agent's cgroup base
        self.runtime.adjust_spec(spec)
        cwd = process.get("cwd") or "/"
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise hr.GcsError(hr.E_INVALIDARG, f"the process cwd {cwd!r} is not an absolute path")  # as runc says
        # The cwd is made inside the container, after pivot_root (as runc does): a `..` or a
        # symlink in the image can then never create a directory elsewhere in the UVM.
        return rootfs

    def _adjust_network(self, c: Container, spec: dict) -> None:
        """Host files with the pod's resolv.conf, and the network namespace entry: gone with
        host networking, the sandbox's pod namespace for a workload that asks for a new one."""
        nsid = kinds.network_namespace_id(spec)
        sandbox = self.containers.get((spec.get("annotations") or {}).get(kinds.ANNOTATION_SANDBOX, "")) \
            if c.kind is kinds.Kind.WORKLOAD else None
        network = self.network() if nsid or sandbox is not None else None
        c_net = {"nsid": nsid, "host": kinds.host_network(spec, sandbox)}
        linux = spec["linux"]
        if c_net["host"]:
            linux["namespaces"] = [ns for ns in linux.get("namespaces") or [] if ns.get("type") != "network"]
        kinds.adjust_for_kind(c, spec, self.containers.get,
                              network.resolv_conf(nsid) if network is not None and nsid else "")
        if c.kind is kinds.Kind.WORKLOAD and network is not None and sandbox is not None:
            pod = network.pod_path(sandbox.id)
            for entry in linux.get("namespaces") or []:
                if entry.get("type") == "network" and not entry.get("path") and pod:
                    entry["path"] = pod  # a workload shares its pod's network, as on any CRI host
        self._pending_network[c.id] = c_net

    async def _attach_network(self, c: Container) -> None:
        """A sandbox's or standalone container's pod network namespace, with the adapters the
        host added for it moved in, before the runtime reads the spec."""
        c_net = self._pending_network.pop(c.id, None)
        if c_net is None or not c_net["nsid"] or c.kind is kinds.Kind.WORKLOAD:
            return
        network = self.network()
        if network is None:
            return
        from gcs.network.namespaces import HOST, JOIN, NEW
        entry = next((ns for ns in c.spec["linux"].get("namespaces") or [] if ns.get("type") == "network"), None)
        mode = HOST if entry is None else JOIN if entry.get("path") else NEW
        path = await network.attach(c_net["nsid"], c.id, c.bundle, mode, entry.get("path", "") if entry else "")
        if path:
            entry["path"] = path

    async def _create(self, c: Container) -> None:
        try:
            rootfs = self._adjust_spec(c)
            await self._attach_network(c)
        finally:
            self._pending_network.pop(c.id, None)
        spec = c.spec
        linux, process = spec["linux"], spec["process"]
        namespaces = linux.get("namespaces") or []
        seccomp_filter = self.seccomp_filter(spec)  # before anything is made: a bad profile fails here
        with open(os.path.join(c.bundle, "config.json"), "w") as f:
            f.write(jsoncodec.dumps(spec))  # json.dump streams through the pure-Python encoder: 10x slower
        ocispec.check_sysctls(spec)  # again on the spec that runs: host networking took a namespace away
        devices = ocispec.device_rules(spec)  # checked for every runtime: a bad rule is E_INVALIDARG
        cgroup = self.cgroup_of(c) if self.runtime.uses_agent_cgroups else ""  # runc makes its own
        procs, place = self._cgroup_placement(c, cgroup, devices)
        stdio = ChildStdio(bool(process.get("terminal")), True, True, True)
        c.init_stdio = stdio
        plan = InitPlan(
            id=c.id, process=process, identity=ocispec.identity(process, self.last_cap),
            namespaces=[(ns["type"], ns.get("path") or None) for ns in namespaces],
            stdio=stdio.plan, cgroup_procs=procs, seccomp=seccomp_filter,
            bundle=c.bundle, rootfs=rootfs,
            readonly_root=bool(spec["root"].get("readonly")),
            rootfs_propagation=linux.get("rootfsPropagation") or "",
            hostname=spec.get("hostname") or "",
            mounts=spec.get("mounts") or [],
            devices=linux.get("devices") or [],
            masked_paths=linux.get("maskedPaths") or [],
            readonly_paths=linux.get("readonlyPaths") or [],
            sysctl=linux.get("sysctl") or {},
            # v1 hierarchies as the container sees them: [name, its cgroup's directory, subsystems]
            cgroup_v1=[[h.name, d, h.subsystems] for h, d in self.cgroups.hierarchy_dirs(cgroup)]
            if cgroup and not self.cgroups.v2 else [],
        )
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

    def seccomp_filter(self, spec: dict) -> dict:
        """The compiled linux.seccomp for a plan of the native runtime ({}: none); runc
        reads the profile from config.json itself. Compiled once per distinct profile."""
        profile = (spec.get("linux") or {}).get("seccomp")
        if not profile or not self.runtime.validates_specs:
            return {}
        from gcs.containers import seccomp  # the compiler and its tables: only once a spec has a profile

        return seccomp.plan_filter(profile) or {}

    def _cgroup_placement(self, c: Container, cgroup: str,
                          devices: list) -> tuple[list[str], Optional[Callable[[int], None]]]:
        """How the init gets into its cgroup: cgroup.procs files it writes itself, or a
        `place(pid)` the runtime calls while it sets up."""
        if not cgroup:
            return [], None
        spec = c.spec
        resources = spec["linux"].get("resources") or {}

        def prepare() -> None:  # device rules before anything moves in: it makes /dev nodes
            self.cgroups.create(cgroup, resources)
            self.cgroups.set_devices(cgroup, devices)

        namespaces = spec["linux"].get("namespaces") or []
        own_cgroup_ns = any(ns.get("type") == "cgroup" and not ns.get("path") for ns in namespaces)
        if own_cgroup_ns or any(m.get("type") == "cgroup" for m in spec.get("mounts") or []):
            # Made first: it must be in its cgroup before it unshares a cgroup namespace (it
            # joins itself then), and a cgroup mount binds the cgroup's directories.
            prepare()
            if own_cgroup_ns:
                return self.cgroups.procs_files(cgroup), None
            return [], functools.partial(self.cgroups.add_process, cgroup)

        def place(pid: int) -> None:  # while the new process sets up its rootfs (2 cores)
            prepare()
            self.cgroups.add_process(cgroup, pid)
        return [], place

    # --- processes and properties -----------------------------------------------------------
    async def execute(self, req: ExecuteProcessRequest) -> int:
        return await self.processes.execute(self.lookup(req.container_id), req)

    async def wait(self, cid: str, pid: int, timeout_ms: int) -> int:
        return await self.processes.wait(self.lookup(cid), pid, timeout_ms)

    def signal(self, cid: str, pid: int, signum: int) -> None:
        self.processes.signal(self.lookup(cid), pid, signum)

    def resize(self, cid: str, pid: int, height: int, width: int) -> None:
        self.processes.resize(self.lookup(cid), pid, height, width)

    def properties(self, cid: str, types: list[str]) -> str:
        c = self.lookup(cid)
        return properties.properties(c, self.cgroups, self.cgroup_of(c), types)

    def update_constraints(self, cid: str, settings) -> None:
        c = self.lookup(cid)
        properties.update_constraints(c, self.cgroups, self.cgroup_of(c), settings)

    # --- Shutdown / Delete ------------------------------------------------------------------
    def shutdown(self, cid: str, forced: bool) -> None:
        c = self.lookup(cid)
        signum = _signal.SIGKILL if forced else _signal.SIGTERM
        if c.state is State.CREATED and c.init_handle is not None:
            c.init_handle.child.signal(_signal.SIGKILL)  # never started: nothing to be graceful with
            return
        if c.state is State.STOPPED or c.init is None or c.init.exited:
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
        await self.runtime.delete(cid)
        network = self.network()
        if network is not None:
            try:
                await network.detach(cid)
            except hr.GcsError as err:
                errors.append(str(err))
        cgroup = self.cgroup_of(c)
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

    def teardown(self) -> None:
        self.kill_all()
        for c in self.containers.values():
            for proc in [c.init, *c.execs.values()]:
                if proc is not None:
                    try:
                        os.waitpid(proc.pid, 0)  # the loop no longer runs: reap here before cgroups go
                    except ChildProcessError:
                        pass
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
