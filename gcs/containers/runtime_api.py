"""What a container runtime offers the agent: the native runtime (native/runtime.py) and
runc (runc.py) both implement `Runtime`. Imported for type checking only: typing costs
start-up time in a UVM, and the check is structural."""
from __future__ import annotations

from typing import Callable, Optional, Protocol

from gcs.runtime.reaper import Child


class Handle(Protocol):
    """A container's init between Create and its start."""

    child: Child
    pid: int

    def close(self) -> None: ...


class Runtime(Protocol):
    name: str
    # The agent checks a spec against what the runtime supports before creating anything
    # (runc judges its specs itself).
    validates_specs: bool
    # The agent makes the container's cgroups and places its processes (runc does its own).
    uses_agent_cgroups: bool

    def adjust_spec(self, spec: dict) -> None:
        """Last changes to the spec before config.json is written."""

    def prestart(self) -> None:
        """Get ready for the first Create (in the background)."""

    async def create(self, plan: dict, child_fds: list[int],
                     place: Optional[Callable[[int], None]] = None) -> Handle:
        """Make the init, set up to the point of exec; `place(pid)` puts it in its cgroups."""

    async def start(self, handle: Handle) -> None:
        """Let the init exec; raises with the reason if it cannot."""

    async def exec(self, plan: dict, child_fds: list[int],
                   place: Optional[Callable[[int], None]] = None) -> Child:
        """Start a process in a running container."""

    async def delete(self, cid: str) -> None:
        """Forget a container whose processes have all exited."""

    def teardown(self) -> None:
        """At shutdown, with the event loop stopped."""
