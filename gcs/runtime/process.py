"""One record and one wait/signal path for every process the host can address, whether it
runs in the UVM or in a container (protocol.md 3.5-3.7).

A process's exit code is released (`done`) only after its stdio relay has drained, so the
host never sees the exit before the last output. Exit codes are the exit status or
128+signal (upstream reports -1 for a signalled UVM process; 128+signal is what the same
host reports for container processes and is a valid uint32).
"""
from __future__ import annotations

import _signal  # not `signal`: its enums cost start-up time under TCG

from gcs import aio
from gcs.protocol import hresult as hr
from gcs.protocol.messages import INFINITE_TIMEOUT
from gcs.record import field, record
from gcs.runtime.reaper import Child, exit_code

TYPE_CHECKING = False  # typing costs ~45 ms under TCG; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Optional

MAX_SIGNAL = 64


@record
class Process:
    child: Child
    program: str = ""
    done: aio.Future = field(default_factory=aio.Future)  # exit code, once stdio has drained
    relay: Optional[object] = None                          # PipeRelay or TtyRelay
    master: int = -1                                        # pty master (ResizeConsole)
    waited: bool = False

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def status(self) -> aio.Future:
        return self.child.status  # raw wait status

    @property
    def exited(self) -> bool:
        return self.child.exited


async def finish(proc: Process) -> int:
    """Wait for the exit, then for the relay to drain; resolve and return the exit code."""
    status = await proc.child.status
    if proc.relay is not None:
        await proc.relay.finish()  # type: ignore[attr-defined]
    code = exit_code(status)
    proc.done.set_result(code)
    return code


async def wait(proc: Process, timeout_ms: int) -> int:
    timeout = None if timeout_ms == INFINITE_TIMEOUT else timeout_ms / 1000.0
    try:
        return await aio.wait_for(proc.done, timeout)
    except aio.TimeoutError_:
        raise hr.GcsError(hr.VMCOMPUTE_TIMEOUT, f"timed out waiting for process {proc.pid}") from None


def checked_signal(signum: int) -> int:
    """The signal a SignalProcess asks for: 0 means SIGKILL (upstream's default)."""
    signum = signum or _signal.SIGKILL
    if not 1 <= signum <= MAX_SIGNAL:
        raise hr.GcsError(hr.E_INVALIDARG, f"invalid signal {signum}")
    return signum


def send_signal(proc: Process, signum: int) -> None:
    """Signal through the process's pidfd; an exited process is not found."""
    if not proc.child.signal(signum):
        raise hr.not_found(f"process {proc.pid} has already exited")
