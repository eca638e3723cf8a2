"""What a runtime is asked to start: the typed plan for a container's init and for an exec,
built by the agent from the adjusted OCI spec. The native runtime sends `wire()` to its
spawner (msgpack), runc reads the fields it needs."""
from __future__ import annotations

from gcs.record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


@record
class ProcessPlan:
    """Fields every container process's plan has."""

    id: str                                  # the container's id
    process: dict                            # the OCI process, user resolved
    identity: dict                           # uid/gid/groups/capabilities, worked out once (ocispec.identity)
    namespaces: list = field(default_factory=list)   # [kind, path or None (new)]
    stdio: dict = field(default_factory=dict)        # stdin/stdout/stderr fds or console_socket
    cgroup_procs: list = field(default_factory=list)  # cgroup.procs files it writes itself
    seccomp: dict = field(default_factory=dict)      # {"prog": BPF bytes, "flags": int} (seccomp.plan_filter) or {}

    def wire(self) -> dict:
        """The plan as the spawner receives it (msgpack): its fields by name."""
        return {name: getattr(self, name) for name in self.__record_fields__}


@record
class InitPlan(ProcessPlan):
    bundle: str = ""
    rootfs: str = ""
    readonly_root: bool = False
    rootfs_propagation: str = ""
    hostname: str = ""
    mounts: list = field(default_factory=list)
    devices: list = field(default_factory=list)
    masked_paths: list = field(default_factory=list)
    readonly_paths: list = field(default_factory=list)
    sysctl: dict = field(default_factory=dict)
    cgroup_v1: list = field(default_factory=list)  # [hierarchy, its cgroup's directory, subsystems]


def pid_namespace(plan: ProcessPlan) -> Optional[str]:
    """The pid namespace the new process goes to: None (the spawner's own), "" (a new one)
    or the path of one to join."""
    for kind, path in plan.namespaces:
        if kind == "pid":
            return path or ""
    return None
