"""Local mode: run the agent on an ordinary Linux machine as if it were in a UVM.

The agent moves into its own mount and pid namespaces, with a private tmpfs on /run and
its own /proc, so every guest path (/run/gcs/..., /run/layers/...) works unchanged and
vanishes with the namespace. The process that called us stays outside as a small
supervisor: it forwards termination signals and exits with the agent's status. When the
agent (pid 1 of the namespace) exits, the kernel kills every process left inside, so
nothing outlives a local-mode agent.
"""
from __future__ import annotations

import os
import _signal  # not `signal`: its enums cost start-up time before the first reply
import sys


def enter(exit_with_parent: bool = False) -> str:
    """Returns in the agent (pid 1 of a new pid namespace); the supervisor never returns.

    Returns the dedicated cgroup subtree for this agent's containers (under our own
    cgroup); the supervisor removes it after the agent, whatever way the agent ended.
    """
    from gcs import linux
    from gcs.mountflags import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_REC

    cgroup_base = f"{own_cgroup().rstrip('/')}/pygcs-{os.getpid()}-{os.urandom(3).hex()}"

    # python-prctl's C layer: its Python wrappers cost start-up time before the first reply
    import _prctl

    if exit_with_parent:
        parent = os.getppid()
        _prctl.prctl(_prctl.PR_SET_PDEATHSIG, _signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the setting took
            os._exit(1)

    linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWPID)
    child = os.fork()
    if child:
        _supervise(child, cgroup_base)
    try:
        _prctl.prctl(_prctl.PR_SET_PDEATHSIG, _signal.SIGKILL)  # the supervisor's death ends the namespace
        linux.mount(None, "/", None, MS_REC | MS_PRIVATE)
        linux.mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        linux.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except BaseException as err:  # noqa: BLE001
        from gcs.log import log
        log.log("fatal", "local mode setup failed", error=str(err))
        log.flush(1.0)  # os._exit runs no clean-up: write what a slow reader left queued
        os._exit(1)
    return cgroup_base


def own_cgroup() -> str:
    """Our cgroup (the memory controller's path, or v2's): local mode makes its subtree
    under it in every hierarchy."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(",") or controllers == "":
                    return path
    except OSError:
        pass
    return "/"


def _remove_cgroups(base: str) -> None:
    """Best effort: the agent normally removed its subtree itself."""
    from gcs.containers.cgroups import hierarchy_roots, remove_tree
    import time
    deadline = time.monotonic() + 10  # processes killed with the namespace may still be leaving (seconds here under load)
    for hierarchy in hierarchy_roots():
        remove_tree(os.path.join(hierarchy, base.strip("/")), deadline=deadline, quiet=True)


def _supervise(child: int, cgroup_base: str) -> None:
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        _signal.signal(signum, forward)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    sys.stdout.flush()
    _remove_cgroups(cgroup_base)
    os._exit(os.waitstatus_to_exitcode(status) if not os.WIFSIGNALED(status) else 128 + os.WTERMSIG(status))
