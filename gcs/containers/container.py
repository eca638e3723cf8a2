"""Containers and their processes as the agent tracks them."""
from __future__ import annotations

from gcs.record import field, record
from typing import Optional

from gcs import aio

CREATING, CREATED, RUNNING, STOPPED = "creating", "created", "running", "stopped"


@record
class ContainerProcess:
    pid: int
    status: aio.Future                      # raw wait status
    done: aio.Future = field(default_factory=aio.Future)  # exit code, once stdio drained
    relay: Optional[object] = None          # PipeRelay or TtyRelay
    master: int = -1                        # pty master (ResizeConsole)
    waited: bool = False

    @property
    def exited(self) -> bool:
        return self.status.done()


@record
class Container:
    id: str
    activity_id: str
    bundle: str
    scratch: str
    spec: dict
    kind: str                                # standalone, sandbox, workload
    sandbox_id: str = ""
    state: str = CREATING
    init: Optional[ContainerProcess] = None
    init_handle: Optional[object] = None     # runtime handle until start
    init_stdio: Optional[object] = None      # agent ends of init's pipes / pty until start
    execs: dict[int, ContainerProcess] = field(default_factory=dict)
    exit_kind: str = "UnexpectedExit"
    notified: bool = False
    own_pid_namespace: bool = True
    cgroup: str = ""                         # its cgroup, relative to the agent's base
    result_info: Optional[dict] = None       # sent as the notification's ResultInfo (OOM kills)
