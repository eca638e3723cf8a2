"""Exit statuses belong to the process: the reaper against real pid reuse.

Pid reuse is forced, not waited for: the script runs as pid 1 of its own pid namespace
(`unshare --pid --fork`), where setting ns_last_pid is namespaced and hands the next
process the pid of one that has just been reaped.
"""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, requires_root

pytestmark = requires_root

SCRIPT = r"""
import os, sys
from gcs import aio
from gcs.runtime.reaper import Reaper, exit_code

loop = aio.get_loop()
reaper = Reaper(loop)

def spawn(*argv):
    return os.posix_spawn(argv[0], list(argv), {})

async def main():
    orphan = spawn("/bin/sh", "-c", "exit 7")   # never tracked: its status is kept unclaimed
    while reaper.unclaimed == 0:
        await aio.sleep(0.01)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(orphan - 1))                # the next process gets the orphan's pid
    pid = spawn("/bin/sleep", "30")
    assert pid == orphan, (pid, orphan)
    child = reaper.spawned(pid)
    await aio.sleep(0.05)
    early = child.exited                         # resolved with the dead process's 7?
    child.signal(9)
    code = exit_code(await aio.wait_for(child.status, 5))
    # A child that exits before it is tracked keeps its own status.
    quick = spawn("/bin/sh", "-c", "exit 3")
    pidfd = os.pidfd_open(quick)
    while quick not in reaper._unclaimed:
        await aio.sleep(0.01)
    late = reaper.adopt(quick, pidfd)
    print(early, code, late.exited and exit_code(late.status.result()))

loop.run_until_complete(main())
"""


def test_a_reused_pid_never_gets_the_dead_processs_status(tmp_path):
    script = tmp_path / "reuse.py"
    script.write_text(SCRIPT)
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    early, code, late = out.stdout.split()
    assert early == "False"  # the live process was not resolved with the orphan's exit 7
    assert code == "137"     # it got its own status: killed by SIGKILL
    assert late == "3"       # exited before it was adopted: its unclaimed status is its own
