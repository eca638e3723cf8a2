"""Reaps every child of the agent and hands each exit status to the process it belongs to.

The agent is a child subreaper (or pid 1 of its namespace in local mode), so orphaned
descendants are re-parented to it and must be reaped too, or they stay zombies. One
SIGCHLD-driven `waitpid(-1, WNOHANG)` loop serves both: tracked children resolve their
future, the rest are kept briefly as unclaimed statuses. No polling: SIGCHLD arrives
through the event loop's signal fd.

Every tracked child is known by a pidfd as well as its pid, taken while the process
provably was the one meant: right after posix_spawn in the same loop callback
(`spawned`), or from clone(CLONE_PIDFD) in the spawner (`adopt`). The pidfd settles what
a pid alone cannot: whether an unclaimed status belongs to this process or to an earlier
one that had the same pid. Signals go through the pidfd too, so a recycled pid is never hit.
"""
from __future__ import annotations

import os
import _signal  # not `signal`: its enums cost start-up time under TCG
import time

from gcs import aio
from gcs.log import log

# A status for a child whose owner never showed up (exited without being waited for).
UNKNOWN_STATUS = 255 << 8


def exit_code(status: int) -> int:
    """Exit status, or 128+signal for a process killed by a signal (as shells and runc do)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


class Child:
    """A child process of the agent: pid, pidfd (open until it is reaped) and the future of
    its raw wait status."""

    __slots__ = ("pid", "pidfd", "status")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.status = aio.Future()

    @property
    def exited(self) -> bool:
        return self.status.done()

    def signal(self, signum: int) -> bool:
        """Send signum; False if the process has already exited."""
        if self.status.done():
            return False
        try:
            if self.pidfd >= 0:
                _signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)  # a kernel without pidfds (before 5.3)
        except ProcessLookupError:
            return False
        return True

    def _resolve(self, status: int) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.status.set_result(status)


class Reaper:
    # Statuses of children nobody tracked yet: a container process cloned by the spawner is
    # the agent's child from its first instant and may exit before its pidfd arrives here.
    UNCLAIMED_LIMIT = 1024
    UNCLAIMED_AGE = 30.0  # seconds; a claim normally comes within milliseconds

    def __init__(self, loop: aio.Loop) -> None:
        self._children: dict[int, Child] = {}
        self._unclaimed: dict[int, tuple[int, float]] = {}  # pid -> (status, when reaped)
        self.orphans_reaped = 0
        loop.add_signal_handler(_signal.SIGCHLD, lambda _sig: self.reap())

    @property
    def watched(self) -> int:
        return len(self._children)

    @property
    def unclaimed(self) -> int:
        return len(self._unclaimed)

    def spawned(self, pid: int) -> Child:
        """Track a child posix_spawn just started. Call in the same loop callback as the
        spawn: until the loop runs again nothing can reap it, so its pid is still its own."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1  # no pidfds in this kernel: the pid is all there is
        return self.adopt(pid, pidfd)

    def adopt(self, pid: int, pidfd: int) -> Child:
        """Track a child by a pidfd that refers to it (from clone(CLONE_PIDFD), say); the
        pidfd is ours from now on."""
        old = self._children.get(pid)
        if old is not None and not old.exited:
            # Cannot be our child twice: the tracked one was reaped under us. Keep the new one.
            log.error("a tracked pid was adopted again", pid=pid)
        child = Child(pid, pidfd)
        unclaimed = self._unclaimed.pop(pid, None)
        if unclaimed is not None and self._reaped_already(child):
            child._resolve(unclaimed[0])  # it exited before we knew it: this status is its own
            return child
        # Running or a zombie: any unclaimed status for its pid was an earlier process's.
        # (Not reaped without one: every status reaped is kept, for longer than a claim takes.)
        self._children[pid] = child
        return child

    @staticmethod
    def _reaped_already(child: Child) -> bool:
        if child.pidfd < 0:
            return True  # without a pidfd, trust the unclaimed status (the old behaviour)
        try:
            os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return False

    def claim(self, pid: int) -> Child:
        """Track a child known only by its pid (runc's pid file): its pidfd is opened now. A
        process that is gone already takes its unclaimed status."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            child = Child(pid, -1)
            unclaimed = self._unclaimed.pop(pid, None)
            child._resolve(unclaimed[0] if unclaimed is not None else UNKNOWN_STATUS)
            return child
        except OSError:
            pidfd = -1
        return self.adopt(pid, pidfd)

    def reap(self) -> None:
        now = time.monotonic()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self._children.pop(pid, None)
            if child is not None:
                child._resolve(status)
                continue
            self.orphans_reaped += 1
            self._unclaimed.pop(pid, None)  # newest last: the dict's order is reaping order
            self._unclaimed[pid] = (status, now)
            log.debug("reaped orphan", pid=pid, exit_code=exit_code(status))
        self._prune(now)

    def _prune(self, now: float) -> None:
        unclaimed = self._unclaimed
        while unclaimed:
            pid, (_status, when) = next(iter(unclaimed.items()))
            if len(unclaimed) <= self.UNCLAIMED_LIMIT and now - when < self.UNCLAIMED_AGE:
                break
            del unclaimed[pid]
