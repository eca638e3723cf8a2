"""The bridge fuzzer (tests/fuzz_bridge.py) against real local-mode agents, on a CI budget.

No drop, exactly one reply per frame, every reply acceptable to the host, and afterwards the
agent still serves and tracks nothing it did not track before. A failure prints the seed:
replay it with PYGCS_FUZZ_SEED=<seed>; PYGCS_FUZZ_FRAMES=<n> sets the budget (a long run).
"""
import json
import time

import fuzz_bridge as fb
from gcs.protocol.ids import NULL_CONTAINER_ID as ZERO
from gcs.protocol.ids import REQUEST_IDS, RequestId

from conftest import requires_root

pytestmark = requires_root
SOCKET_FRAMES = 4000   # ~3 s on 2 cores
STDIO_FRAMES = 1500
TRACKED = ("uvm_processes", "reaper_watches", "tasks", "open_fds", "containers", "container_execs",
           "storage_mounts", "overlays")


def tracked(bridge):
    values = {}
    for line in bridge.call(RequestId.DUMP_STACKS)["GuestStacks"].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in TRACKED:
            values[key] = int(value)
    return values


def settled(bridge, expected, timeout=5.0):
    """The tracked state once it equals `expected` (exiting processes take a moment), or as it is."""
    deadline = time.monotonic() + timeout
    while True:
        state = tracked(bridge)
        if state == expected or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def fuzz_agent(uvm, frames):
    seed = fb.seed_from_env()
    warm = fb.Fuzzer(lambda: uvm.bridge, None, seed).send_corpus()
    assert warm.ok(), warm.summary()
    before = settled(uvm.bridge, None, timeout=0.5)
    report = fb.fuzz(lambda: uvm.bridge, frames, seed)
    print(report.summary())
    detail = "\n".join([report.summary(), *report.samples, *report.violations[:10]])
    assert report.ok() and report.frames == frames, detail
    assert report.replies == frames and not uvm.bridge.closed.is_set(), detail
    return report, before


def test_fuzz_over_unix_socket(uvm):
    report, before = fuzz_agent(uvm, fb.frames_budget(SOCKET_FRAMES))
    assert uvm.client.run(["echo", "ok"])[0] == b"ok\n", report.summary()
    assert settled(uvm.bridge, before) == before, report.summary()


def test_fuzz_over_stdio(uvm_stdio):
    report, before = fuzz_agent(uvm_stdio, max(1, fb.frames_budget(SOCKET_FRAMES) * STDIO_FRAMES // SOCKET_FRAMES))
    assert uvm_stdio.proc.poll() is None, report.summary()
    assert uvm_stdio.client.run(["echo", "ok"])[0] == b"ok\n", report.summary()
    assert settled(uvm_stdio.bridge, before) == before, report.summary()


def test_the_mutator_is_reproducible_and_covers_every_request_type():
    assert {ident for ident, _ in fb.corpus()} == set(REQUEST_IDS)
    a, b = fb.Mutator(42), fb.Mutator(42)
    for ident, doc in fb.corpus() * 20:
        assert a.mutate(ident, doc) == b.mutate(ident, doc)
    assert set(a.kinds) >= {"bytes", "swap", "deep_top", "deep_inner", "number", "nan", "dupkey", "utf8"}


def test_nothing_harmful_is_sent():
    shutdown = json.dumps({"ContainerId": ZERO}).encode()
    assert not fb.harmless(RequestId.SHUTDOWN_GRACEFUL, shutdown)
    assert not fb.harmless(RequestId.SHUTDOWN_FORCED, shutdown)
    storage = json.dumps({"ContainerId": ZERO, "Request": {"ResourceType": "MappedVirtualDisk", "Settings": {}}})
    assert not fb.harmless(RequestId.MODIFY_SETTINGS, storage.encode())
    for params in ({"CommandArgs": ["rm", "-rf", "/x"]}, {"CommandLine": "sleep 100"},
                   {"CommandArgs": ["true"], "CreateStdOutPipe": True}):  # (port 0x40000000: the bridge's listener)
        request = {"ContainerId": ZERO, "Settings": {"ProcessParameters": json.dumps(params),
                                                     "VsockStdioRelaySettings": {"StdOut": 0x40000000}}}
        assert not fb.harmless(RequestId.EXECUTE_PROCESS, json.dumps(request).encode()), params
    for ident, doc in fb.corpus():
        assert fb.harmless(ident, json.dumps(doc).encode()), hex(ident)
