"""1,000 exec+wait cycles leave no zombie, no leaked fd and no growth in tracked state."""
import os

from gcs.host.bridge_client import counters
from gcs.protocol.ids import RequestId

from conftest import requires_root

pytestmark = requires_root
CYCLES = 1000


def state(uvm):
    values = counters(uvm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"])
    return {key: values[key] for key in ("uvm_processes", "reaper_watches", "tasks", "open_fds") if key in values}


def zombies_under(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def test_thousand_exec_wait_cycles(uvm):
    agent = uvm.agent_pid
    uvm.client.run(["true"])  # warm up lazily created state
    fds_before = len(os.listdir(f"/proc/{agent}/fd"))
    state_before = state(uvm)
    for i in range(CYCLES):
        if i % 10 == 0:
            out, _, code = uvm.client.run(["echo", str(i)])  # with stdio relays
            assert (out, code) == (f"{i}\n".encode(), 0)
        elif i % 10 == 1:
            proc = uvm.client.exec(["sh", "-c", "exit 1"], tty=True, stdout=True)
            assert proc.wait() == 1
            proc.close()
        else:
            assert uvm.client.exec(["/bin/true"]).wait() == 0
    assert zombies_under(agent) == []
    assert len(os.listdir(f"/proc/{agent}/fd")) == fds_before
    assert state(uvm) == state_before


def test_orphans_are_reaped(uvm):
    agent = uvm.agent_pid
    # The shell exits at once; its background child is re-parented to the agent.
    assert uvm.client.run(["sh", "-c", "sleep 0.2 & exit 0"])[2] == 0
    import time
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "orphans_reaped: 1" in uvm.bridge.call(RequestId.DUMP_STACKS)["GuestStacks"]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the orphan was not reaped")
    assert zombies_under(agent) == []
