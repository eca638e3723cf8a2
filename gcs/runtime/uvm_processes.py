"""Processes run directly in the UVM (ExecuteProcess on the null container id).

Each is tracked until its first successful WaitForProcess (protocol.md 3.5); the record,
waits and signals are shared with container processes (process.py).
"""
from __future__ import annotations

import os

import _signal  # not `signal`: its enums cost start-up time under TCG

from gcs import aio
from gcs.log import describe_command, log
from gcs.protocol import hresult as hr
from gcs.protocol.messages import ExecuteProcessRequest
from gcs.runtime import process
from gcs.runtime.process import Process
from gcs.runtime.reaper import Reaper
from gcs.runtime.spawn import SpawnSpec, spawn
from gcs.stdio.connect import dial_stdio
from gcs.stdio.pty import open_pty, set_window_size
from gcs.stdio.relay import TtyRelay


class UvmProcessTable:
    def __init__(self, reaper: Reaper, transport) -> None:
        self.reaper = reaper
        self.transport = transport
        self.procs: dict[int, Process] = {}

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
        child = self.reaper.spawned(pid)  # same callback as the spawn: nothing reaped it yet
        proc = Process(child, program=argv[0])
        if params.emulate_console:
            proc.relay = TtyRelay(master, conns)
            proc.master = master
        else:
            conns.close()  # the child holds its own copies; EOF follows its closes
        self.procs[pid] = proc
        aio.spawn(self._finish(proc), f"exit-{pid}")
        log.info("started UVM process", pid=pid, tty=params.emulate_console,
                 **describe_command(argv, params.environment))
        return pid

    async def _finish(self, proc: Process) -> None:
        code = await process.finish(proc)
        log.info("UVM process exited", pid=proc.pid, exit_code=code)

    # --- WaitForProcess -----------------------------------------------------------------
    def _lookup(self, pid: int) -> Process:
        proc = self.procs.get(pid)
        if proc is None:
            raise hr.not_found(f"process {pid} not found in the UVM")
        return proc

    async def wait(self, pid: int, timeout_ms: int) -> int:
        proc = self._lookup(pid)
        code = await process.wait(proc, timeout_ms)
        # The first successful wait releases the entry (later waits: not found).
        if self.procs.get(pid) is proc:
            del self.procs[pid]
        return code

    # --- SignalProcess / ResizeConsole --------------------------------------------------
    def signal(self, pid: int, signum: int) -> None:
        proc = self._lookup(pid)
        signum = process.checked_signal(signum)
        process.send_signal(proc, signum)
        log.info("signalled UVM process", pid=pid, signal=signum)

    def resize(self, pid: int, height: int, width: int) -> None:
        proc = self._lookup(pid)
        if proc.relay is None or proc.master < 0:
            raise hr.GcsError(hr.E_FAIL, f"process {pid} is not a tty")
        if proc.relay.closed:  # type: ignore[attr-defined]
            return
        set_window_size(proc.master, height, width)

    def kill_all(self) -> None:
        for proc in list(self.procs.values()):
            proc.child.signal(_signal.SIGKILL)
