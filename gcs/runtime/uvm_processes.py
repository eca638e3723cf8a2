"""Processes run directly in the UVM (ExecuteProcess on the null container id).

Each is tracked by its pid until its first successful WaitForProcess (protocol.md 3.5).
Signals go through a pidfd, so a recycled pid can never be hit. Exit codes are the exit
status or 128+signal (upstream reports -1 for a signalled UVM process; 128+signal is what
the same host reports for container processes and is a valid uint32).
"""
from __future__ import annotations

import os
from gcs.record import field, record

import _signal  # not `signal`: its enums cost start-up time under TCG

from gcs import aio
from gcs.log import describe_command, log
from gcs.protocol import hresult as hr
from gcs.protocol.messages import INFINITE_TIMEOUT, ExecuteProcessRequest
from gcs.runtime.reaper import Reaper, exit_code
from gcs.runtime.spawn import SpawnSpec, spawn
from gcs.stdio.connect import dial_stdio
from gcs.stdio.pty import open_pty, set_window_size
from gcs.stdio.relay import TtyRelay

TYPE_CHECKING = False  # typing costs ~45 ms under TCG; annotations are never evaluated
if TYPE_CHECKING:
    from typing import Optional

MAX_SIGNAL = 64


@record
class UvmProcess:
    pid: int
    pidfd: int
    program: str
    status: aio.Future  # raw wait status from the reaper
    done: aio.Future = field(default_factory=aio.Future)  # exit code, once stdio has drained
    relay: Optional[TtyRelay] = None

    @property
    def exited(self) -> bool:
        return self.status.done()


class UvmProcessTable:
    def __init__(self, reaper: Reaper, transport) -> None:
        self.reaper = reaper
        self.transport = transport
        self.procs: dict[int, UvmProcess] = {}

    def __len__(self) -> int:
        return len(self.procs)

    # --- ExecuteProcess -----------------------------------------------------------------
    async def execute(self, req: ExecuteProcessRequest) -> int:
        params = req.params
        argv = params.command_args
        if not argv and params.command_line:
            try:
                import shlex  # only for a CommandLine: it imports `re`, ~0.13 s under TCG
                argv = shlex.split(params.command_line)
            except ValueError as err:
                raise hr.GcsError(hr.E_INVALIDARG, f"CommandLine: {err}") from None
        if not argv:
            raise hr.GcsError(hr.E_INVALIDARG, "no command to run: CommandArgs and CommandLine are empty")
        conns = await dial_stdio(self.transport, params, req.ports)
        master = slave = -1
        try:
            spec = SpawnSpec(argv=argv, env=params.environment, cwd=params.working_directory or None)
            if params.emulate_console:
                master, slave, spec.tty_path = open_pty()
            else:
                for sock in conns.all():
                    sock.setblocking(True)  # the child shares the file description
                spec.stdio = tuple(s.fileno() if s is not None else None
                                   for s in (conns.stdin, conns.stdout, conns.stderr))  # type: ignore[assignment]
            pid = spawn(spec)
        except BaseException:
            conns.close()
            if master >= 0:
                os.close(master)
            raise
        finally:
            if slave >= 0:
                os.close(slave)
        status = self.reaper.watch(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1  # already reaped is impossible here; a kernel without pidfds falls back to kill()
        proc = UvmProcess(pid=pid, pidfd=pidfd, program=argv[0], status=status)
        if params.emulate_console:
            proc.relay = TtyRelay(master, conns)
        else:
            conns.close()  # the child holds its own copies; EOF follows its closes
        self.procs[pid] = proc
        aio.spawn(self._finish(proc), f"exit-{pid}")
        log.info("started UVM process", pid=pid, tty=params.emulate_console,
                 **describe_command(argv, params.environment))
        return pid

    async def _finish(self, proc: UvmProcess) -> None:
        status = await proc.status
        if proc.relay is not None:
            await proc.relay.finish()
        if proc.pidfd >= 0:
            os.close(proc.pidfd)
            proc.pidfd = -1
        code = exit_code(status)
        log.info("UVM process exited", pid=proc.pid, exit_code=code)
        proc.done.set_result(code)

    # --- WaitForProcess -----------------------------------------------------------------
    def _lookup(self, pid: int) -> UvmProcess:
        proc = self.procs.get(pid)
        if proc is None:
            raise hr.not_found(f"process {pid} not found in the UVM")
        return proc

    async def wait(self, pid: int, timeout_ms: int) -> int:
        proc = self._lookup(pid)
        timeout = None if timeout_ms == INFINITE_TIMEOUT else timeout_ms / 1000.0
        try:
            code = await aio.wait_for(proc.done, timeout)
        except aio.TimeoutError_:
            raise hr.GcsError(hr.VMCOMPUTE_TIMEOUT, f"timed out waiting for process {pid}") from None
        # The first successful wait releases the entry (later waits: not found).
        if self.procs.get(pid) is proc:
            del self.procs[pid]
        return code

    # --- SignalProcess / ResizeConsole --------------------------------------------------
    def signal(self, pid: int, signum: int) -> None:
        proc = self._lookup(pid)
        if signum == 0:
            signum = _signal.SIGKILL
        if not 1 <= signum <= MAX_SIGNAL:
            raise hr.GcsError(hr.E_INVALIDARG, f"invalid signal {signum}")
        if proc.exited:
            raise hr.not_found(f"process {pid} has already exited")
        try:
            if proc.pidfd >= 0:
                _signal.pidfd_send_signal(proc.pidfd, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            raise hr.not_found(f"process {pid} has already exited") from None
        log.info("signalled UVM process", pid=pid, signal=signum)

    def resize(self, pid: int, height: int, width: int) -> None:
        proc = self._lookup(pid)
        if proc.relay is None:
            raise hr.GcsError(hr.E_FAIL, f"process {pid} is not a tty")
        if proc.relay.closed:
            return
        set_window_size(proc.relay.master, height, width)

    def kill_all(self) -> None:
        for proc in list(self.procs.values()):
            if not proc.exited:
                try:
                    self.signal(proc.pid, _signal.SIGKILL)
                except hr.GcsError:
                    pass
