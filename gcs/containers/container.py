"""Containers and their processes as the agent tracks them."""
from __future__ import annotations

import enum

from gcs.containers.kinds import Kind
from gcs.record import field, record

TYPE_CHECKING = False  # typing costs start-up time under TCG; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Optional

    from gcs.runtime.process import Process


class State(str, enum.Enum):
    CREATING = "creating"  # Create in progress: only Delete of a failed Create touches it
    CREATED = "created"    # init made, waiting for its ExecuteProcess
    RUNNING = "running"
    STOPPED = "stopped"    # init exited

    def __str__(self) -> str:
        return self.value


@record
class Container:
    id: str
    activity_id: str
    bundle: str
    scratch: str
    spec: dict
    kind: Kind
    sandbox_id: str = ""
    state: State = State.CREATING
    starting: bool = False                   # its init ExecuteProcess is dialling stdio
    init: Optional[Process] = None
    init_handle: Optional[object] = None     # runtime handle until start
    init_stdio: Optional[object] = None      # agent ends of init's pipes / pty until start
    execs: dict[int, Process] = field(default_factory=dict)
    exit_kind: str = "UnexpectedExit"
    notified: bool = False
    own_pid_namespace: bool = True
    cgroup: str = ""                         # its cgroup, relative to the agent's base
    result_info: Optional[dict] = None       # sent as the notification's ResultInfo (OOM kills)
