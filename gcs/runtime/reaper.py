"""Reaps every child of the agent and hands exit statuses to whoever watches a pid.

The agent is a child subreaper (or pid 1 of its namespace in local mode), so orphaned
descendants are re-parented to it and must be reaped too, or they stay zombies. One
SIGCHLD-driven `waitpid(-1, WNOHANG)` loop serves both: tracked pids resolve their
future, the rest are counted as orphans. No polling: SIGCHLD arrives through the event
loop's signal fd.

Every child must be started through code that calls `watch()` right after the fork, in
the same loop callback, so its status can never be collected before the watch exists.
"""
from __future__ import annotations

import os
import _signal  # not `signal`: its enums cost start-up time under TCG

from gcs import aio
from gcs.log import log


def exit_code(status: int) -> int:
    """Exit status, or 128+signal for a process killed by a signal (as shells and runc do)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


class Reaper:
    # Statuses of children nobody watched yet, kept briefly: a container process is
    # re-parented to the agent, and may exit, before the agent has learnt its pid.
    UNCLAIMED_LIMIT = 1024

    def __init__(self, loop: aio.Loop) -> None:
        self._watches: dict[int, aio.Future] = {}
        self._unclaimed: dict[int, int] = {}
        self.orphans_reaped = 0
        loop.add_signal_handler(_signal.SIGCHLD, lambda _sig: self.reap())

    def watch(self, pid: int) -> aio.Future:
        """The future for pid's exit status. Call once per process and keep the result: once
        it resolves, the pid is forgotten (it may be reused)."""
        fut = self._watches.get(pid)
        if fut is None:
            fut = aio.Future()
            status = self._unclaimed.pop(pid, None)
            if status is not None:
                fut.set_result(status)
            else:
                self._watches[pid] = fut
        return fut

    @property
    def watched(self) -> int:
        return len(self._watches)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            fut = self._watches.pop(pid, None)
            if fut is not None:
                fut.set_result(status)
            else:
                self.orphans_reaped += 1
                if len(self._unclaimed) >= self.UNCLAIMED_LIMIT:
                    self._unclaimed.pop(next(iter(self._unclaimed)))
                self._unclaimed[pid] = status
                log.debug("reaped orphan", pid=pid, exit_code=exit_code(status))
